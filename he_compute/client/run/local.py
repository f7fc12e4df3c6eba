"""Worker processes started by a run on this machine (``hec run --local-workers N``).

The client never imports the worker's code: it starts ``hec worker`` processes
by command line (``python -m he_compute worker ...``), each with its own state
directory (a fresh identity, deleted after the run) whose public key it reads
back: the run knows these workers and who operates them (``local-0``,
``local-1``...), so they count as distinct replicas.  Their output goes to one
log file per run.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import IO, Iterator

from ...commands import WorkerOptions
from ...errors import QueueError
from .allowlist import AllowList

IDENTITY_WAIT_S = 60.0
"""How long a local worker may take to create its identity before the run gives up on it."""

STOP_GRACE_S = 15.0
"""How long local workers get to finish the sample in hand after SIGTERM before they are killed."""


def start(queue_url: str, blobs_url: str, n: int, options: WorkerOptions = WorkerOptions(device="cpu"), *,
          pin: bool = False, env: dict[str, str] | None = None, log: IO[bytes] | None = None,
          states: list[Path] | None = None) -> list[subprocess.Popen[bytes]]:
    """Start ``n`` single-process workers with these options, each with its own identity (in ``states[i]``
    when given, else a throwaway one); with ``pin``, worker ``i`` is held to cores ``i*threads ...``."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    per = options.threads or max(1, len(cores) // max(1, n))
    full_env = {**os.environ, **(env or {}), "HEC_WORKER_STATE": ""}
    procs = []
    for i in range(n):
        cpus = tuple(cores[(i * per + k) % len(cores)] for k in range(per)) if pin else None
        one = replace(options, concurrency=1, threads=per, cpus=cpus, state=str(states[i]) if states else None)
        procs.append(subprocess.Popen(one.argv(queue_url, blobs_url), env=full_env, stdin=subprocess.DEVNULL,
                                      stderr=log or subprocess.DEVNULL))
    return procs


def identities(states: list[Path], procs: list[subprocess.Popen[bytes]]) -> AllowList:
    """The public keys local workers created in their state directories, as operators ``local-0``, ``local-1``..."""
    known = AllowList()
    deadline = time.monotonic() + IDENTITY_WAIT_S
    for i, state in enumerate(states):
        pub = state / "worker.pub"
        while not pub.is_file():
            if procs[i].poll() is not None or time.monotonic() > deadline:
                raise QueueError(f"local worker {i} did not start (see its log): no identity in {state}")
            time.sleep(0.01)  # a worker writes its key about 0.2 s after it starts: the run waits on it
        known.add(pub.read_text().strip(), operator=f"local-{i}")
    return known


def stop(procs: list[subprocess.Popen[bytes]], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the workers, wait for them to finish or release their jobs, then kill stragglers."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class LocalWorkers:
    """The worker processes of one run: ``procs``, and ``known()``, their keys and operators once written."""

    def __init__(self, procs: list[subprocess.Popen[bytes]], states: list[Path]):
        self.procs, self.states = procs, states
        self._known: AllowList | None = None

    def alive(self) -> bool:
        """Whether any of them still runs (always true when the run started none)."""
        return not self.procs or any(p.poll() is None for p in self.procs)

    def release(self) -> None:
        """Ask them to stop now (SIGTERM), without waiting: the run has all it needs from them."""
        for p in self.procs:
            if p.poll() is None:
                p.terminate()

    def known(self) -> AllowList:
        """Their public keys as operators ``local-0``... (waits until each has written its identity)."""
        if self._known is None:
            self._known = identities(self.states, self.procs) if self.procs else AllowList()
        return self._known


@contextmanager
def local_workers(n: int, queue_url: str, blobs_url: str, log_dir: Path, *, device: str = "cpu",
                  env: dict[str, str] | None = None) -> Iterator[LocalWorkers]:
    """``with local_workers(2, ...) as local:`` runs two workers for the block (none when ``n == 0``); they
    start at once, so their start-up overlaps whatever the run does next."""
    if n <= 0:
        yield LocalWorkers([], [])
        return
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"workers-{os.getpid()}.log", "ab") as log, \
            tempfile.TemporaryDirectory(prefix="hec-local-workers-") as tmp:
        states = [Path(tmp) / f"w{i}" for i in range(n)]
        procs = start(queue_url, blobs_url, n, WorkerOptions(device=device), env=env, log=log, states=states)
        try:
            yield LocalWorkers(procs, states)
        finally:
            stop(procs)
