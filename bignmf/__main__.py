"""``python -m bignmf``."""

import sys

from .cli import main

sys.exit(main())
