"""``python -m edgefleet.agent`` is ``edgefleet-agent``."""

import sys

from ._cli import main

sys.exit(main())
