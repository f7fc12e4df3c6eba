"""The untrusted worker's loop: claim a job, evaluate it on ciphertexts, store the encrypted result.

A worker holds server parts (model weights are visible to it), evaluation keys
and ciphertexts, never a secret key, and it never learns whether a client's
decryption succeeded, since nothing flows back.  The loop (:meth:`Worker.run`)
reads top to bottom: stop flag, claim (the queue reaps expired leases),
execute with a heartbeat thread extending the lease, report.  Evaluation
itself happens in an :class:`~.executor.Executor`: by default the :class:`~.sandbox.Sandbox`, a locked-down
child process per model that holds no credential.

Whether a failure is worth retrying is decided by its type: a job that is
malformed, unsafe or made for other keys fails for good; a transport or
evaluation failure (or anything unexpected) counts an attempt and retries.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .. import settings
from ..errors import (
    AuthError,
    FormatError,
    QueueError,
    InputError,
    KeyMismatchError,
    SecurityError,
    TransportError,
    UnsafeArtifactError,
    UnsupportedModelError,
)
from ..formats.receipt import sign_receipt
from ..formats.task import Result, Task
from ..formats.text import printable
from ..transport.blobs import BlobStore
from ..transport.queue import Consumer, Lease, routed_device
from .executor import Executor
from .identity import WorkerIdentity

# HEC_JOB_TIMEOUT_S (wall-clock seconds one job may take, load and every chunk, before its evaluation is
# killed) and HEC_BURST_PATIENCE_S (how long a --burst worker keeps trying an unreachable queue) are
# settings (he_compute.settings), read when a worker starts.
PERMANENT = (FormatError, UnsafeArtifactError, KeyMismatchError, InputError, UnsupportedModelError, SecurityError)
"""Failures no other attempt can fix: the job goes straight to the dead letter."""


@dataclass
class _Heartbeat:
    """Extends a lease from a thread while the main thread evaluates (Concrete releases the GIL)."""

    queue: Consumer
    lease: Lease
    interval: float
    progress: dict[str, Any] = field(default_factory=dict)
    lost: threading.Event = field(default_factory=threading.Event)
    _done: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> _Heartbeat:
        self._thread = threading.Thread(target=self._loop, name="hec-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        self._thread.join()

    def beat(self) -> None:
        """Heartbeat now (also called between chunks to publish progress)."""
        try:
            if not self.queue.heartbeat(self.lease, dict(self.progress)):
                self.lost.set()
        except TransportError:
            pass  # the queue is unreachable: keep trying; if the lease runs out, another worker retries the job
        except AuthError:
            self.lost.set()  # refused (revoked): drop the job; the next claim is refused too and ends the worker

    def _loop(self) -> None:
        while not self._done.wait(self.interval):
            self.beat()


class _Abandoned(Exception):
    """The job was cancelled or handed to another worker: drop it without reporting."""


class _Released(Exception):
    """The worker is stopping with chunks left: give the job back."""


class StopNow(BaseException):
    """A second stop signal: abandon the job in hand at once (its lease is released)."""


class Worker:
    """Claims and runs jobs from ``queue``, reading and writing payloads in ``blobs``.

    Example::

        with queue.connect(url) as q, blobs.connect(blobs_url) as store:
            Worker(q, store).run(burst=True)
    """

    def __init__(self, queue: Consumer, blobs: BlobStore, *, devices: Iterable[str] = ("cpu",),
                 name: str | None = None, log: Callable[[str], None] | None = None,
                 identity: WorkerIdentity | None = None, executor: Executor | None = None,
                 job_timeout_s: float | None = None):
        self.queue, self.blobs = queue, blobs
        self.devices = list(devices)
        # Signs a receipt for every completed job; also routes jobs tagged for this worker (tie-breakers, re-runs).
        self.identity = identity or WorkerIdentity.generate()
        self.routes = [routed_device(d, self.identity.worker_id) for d in self.devices]
        # Who answers for this worker: the queue never gives one operator two replicas of a job.  On a queue
        # a worker answers for itself; a coordinator ignores this and uses the operator it admitted the key under.
        self.operator = self.identity.worker_id
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        if executor is None:
            from .sandbox import Sandbox

            executor = Sandbox(log=None)
        self.executor: Executor = executor
        self.job_timeout_s = job_timeout_s or float(settings.get("HEC_JOB_TIMEOUT_S"))
        self.stopping = threading.Event()
        self._signals = 0
        self.stats = {"jobs": 0, "failed": 0, "server_loads": 0, "server_hits": 0, "keys_loads": 0, "keys_hits": 0}
        # Log lines quote errors raised while evaluating a tenant's bytes: made printable before they are written.
        self._log = log or (lambda msg: print(f"[{printable(self.name)}] {printable(msg)}", file=sys.stderr, flush=True))

    def stop(self, *_: Any) -> None:
        """Ask the loop to stop: the chunk in hand finishes, a job with chunks left is released."""
        self.stopping.set()

    def install_signals(self) -> None:
        """SIGTERM or SIGINT stops the worker after the sample in hand; a second one stops it at once."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, *_: Any) -> None:
        self._signals += 1
        self.stop()
        if self._signals > 1:
            raise StopNow

    def run(self, *, burst: bool = False, poll_s: float = 1.0) -> int:
        """Process jobs until stopped (or, with ``burst``, until none is left); return how many ran.

        A ``burst`` worker that cannot reach its queue for ``HEC_BURST_PATIENCE_S`` gives up with
        :class:`~he_compute.errors.QueueError`; a long-running worker keeps trying.
        """
        self._log(f"serving devices {','.join(self.devices)} from {self.queue.url} (blobs {self.blobs.url})")
        try:
            return self._loop(burst, poll_s)
        finally:
            self.executor.close()  # the loop's end is the worker's end: no evaluation process outlives it

    def _loop(self, burst: bool, poll_s: float) -> int:
        ran, patience_s = 0, float(settings.get("HEC_BURST_PATIENCE_S"))
        unreachable_since: float | None = None
        while not self.stopping.is_set():
            try:
                # Short waits, so that a stop request is noticed within a quarter of a second.
                lease = self.queue.claim(self.name, devices=self.devices + self.routes,
                                         block_s=0 if burst else min(poll_s, 0.25), operator=self.operator)
                unreachable_since = None
            except AuthError:
                raise  # refused credentials stay refused: retrying would only hide a revoked key
            except TransportError as exc:
                unreachable_since = unreachable_since or time.monotonic()
                if burst and time.monotonic() - unreachable_since > patience_s:
                    raise QueueError(f"the queue {self.queue.url} has been unreachable for "
                                     f"{patience_s:.0f}s ({exc}): check the URL and that it is running") from exc
                self._log(f"queue unavailable ({exc}); retrying")
                self.stopping.wait(min(5.0, poll_s * 2))
                continue
            except Exception as exc:  # noqa: BLE001 - nothing a stranger writes into the queue may stop the loop
                self._log(f"claim failed ({type(exc).__name__}: {exc}); retrying")
                self.stopping.wait(min(5.0, poll_s * 2))
                continue
            if lease is None:
                if burst:
                    break
                continue
            self.run_one(lease)
            ran += 1
        self._log(f"stopped after {ran} job(s)")
        return ran

    def run_one(self, lease: Lease) -> None:
        """Execute one claimed job and report its outcome; never raises for a bad job."""
        job = lease.job
        start = time.perf_counter()
        try:
            with _Heartbeat(self.queue, lease, max(0.2, self.queue.lease_s / 3)) as hb:
                result = self._execute(lease, hb)
        except StopNow:
            self.executor.abort()
            self._report(lambda: self.queue.release(lease), patience_s=5.0)
            self._log(f"job {job.id} released at once (second stop signal)")
            raise
        except _Abandoned:
            self._log(f"job {job.id} was cancelled or reassigned; dropped it")
            return
        except _Released:
            self._report(lambda: self.queue.release(lease))
            self._log(f"job {job.id} released (stopping)")
            return
        except Exception as exc:  # noqa: BLE001 - a failing job must never take the worker down
            message = f"{type(exc).__name__}: {exc}"
            retry = not isinstance(exc, PERMANENT)
            state = self._report(lambda: self.queue.fail(lease, message, retry=retry))
            self.stats["failed"] += 1
            self._log(f"job {job.id} failed ({message}) -> {state.value if state else 'unreported'}")
            return
        result.stats["seconds"] = round(time.perf_counter() - start, 4)
        accepted = self._report(lambda: self.queue.complete(lease, result.to_json()))
        self.stats["jobs"] += 1
        self._log(f"job {job.id} done in {time.perf_counter() - start:.2f}s"
                  + ("" if accepted else " (the lease was no longer ours: result dropped)"))

    def _report(self, call: Callable[[], Any], patience_s: float = 60.0) -> Any:
        """Report to the queue, retrying while it is unreachable (a Redis restart, say)."""
        deadline = time.monotonic() + patience_s
        while True:
            try:
                return call()
            except TransportError as exc:
                if time.monotonic() > deadline:
                    self._log(f"could not report to the queue ({exc}); the lease will expire and the job retry")
                    return None
                time.sleep(0.5)

    def _execute(self, lease: Lease, hb: _Heartbeat) -> Result:
        task = Task.from_json(lease.job.spec)
        deadline = time.monotonic() + self.job_timeout_s
        loaded = self.executor.load(task, self.blobs.get, deadline)
        self.stats["server_hits" if loaded.server_hit else "server_loads"] += 1
        self.stats["keys_hits" if loaded.keys_hit else "keys_loads"] += 1
        total, done, outputs = sum(task.counts), 0, []
        started_ms, t_eval = int(time.time() * 1000), time.perf_counter()
        for i, (digest, count) in enumerate(zip(task.inputs, task.counts)):
            if hb.lost.is_set():
                raise _Abandoned
            if self.stopping.is_set() and i > 0:
                raise _Released
            outputs.append(self.blobs.put(self.executor.evaluate(self.blobs.get(digest), deadline)))
            done += count
            hb.progress = {"done": done, "total": total}
            hb.beat()
        if hb.lost.is_set():
            raise _Abandoned
        # The receipt names what this worker checked and loaded, not what the job claimed.
        receipt = sign_receipt(self.identity, job_id=lease.job.id, model_id=loaded.model_id, key_id=loaded.key_id,
                               inputs=task.inputs, outputs=outputs,
                               timings={"started_ms": started_ms,
                                        "eval_ms": int((time.perf_counter() - t_eval) * 1000)})
        stats = {"worker": self.name, "worker_id": self.identity.short_id,
                 "server": "hit" if loaded.server_hit else "miss", "keys": "hit" if loaded.keys_hit else "miss"}
        return Result(tuple(outputs), task.inputs, receipt, stats)
