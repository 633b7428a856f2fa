"""Command-line entry point; the code and its --help live in ``benchmarks.models_bench``."""

import sys

from benchmarks.models_bench import main

if __name__ == "__main__":
    sys.exit(main())
