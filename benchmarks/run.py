"""``python benchmarks/run.py``: the same as ``python -m benchmarks``, from any directory."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from suite import main

if __name__ == "__main__":
    sys.exit(main())
