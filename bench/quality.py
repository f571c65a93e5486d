"""Quality benchmark (paper Table 1 / Table 3): thin wrapper over ``training.evaluate``.

    python bench/quality.py --weights weights/stya2k-v0.6-cpu.pt --size 256 --out-md docs/quality_table.md
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
