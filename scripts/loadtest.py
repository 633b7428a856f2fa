"""Command-line entry point; the code and its --help live in ``benchmarks.loadtest``."""

import sys

from benchmarks.loadtest import main

if __name__ == "__main__":
    sys.exit(main())
