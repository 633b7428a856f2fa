"""Command-line entry point; the code and its --help live in ``containers.compose_check``."""

import sys

from containers.compose_check import main

if __name__ == "__main__":
    sys.exit(main())
