"""Running encrypted work on untrusted workers, and checking what comes back.

:func:`run` is the one entry point (:mod:`.runner`); :class:`Policy` says how
results are verified: signed receipts always, plus :mod:`.redundancy`
(replicas on distinct workers), :mod:`.canaries` (known-answer chunks) and an
:class:`~.allowlist.AllowList` of worker keys; :mod:`.supervisor` is the loop
that applies it.  :mod:`.local` starts worker processes for a run by command
line (the client never imports worker code).
"""

from __future__ import annotations

from .allowlist import AllowList
from .canaries import Canary, KnownAnswers, canary_count, shuffle_in
from .connection import Connection
from .redundancy import Tally, result_digest, tally
from .runner import Policy, RunOptions, RunReport, run

__all__ = [
    "AllowList",
    "Canary",
    "Connection",
    "KnownAnswers",
    "Policy",
    "RunOptions",
    "RunReport",
    "Tally",
    "canary_count",
    "result_digest",
    "run",
    "shuffle_in",
    "tally",
]
