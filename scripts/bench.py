"""Command-line entry point; the code and its --help live in ``benchmarks.bench``."""

import sys

from benchmarks.bench import main

if __name__ == "__main__":
    sys.exit(main())
