"""The command lines of he_compute's own processes, in one place (both the client and the worker host start workers)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker runs: the options of ``hec worker``, carried from its command line (or a run's local
    workers) to the worker host and on to the command lines of its child processes.

    Example::

        WorkerOptions(device="cpu", threads=1, burst=True).argv("sqlite:///q.db", "file:///blobs")
    """

    device: str = "auto"
    concurrency: int | None = None
    threads: int | None = None
    cpus: tuple[int, ...] | None = None
    burst: bool = False
    lease_s: float | None = None
    state: str | None = None
    coordinator: str | None = None
    token_file: str | None = None

    def argv(self, queue_url: str | None, blobs_url: str | None) -> list[str]:
        """``python -m he_compute worker ...`` with these options; with ``coordinator`` the worker speaks
        to it instead of the queue and blob store.  The enrolment token is never passed on: a child of
        an admitted worker shares its parent's identity, which the coordinator already knows."""
        where = (["--coordinator", self.coordinator] if self.coordinator
                 else ["--queue", queue_url or "", "--blobs", blobs_url or ""])
        cmd = [sys.executable, "-m", "he_compute", "worker", *where, "--device", self.device,
               "--concurrency", str(self.concurrency or 1)]
        if self.threads:
            cmd += ["--threads", str(self.threads)]
        if self.cpus:
            cmd += ["--cpus", ",".join(map(str, self.cpus))]
        if self.burst:
            cmd.append("--burst")
        if self.lease_s:
            cmd += ["--lease", str(self.lease_s)]
        if self.state:
            cmd += ["--state", self.state]
        return cmd


def keep_exit_status(code: Any) -> None:
    """Leave at once with ``code`` (a ``SystemExit`` code) when it is a failure and Concrete is loaded.

    Concrete registers an exit handler that, once an FHE circuit has run in the process, ends it with status
    0: a command that failed after evaluating in-process (a canary check, ``hec eval``) would report success
    to the shell and to scripts.  A failing status therefore leaves here, before exit handlers run (files are
    closed and temporary directories removed by then: their ``with`` blocks have unwound)."""
    status = code if isinstance(code, int) else (0 if code is None else 1)
    if status and "concrete.compiler" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
