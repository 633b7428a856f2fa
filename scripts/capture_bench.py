"""``make capture-bench``: the latency capturing every answer adds, side by side (benchmarks.capture_bench)."""

from __future__ import annotations

import sys

from benchmarks.capture_bench import main

if __name__ == "__main__":
    sys.exit(main())
