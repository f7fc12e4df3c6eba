"""``python -m he_compute ...`` is the ``hec`` command (used to start worker processes by command line)."""

from .cli import entry

entry()
