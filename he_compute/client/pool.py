"""Local worker processes that live as long as an :class:`~he_compute.EncryptedModel` (or its ``with`` block).

``hec run --local-workers N`` starts workers for one run and stops them after;
an ``EncryptedModel`` that did the same paid, on every ``predict``, for new
processes, their imports and the circuit compilation (about 20 s for a random
forest).  A :class:`WorkerPool` starts them once and keeps them, so the
workers' caches (compiled circuit by server-part digest, deserialized keys by
key id) serve every later call: a warm ``predict`` costs evaluation only.

Workers that die are restarted before the next call; if every worker dies
during a call, :meth:`watch` cancels that call's jobs so that it fails at once
(naming the log) instead of waiting for a timeout.
"""

from __future__ import annotations

import os
import subprocess
import threading
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from ..commands import WorkerOptions
from ..errors import QueueError
from .run import local

WATCH_EVERY_S = 0.5
"""How often :meth:`WorkerPool.watch` checks that a worker is still alive during a call."""
MAX_RESTARTS = 3
"""Restarts per configured worker before the pool gives up: a worker that keeps dying has a reason (see its log)."""


class WorkerPool:
    """``n`` single-process local workers for one queue and blob store, started on first use."""

    def __init__(self, n: int, queue_url: str, blobs_url: str, log_dir: Path, *, device: str = "cpu"):
        self.n, self.queue_url, self.blobs_url, self.device = n, queue_url, blobs_url, device
        self.log_path = Path(log_dir) / f"workers-{os.getpid()}-{id(self):x}.log"
        self._procs: list[subprocess.Popen[bytes]] = []
        self._log: IO[bytes] | None = None
        self._restarts = 0
        self._lock = threading.Lock()
        # Stop the processes even if the owner forgets close(): they would otherwise outlive this interpreter.
        self._finalizer = weakref.finalize(self, _stop, self._procs)

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers started so far (alive or not)."""
        return [p.pid for p in self._procs]

    def alive(self) -> int:
        """How many workers are running."""
        return sum(p.poll() is None for p in self._procs)

    def ensure(self) -> None:
        """Start the workers on first use, and replace any that died since."""
        with self._lock:
            if self._log is None:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the workers' lifetime
            dead = [p for p in self._procs if p.poll() is not None]
            missing = self.n - (len(self._procs) - len(dead))
            if missing <= 0:
                return
            if self._procs:
                self._restarts += len(dead)
                if self._restarts > MAX_RESTARTS * self.n:
                    raise QueueError(f"the local workers keep exiting ({self._restarts} restarts): see {self.log_path}")
            for p in dead:
                self._procs.remove(p)
            self._procs.extend(local.start(self.queue_url, self.blobs_url, missing,
                                           WorkerOptions(device=self.device), log=self._log))

    @contextmanager
    def watch(self, cancel: Callable[[], Any]) -> Iterator[None]:
        """For the block: if every worker dies, call ``cancel`` (the call's jobs) and raise :class:`QueueError`."""
        stop = threading.Event()
        died = threading.Event()

        def check() -> None:
            while not stop.wait(WATCH_EVERY_S):
                if self._procs and self.alive() == 0:
                    died.set()
                    cancel()
                    return

        watcher = threading.Thread(target=check, name="hec-pool-watch", daemon=True)
        watcher.start()
        try:
            yield
        except Exception as exc:
            if died.is_set():
                raise QueueError(f"all {self.n} local worker(s) exited during the call: see {self.log_path}") from exc
            raise
        finally:
            stop.set()
            watcher.join()

    def close(self) -> None:
        """Stop the workers (they finish or release the sample in hand) and close the log."""
        with self._lock:
            _stop(self._procs)
            if self._log is not None:
                self._log.close()
                self._log = None


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    if procs:
        local.stop(procs)
        procs.clear()
