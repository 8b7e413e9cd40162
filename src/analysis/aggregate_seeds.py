"""The guide's `python -m src.analysis.aggregate_seeds ...`: same as `headplast aggregate ...`."""

import sys

from headplast.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["aggregate", *sys.argv[1:]]))
