"""Command-line entry point; the code and its --help live in ``benchmarks.report``."""

import sys

from benchmarks.report import main

if __name__ == "__main__":
    sys.exit(main())
