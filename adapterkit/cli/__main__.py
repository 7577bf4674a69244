"""``python -m adapterkit.cli``."""

import sys

from .main import main

sys.exit(main())
