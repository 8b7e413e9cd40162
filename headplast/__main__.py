import sys

from headplast.cli.main import main

sys.exit(main())
