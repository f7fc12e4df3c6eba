"""Queue-facing commands (``hec run / worker / status / jobs / cancel``), registered on the main group.

Kept apart from :mod:`he_compute.cli` so the client-only commands stay small.
"""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add the queue commands to ``group`` (filled in by the queue issue)."""
