"""``python -m auralsam2_core.cli``."""

import sys

from . import main

sys.exit(main())
