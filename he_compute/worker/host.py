"""Running workers on a machine: devices, cores, child processes, signals (what ``hec worker`` does).

:func:`serve` runs one worker in this process, or ``concurrency`` single-job
worker processes that it supervises: a child that dies is reported (with the
signal that killed it) and restarted with back-off; children die with their
parent (Linux parent-death signal), so killing ``hec worker`` leaves no worker
behind; the first SIGTERM/SIGINT stops the children gracefully, the second
stops them at once.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from typing import Callable

from .. import settings
from ..commands import WorkerOptions
from ..errors import ConfigError, DeviceError
from ..transport import blobs as blob_stores
from ..transport import queue as job_queue
from ..transport.blobs import BlobStore
from ..transport.locations import Locations
from ..transport.queue import Consumer
from .identity import STATE_ENV, WorkerIdentity
from .loop import StopNow, Worker
from .sandbox import Limits, Sandbox

DEVICES = ("auto", "cpu", "cuda")
RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
"""Waits before restarting a child that keeps dying (reset after it has run for a minute)."""
STOP_GRACE_S = 60.0
EXIT_REFUSED = 77
"""Exit status of a worker the coordinator refuses (sysexits' EX_NOPERM): its supervisor does not restart it."""
"""How long children get after the first stop signal to finish the sample in hand."""
_PR_SET_PDEATHSIG = 1


def cuda_available() -> bool:
    """Whether this Concrete build has CUDA support and a GPU is visible."""
    try:
        from concrete.compiler import check_gpu_available, check_gpu_enabled

        return bool(check_gpu_enabled() and check_gpu_available())
    except Exception:  # noqa: BLE001 - any failure to probe means no usable GPU
        return False


def detect_devices(requested: str = "auto") -> list[str]:
    """The job devices this worker serves: ``cuda`` only with a CUDA build and a GPU; ``auto`` takes what is there.

    Example::

        detect_devices("auto")   # ["cpu"] on a machine without a GPU
    """
    if requested not in DEVICES:
        raise DeviceError(f"unknown device {requested!r}: use auto, cpu or cuda")
    if requested == "cpu":
        return ["cpu"]
    has_cuda = cuda_available()
    if requested == "cuda" and not has_cuda:
        raise DeviceError("--device cuda: no usable GPU here (this Concrete build lacks CUDA support or no GPU is "
                          "visible); install Concrete's GPU wheel on a CUDA machine, or use --device cpu")
    return ["cuda"] if requested == "cuda" else (["cuda", "cpu"] if has_cuda else ["cpu"])


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def split_cores(cores: int, concurrency: int | None = None, threads: int | None = None) -> tuple[int, int]:
    """Choose ``(jobs at once, threads per job)`` for ``cores``.

    The default is one single-threaded job per core: Concrete's OpenMP speed-up
    inside one circuit is sub-linear (1.77x on 2 threads here), while separate
    jobs scale almost linearly (``bench/bench_queue.py`` measures both).

    Example::

        split_cores(8)                 # (8, 1)
        split_cores(8, concurrency=2)  # (2, 4)
    """
    if concurrency and threads:
        return concurrency, threads
    if concurrency:
        return concurrency, max(1, cores // concurrency)
    if threads:
        return max(1, cores // threads), threads
    return cores, 1


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (a ``preexec_fn`` for child workers)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux: children may outlive a killed parent
        pass


def child_command(where: Locations, options: WorkerOptions, threads: int, cpus: list[int] | None) -> list[str]:
    """The command line of one single-job worker process: its parent's options, one job at a time."""
    child = replace(options, concurrency=1, threads=threads, cpus=tuple(cpus) if cpus else None, state=None,
                    token_file=None)
    return child.argv(where.queue, where.blobs)


CHILD_ENV = "HEC_WORKER_CHILD"
"""Set to 1 in the single-job processes of ``hec worker --concurrency N``."""


class _Children:
    """``n`` single-job worker processes, restarted when they die, stopped on request."""

    def __init__(self, commands: list[list[str]], burst: bool, say: Callable[[str], None]):
        self.commands, self.burst, self.say = commands, burst, say
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * len(commands)
        self.started = [0.0] * len(commands)
        self.failures = [0] * len(commands)
        self.due = [0.0] * len(commands)
        self.done = [False] * len(commands)
        self.signals = 0
        self.worst = 0
        self.refused = False  # a child was refused by the coordinator: the whole worker ends with EXIT_REFUSED

    def _start(self, i: int) -> None:
        self.procs[i] = subprocess.Popen(self.commands[i], stdin=subprocess.DEVNULL, preexec_fn=die_with_parent,
                                         env={**os.environ, CHILD_ENV: "1"})  # the parent said who it is
        self.started[i] = time.monotonic()

    def on_signal(self, signum: int, _frame: object) -> None:
        """First signal: stop gracefully; second: at once.  Only flags and forwards: never waits here."""
        self.signals += 1
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM if self.signals == 1 else signal.SIGKILL)

    def supervise(self) -> int:
        """Run until stopped (or, in burst mode, until every child has finished); return the exit status."""
        for i in range(len(self.commands)):
            self._start(i)
        deadline = None
        while True:
            alive = False
            for i, p in enumerate(self.procs):
                if p is None:
                    if self.done[i] or self.signals:
                        continue
                    if time.monotonic() >= self.due[i]:
                        self._start(i)
                    alive = True
                    continue
                code = p.poll()
                if code is None:
                    alive = True
                    continue
                self._exited(i, code)
            if not alive:
                return EXIT_REFUSED if self.refused else self.worst
            if self.signals and deadline is None:
                deadline = time.monotonic() + STOP_GRACE_S
            if deadline is not None and time.monotonic() > deadline:
                self.on_signal(signal.SIGKILL, None)
            time.sleep(0.2)

    def _exited(self, i: int, code: int) -> None:
        self.procs[i] = None
        if code < 0:
            self.say(f"hec worker: worker process {i} was killed by {signal.Signals(-code).name}")
            self.worst = max(self.worst, 128 - code)
        elif code:
            self.say(f"hec worker: worker process {i} exited with status {code}")
            self.worst = max(self.worst, code)
        if code == EXIT_REFUSED:  # the coordinator refused this machine's key: every child would be refused
            self.say(f"hec worker: the coordinator refused this worker's key; stopping (status {EXIT_REFUSED})")
            self.done, self.refused = [True] * len(self.done), True
            if not self.signals:
                self.on_signal(signal.SIGTERM, None)
            return
        if self.signals or (self.burst and code == 0):
            self.done[i] = True
            return
        ran_s = time.monotonic() - self.started[i]
        self.failures[i] = 0 if ran_s > 60 else self.failures[i] + 1
        wait = RESTART_BACKOFF_S[min(self.failures[i], len(RESTART_BACKOFF_S) - 1)]
        self.due[i] = time.monotonic() + wait
        self.say(f"hec worker: restarting worker process {i} in {wait:.0f}s")


def serve(queue_url: str | None = None, blobs_url: str | None = None, options: WorkerOptions = WorkerOptions(),
          log: Callable[[str], None] | None = None) -> int:
    """Run workers until stopped: one in this process, or ``options.concurrency`` supervised child processes.

    ``options.state`` (or ``$HEC_WORKER_STATE``) keeps the worker's Ed25519 identity
    (created on first start; child processes share it: one machine, one
    identity); without either, the identity lives only as long as the process.
    Threads per job go to ``OMP_NUM_THREADS`` (set before Concrete loads);
    ``options.cpus`` pins this process with ``sched_setaffinity``.  Returns an exit status.

    Example::

        serve("redis://10.0.0.5:6379/0", options=WorkerOptions(concurrency=4, device="cpu"))
    """
    where = Locations.resolve(queue_url, blobs_url)
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    # Devices, identity and admission are said once, by the parent: its children would repeat them each.
    banner = (lambda msg: None) if settings.get(CHILD_ENV) == "1" else say
    devices = detect_devices(options.device)
    cpus = list(options.cpus) if options.cpus else None
    jobs_at_once, per_job = split_cores(len(cpus) if cpus else usable_cores(), options.concurrency, options.threads)
    banner(f"hec worker: devices {','.join(devices)} (CUDA {'found' if 'cuda' in devices else 'not found'}); "
        f"{jobs_at_once} job(s) at once x {per_job} thread(s) each")
    state_dir = options.state or settings.get(STATE_ENV) or None
    identity = WorkerIdentity.load_or_create(state_dir) if state_dir else None
    if identity:
        os.environ[STATE_ENV] = state_dir or ""  # children load the same identity
        banner(f"hec worker: identity {identity.short_id} ({identity.public_line()})")
    if options.coordinator:
        from ..transport.remote import open_worker

        if identity is None:
            raise ConfigError("a worker of a coordinator keeps its key: pass --state DIR (or set HEC_WORKER_STATE)")
        consumer, lease_blobs = open_worker(options.coordinator, identity, token_file=options.token_file)  # enrols once
        banner(f"hec worker: admitted by {consumer.url} under operator {consumer.operator}")
        if jobs_at_once == 1:
            return _run_one(consumer, lease_blobs, devices, log, identity, options.burst, cpus, per_job)
        consumer.close()
    if jobs_at_once > 1:
        cores = sorted(cpus) if cpus else None
        commands = [child_command(where, options, per_job,
                                  [cores[(i * per_job + k) % len(cores)] for k in range(per_job)] if cores else None)
                    for i in range(jobs_at_once)]
        children = _Children(commands, options.burst, say)
        signal.signal(signal.SIGTERM, children.on_signal)
        signal.signal(signal.SIGINT, children.on_signal)
        return children.supervise()
    return _run_one(job_queue.connect(where.queue, lease_s=options.lease_s), blob_stores.connect(where.blobs), devices,
                    log, identity, options.burst, cpus, per_job)


def _run_one(q: Consumer, store: BlobStore, devices: list[str], log: Callable[[str], None] | None,
             identity: WorkerIdentity | None, burst: bool, cpus: list[int] | None, per_job: int) -> int:
    """Run one worker in this process over ``q`` and ``store`` (closed after)."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    os.environ["OMP_NUM_THREADS"] = str(per_job)  # read when Concrete's runtime loads, i.e. at the first job
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    sandbox = Sandbox(Limits(threads=per_job), prestart=True)
    with q, store:
        worker = Worker(q, store, devices=devices, log=log, identity=identity, executor=sandbox)
        worker.install_signals()
        try:
            worker.run(burst=burst)
        except StopNow:
            say("hec worker: stopped at once (second signal); the job in hand was released")
        finally:
            sandbox.close()
    return 0

