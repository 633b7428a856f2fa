"""``make ct-demo``: capture, label, fine-tune, gate, canary and promote on the real stack (benchmarks.ct_demo)."""

from __future__ import annotations

import sys

from benchmarks.ct_demo import main

if __name__ == "__main__":
    sys.exit(main())
