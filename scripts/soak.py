"""Command-line entry point; the code and its --help live in ``benchmarks.soak``."""

import sys

from benchmarks.soak import main

if __name__ == "__main__":
    sys.exit(main())
