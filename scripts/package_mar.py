"""Command-line entry point; the code and its --help live in ``operations.packaging``."""

import sys

from operations.packaging import main

if __name__ == "__main__":
    sys.exit(main())
