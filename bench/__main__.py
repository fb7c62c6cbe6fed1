"""``python -m bench``: the same as ``pryxbus bench``."""

import sys

from bench.cli import main

sys.exit(main())
