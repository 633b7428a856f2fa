"""Command-line entry point; the code and its --help live in ``benchmarks.drift_bench``."""

import sys

from benchmarks.drift_bench import main

if __name__ == "__main__":
    sys.exit(main())
