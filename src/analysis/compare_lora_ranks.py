"""The guide's `python -m src.analysis.compare_lora_ranks ...`: same as `headplast ranks ...`."""

import sys

from headplast.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["ranks", *sys.argv[1:]]))
