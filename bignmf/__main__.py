"""``python -m bignmf``."""

import sys

from bignmf.cli import main

sys.exit(main())
