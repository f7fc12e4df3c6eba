"""The untrusted worker: claim a job, evaluate it on ciphertexts, store the encrypted result.

A worker holds server parts (model weights are visible to it), evaluation keys
and ciphertexts, never a secret key: it imports only the worker-side modules
(evaluator, bundle, container, blobs, queue), and it never learns whether a
client's decryption succeeded, since nothing flows back.  Server parts pass
:func:`he_compute.bundle.verify_server_part` (inside :class:`Evaluator`)
before Concrete sees them, so a crafted bundle fails its job instead of
running code.

The loop (:meth:`Worker.run`) reads top to bottom: stop flag, maintenance,
claim, execute (with a heartbeat thread extending the lease), report.
Evaluators are cached by server-part digest and deserialized evaluation keys
by their blob digest (content-addressed, so equal to a key id), both in
LRU caches bounded by bytes: repeated jobs pay neither download nor
deserialization.

Test-only fault hook: ``HEC_TEST_FAULT`` makes a worker misbehave so that tests
and benchmarks can simulate slow and crashing jobs.  ``sleep=S`` sleeps S
seconds before each chunk; ``exit`` kills the process (``os._exit(70)``) as soon
as it has claimed a job; ``raise`` raises ``RuntimeError`` there.  Never set it
in production.

Run one with ``hec worker --queue URL`` or ``python -m he_compute.worker --queue URL``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from . import blobs as blob_stores
from . import container
from . import queue as job_queue
from .errors import HECError, KeyMismatchError, QueueError
from .evaluator import Evaluator, LoadedKeys
from .queue import Lease, Task
from .verify.identity import STATE_ENV, WorkerIdentity, routed_device
from .verify.receipts import sign_receipt

FAULT_ENV = "HEC_TEST_FAULT"
DEVICES = ("auto", "cpu", "cuda")
KEY_CACHE_BYTES = int(os.environ.get("HEC_KEY_CACHE_MB", "2048")) * 1024 * 1024
"""Bytes of serialized evaluation keys a worker keeps deserialized (``HEC_KEY_CACHE_MB``)."""
SERVER_CACHE_BYTES = int(os.environ.get("HEC_SERVER_CACHE_MB", "256")) * 1024 * 1024
"""Bytes of server parts whose compiled evaluators a worker keeps (``HEC_SERVER_CACHE_MB``)."""


class ByteLRU:
    """A least-recently-used cache bounded by the total ``size`` of its entries.

    Example::

        cache = ByteLRU(1 << 20); cache.put("k", obj, 1000); cache.get("k")
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self.bytes = 0

    def get(self, key: str) -> Any | None:
        """The cached value (now most recent), or ``None``."""
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key][0]

    def put(self, key: str, value: Any, size: int) -> None:
        """Insert, evicting the least recently used entries beyond ``max_bytes`` (never the new one)."""
        if key in self._items:
            self.bytes -= self._items.pop(key)[1]
        self._items[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes and len(self._items) > 1:
            _, (_, old) = self._items.popitem(last=False)
            self.bytes -= old

    def __len__(self) -> int:
        return len(self._items)


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
        raise QueueError(f"unknown device {requested!r}: use auto, cpu or cuda")
    if requested == "cpu":
        return ["cpu"]
    has_cuda = cuda_available()
    if requested == "cuda" and not has_cuda:
        raise QueueError("--device cuda: no usable GPU here (this Concrete build lacks CUDA support or no GPU is "
                         "visible); install Concrete's GPU wheel on a CUDA machine, or use --device cpu")
    return ["cuda"] if requested == "cuda" else (["cuda", "cpu"] if has_cuda else ["cpu"])


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def plan(cores: int, concurrency: int | None = None, threads: int | None = None) -> tuple[int, int]:
    """Choose ``(jobs at once, threads per job)`` for ``cores``.

    The default is one single-threaded job per core: Concrete's OpenMP speed-up
    inside one circuit is sub-linear (1.77x on 2 threads here), while separate
    jobs scale almost linearly (``bench/bench_queue.py`` measures both).

    Example::

        plan(8)                 # (8, 1)
        plan(8, concurrency=2)  # (2, 4)
    """
    if concurrency and threads:
        return concurrency, threads
    if concurrency:
        return concurrency, max(1, cores // concurrency)
    if threads:
        return max(1, cores // threads), threads
    return cores, 1


@dataclass
class _Heartbeat:
    """Extends a lease from a thread while the main thread evaluates (Concrete releases the GIL)."""

    queue: Any
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
        except QueueError:
            pass  # the queue is unreachable: keep trying; if the lease runs out, another worker retries the job

    def _loop(self) -> None:
        while not self._done.wait(self.interval):
            self.beat()


class _Abandoned(Exception):
    """The job was cancelled or handed to another worker: drop it without reporting."""


class _Released(Exception):
    """The worker is stopping with chunks left: give the job back."""


def _fault(where: str) -> None:
    """Apply the test-only fault hook (see the module docstring)."""
    fault = os.environ.get(FAULT_ENV, "")
    if not fault:
        return
    if fault.startswith("sleep="):
        time.sleep(float(fault.split("=", 1)[1]))
    elif fault == "exit" and where == "claimed":
        os._exit(70)
    elif fault == "raise" and where == "claimed":
        raise RuntimeError(f"{FAULT_ENV}=raise: simulated crash")


class Worker:
    """Claims and runs jobs from ``queue``, reading and writing payloads in ``blobs``.

    Example::

        Worker(queue.connect("sqlite://.hec/queue.db"), blobs.connect("file://.hec/blobs")).run(burst=True)
    """

    def __init__(self, queue: Any, blobs: Any, *, devices: Iterable[str] = ("cpu",), name: str | None = None,
                 log: Callable[[str], None] | None = None, identity: WorkerIdentity | None = None):
        self.queue, self.blobs = queue, blobs
        self.devices = list(devices)
        # Signs a receipt for every completed job; also routes jobs tagged for this worker (tie-breakers, re-runs).
        self.identity = identity or WorkerIdentity.generate()
        self.routes = [routed_device(d, self.identity.worker_id) for d in self.devices]
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.stopping = threading.Event()
        self.evaluators = ByteLRU(SERVER_CACHE_BYTES)
        self.keys = ByteLRU(KEY_CACHE_BYTES)
        self.stats = {"jobs": 0, "failed": 0, "server_loads": 0, "server_hits": 0, "keys_loads": 0, "keys_hits": 0}
        self._log = log or (lambda msg: print(f"[{self.name}] {msg}", file=sys.stderr, flush=True))

    def stop(self, *_: Any) -> None:
        """Ask the loop to stop: the chunk in hand finishes, a job with chunks left is released."""
        self.stopping.set()

    def install_signals(self) -> None:
        """SIGTERM and SIGINT stop the worker gracefully."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def run(self, *, burst: bool = False, poll_s: float = 1.0) -> int:
        """Process jobs until stopped (or, with ``burst``, until none is left); return how many ran."""
        self._log(f"serving devices {','.join(self.devices)} from {self.queue.url} (blobs {self.blobs.url})")
        ran = 0
        while not self.stopping.is_set():
            try:
                self.queue.maintain()
                lease = self.queue.claim(self.name, devices=self.devices + self.routes, block_s=0 if burst else poll_s)
            except QueueError as exc:
                self._log(f"queue unavailable ({exc}); retrying")
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
        except _Abandoned:
            self._log(f"job {job.id} was cancelled or reassigned; dropped it")
            return
        except _Released:
            self._report(lambda: self.queue.release(lease))
            self._log(f"job {job.id} released (stopping)")
            return
        except Exception as exc:  # noqa: BLE001 - a failing job must never take the worker down
            permanent = isinstance(exc, HECError) and not isinstance(exc, QueueError)
            message = f"{type(exc).__name__}: {exc}"
            state = self._report(lambda: self.queue.fail(lease, message, retry=not permanent))
            self.stats["failed"] += 1
            self._log(f"job {job.id} failed ({message}) -> {state.value if state else 'unreported'}")
            return
        result["stats"]["seconds"] = round(time.perf_counter() - start, 4)
        accepted = self._report(lambda: self.queue.complete(lease, result))
        self.stats["jobs"] += 1
        self._log(f"job {job.id} done in {time.perf_counter() - start:.2f}s"
                  + ("" if accepted else " (another result was already in)"))

    def _report(self, call: Callable[[], Any], patience_s: float = 60.0) -> Any:
        """Report to the queue, retrying while it is unreachable (a Redis restart, say)."""
        deadline = time.monotonic() + patience_s
        while True:
            try:
                return call()
            except QueueError as exc:
                if time.monotonic() > deadline:
                    self._log(f"could not report to the queue ({exc}); the lease will expire and the job retry")
                    return None
                time.sleep(0.5)

    def _execute(self, lease: Lease, hb: _Heartbeat) -> dict[str, Any]:
        _fault("claimed")
        task = Task.from_json(lease.job.spec)
        evaluator, server_hit = self._evaluator(task)
        keys, keys_hit = self._loaded_keys(evaluator, task)
        total, done, outputs = sum(task.counts), 0, []
        started_ms, t_eval = int(time.time() * 1000), time.perf_counter()
        for i, (digest, count) in enumerate(zip(task.inputs, task.counts)):
            if hb.lost.is_set():
                raise _Abandoned
            if self.stopping.is_set() and i > 0:
                raise _Released
            _fault("chunk")
            payload = self.blobs.get(digest)
            outputs.append(self.blobs.put(evaluator.evaluate_payload(payload, keys)))
            done += count
            hb.progress = {"done": done, "total": total}
            hb.beat()
        if hb.lost.is_set():
            raise _Abandoned
        receipt = sign_receipt(self.identity, job_id=lease.job.id, model_id=task.model_id, key_id=task.key_id,
                               inputs=task.inputs, outputs=outputs,
                               timings={"started_ms": started_ms,
                                        "eval_ms": int((time.perf_counter() - t_eval) * 1000)})
        return {"outputs": outputs, "inputs": list(task.inputs), "receipt": receipt,
                "stats": {"worker": self.name, "worker_id": self.identity.short_id,
                          "server": "hit" if server_hit else "miss", "keys": "hit" if keys_hit else "miss"}}

    def _evaluator(self, task: Task) -> tuple[Evaluator, bool]:
        cached = self.evaluators.get(task.server)
        if cached is not None:
            self.stats["server_hits"] += 1
            return cached, True
        data = self.blobs.get(task.server)
        part = container.parse(data, expect="server", source=f"server part {task.server[:19]}")
        evaluator = Evaluator(part)  # verify_server_part runs here, before Concrete sees anything
        if evaluator.model_id != task.model_id or evaluator.scheme != task.scheme:
            raise KeyMismatchError(f"server part {task.server[:19]} is model {evaluator.model_id[:12]}, "
                            f"the job names {task.model_id[:12]}")
        self.evaluators.put(task.server, evaluator, len(data))
        self.stats["server_loads"] += 1
        return evaluator, False

    def _loaded_keys(self, evaluator: Evaluator, task: Task) -> tuple[LoadedKeys, bool]:
        cached = self.keys.get(task.keys)
        if cached is not None and cached.model_id == evaluator.model_id:
            self.stats["keys_hits"] += 1
            return cached, True
        data = self.blobs.get(task.keys)
        loaded = evaluator.load_keys(container.parse(data, expect="evalkeys", source=f"evaluation keys {task.keys[:19]}"))
        if loaded.key_id != task.key_id:
            raise KeyMismatchError(f"evaluation keys {task.keys[:19]} have key id {loaded.key_id[:12]}, "
                            f"the job names {task.key_id[:12]}")
        self.keys.put(task.keys, loaded, len(data))
        self.stats["keys_loads"] += 1
        return loaded, False


def worker_command(queue_url: str, blobs_url: str, *, threads: int | None = None, cpus: Iterable[int] | None = None,
                   device: str = "cpu", burst: bool = False, lease_s: float | None = None) -> list[str]:
    """The command line of one worker process (used by ``hec worker --concurrency`` and ``hec run --local-workers``)."""
    cmd = [sys.executable, "-m", "he_compute.worker", "--queue", queue_url, "--blobs", blobs_url, "--device", device,
           "--concurrency", "1"]
    if threads:
        cmd += ["--threads", str(threads)]
    if cpus:
        cmd += ["--cpus", ",".join(map(str, cpus))]
    if burst:
        cmd.append("--burst")
    if lease_s:
        cmd += ["--lease", str(lease_s)]
    return cmd


def spawn(queue_url: str, blobs_url: str, n: int, *, threads: int | None = None, pin: bool = False,
          device: str = "cpu", burst: bool = False, lease_s: float | None = None, env: dict[str, str] | None = None,
          stderr: Any = None) -> list[subprocess.Popen[bytes]]:
    """Start ``n`` worker processes; with ``pin``, worker ``i`` is held to cores ``i*threads ...``."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    t = threads or max(1, len(cores) // n)
    procs = []
    for i in range(n):
        cpus = [cores[(i * t + k) % len(cores)] for k in range(t)] if pin else None
        procs.append(subprocess.Popen(
            worker_command(queue_url, blobs_url, threads=t, cpus=cpus, device=device, burst=burst, lease_s=lease_s),
            env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL, stderr=stderr))
    return procs


def stop_all(procs: list[subprocess.Popen[bytes]], grace_s: float = 15.0) -> None:
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


def serve(queue_url: str | None = None, blobs_url: str | None = None, *, concurrency: int | None = None,
          threads: int | None = None, device: str = "auto", burst: bool = False, lease_s: float | None = None,
          cpus: list[int] | None = None, log: Callable[[str], None] | None = None,
          state_dir: str | None = None) -> int:
    """Run workers until stopped: one in this process, or ``concurrency`` child processes.

    ``state_dir`` (or ``$HEC_WORKER_STATE``) keeps the worker's Ed25519 identity
    (created on first start; child processes share it: one machine, one
    identity); without either, the identity lives only as long as the process.

    Threads per job go to ``OMP_NUM_THREADS`` (set before Concrete loads);
    ``cpus`` pins this process with ``sched_setaffinity``.  Returns an exit status.

    Example::

        serve("redis://10.0.0.5:6379/0", concurrency=4, device="cpu")
    """
    queue_url = queue_url or job_queue.default_url()
    blobs_url = blobs_url or blob_stores.for_queue(queue_url)
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    devices = detect_devices(device)
    jobs_at_once, per_job = plan(len(cpus) if cpus else usable_cores(), concurrency, threads)
    say(f"hec worker: devices {','.join(devices)} (CUDA {'found' if 'cuda' in devices else 'not found'}); "
        f"{jobs_at_once} job(s) at once x {per_job} thread(s) each")
    state_dir = state_dir or os.environ.get(STATE_ENV) or None
    identity = WorkerIdentity.load_or_create(state_dir) if state_dir else None
    if identity:
        os.environ[STATE_ENV] = state_dir  # children load the same identity
        say(f"hec worker: identity {identity.short_id} ({identity.public_line()})")
    if jobs_at_once > 1:
        procs = spawn(queue_url, blobs_url, jobs_at_once, threads=per_job, device=device, burst=burst, lease_s=lease_s)
        signal.signal(signal.SIGTERM, lambda *_: stop_all(procs))
        signal.signal(signal.SIGINT, lambda *_: stop_all(procs))
        codes = [p.wait() for p in procs]
        return max(codes, default=0)
    if cpus:
        os.sched_setaffinity(0, cpus)
    os.environ["OMP_NUM_THREADS"] = str(per_job)  # read when Concrete's runtime loads, i.e. at the first job
    worker = Worker(job_queue.connect(queue_url, lease_s=lease_s), blob_stores.connect(blobs_url),
                    devices=devices, log=log, identity=identity)
    worker.install_signals()
    worker.run(burst=burst)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m he_compute.worker``: the same options as ``hec worker`` plus ``--threads`` and ``--cpus``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m he_compute.worker", description="Run one he_compute worker.")
    p.add_argument("--queue", default=None)
    p.add_argument("--blobs", default=None)
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--concurrency", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--cpus", default=None, help="comma-separated cores to pin this worker to")
    p.add_argument("--lease", type=float, default=None)
    p.add_argument("--burst", action="store_true")
    p.add_argument("--state", default=None, help="state directory holding the worker's identity key")
    a = p.parse_args(argv)
    try:
        cpus = [int(c) for c in a.cpus.split(",")] if a.cpus else None
        return serve(a.queue, a.blobs, concurrency=a.concurrency, threads=a.threads, device=a.device,
                     burst=a.burst, lease_s=a.lease, cpus=cpus, state_dir=a.state)
    except HECError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
