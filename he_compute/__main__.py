"""``python -m he_compute ...`` is the ``hec`` command (used to start worker processes by command line)."""

import sys

from .cli import main

sys.exit(main())
