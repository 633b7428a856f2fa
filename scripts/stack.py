"""Command-line entry point; the code and its --help live in ``operations.stack``."""

import sys

from operations.stack import main

if __name__ == "__main__":
    sys.exit(main())
