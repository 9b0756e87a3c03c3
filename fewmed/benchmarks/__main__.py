"""``python -m fewmed.benchmarks NAME [options]``."""

import sys

from fewmed.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
