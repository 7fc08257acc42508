"""``python -m pbrl.human``: the same as ``pbrl-label``."""

import sys

from pbrl.human.cli import main

sys.exit(main())
