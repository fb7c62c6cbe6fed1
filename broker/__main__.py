"""``python -m broker`` is the ``pryxbus`` command."""

import sys

from broker.cli import main

sys.exit(main())
