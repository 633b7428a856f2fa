"""``make cache-bench``: the answer cache's hit rate and latency on repeats (benchmarks.answer_cache_bench)."""

from __future__ import annotations

import sys

from benchmarks.answer_cache_bench import main

if __name__ == "__main__":
    sys.exit(main())
