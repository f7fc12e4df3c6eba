"""Evaluation in locked-down child processes: a hostile job can crash, abort or exhaust only its own child.

:class:`Sandbox` is the worker's default :class:`~.executor.Executor`.  Each server part gets its own child
(:mod:`.child`), reused for every job of that bundle so that its compiled circuit stays warm; at most
``max_children`` live at once (least recently used first out).  The child holds no credential: it gets
an empty environment, its own temporary directory, resource limits and no network, and talks to the
worker over two pipes (:mod:`.frames`).  The worker keeps the queue, the blob store and its signing key.

What the worker signs does not come from the child: :meth:`Sandbox.load` recomputes the model id from the
server part's digests and the key id from the evaluation-key container itself.  A child that crashes,
aborts, runs out of memory or time, or answers nonsense is killed and the job fails with
:class:`~he_compute.errors.EvaluationError` (an attempt: the queue retries it, then dead-letters it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .. import errors, schemes, settings
from ..errors import EvaluationError
from ..formats import container
from ..formats import evalkeys as evalkeys_format
from ..formats.bundle import check_server_part
from ..formats.task import Task
from .executor import Fetch, Loaded, check_ids
from .frames import ChildGone, TimedOut, read_frame, write_frame

_GiB = 1 << 30
_ERRORS: dict[str, type[Exception]] = {name: getattr(errors, name) for name in ("FormatError", "IntegrityError", "LimitExceeded",
           "UnsafeArtifactError", "KeyMismatchError", "SecurityError", "UnsupportedModelError", "EvaluationError")}


def _env_int(name: str, default: int) -> int:
    return int(settings.get(name))  # a bad value is one line naming it (was: silently the default)


@dataclass(frozen=True)
class Limits:
    """What one evaluation child may use (``HEC_SANDBOX_*`` environment variables override the defaults)."""

    memory: int = _env_int("HEC_SANDBOX_MEMORY_MB", 16 * 1024) << 20   # address space
    files: int = 256
    fsize: int = 2 * _GiB                                               # compiled circuits are written to disk
    cpu_job_s: int = _env_int("HEC_SANDBOX_CPU_S", 3600)                # CPU seconds per evaluation call
    max_keys: int = 4                                                   # key sets kept per model
    threads: int = 1
    # Loaded by a spare child ahead of its first job (SEAL's bindings directly: see schemes/ckks/seal.sealapi).
    warm: tuple[str, ...] = ("he_compute.evaluator", "numpy", "he_compute.schemes.ckks.seal", "_sealapi_cpp")
    env: dict[str, str] = field(default_factory=dict)                  # extra variables (tests' fault hooks)
    log_bytes: int = _env_int("HEC_SANDBOX_LOG_KB", 64) << 10           # of the child's stderr per job
    compile_cpu_s: int = _env_int("HEC_SANDBOX_COMPILE_CPU_S", 600)     # CPU seconds to open one server part
    max_blob: int = 2 * _GiB                                            # one server part or key set sent to it


def boot_limits(base: Limits, key_bytes: int) -> Limits:
    """The limits of a child that evaluates a bootstrapping-engine bundle with ``key_bytes`` of evaluation keys.

    At 128-bit those keys run to gigabytes, past the defaults: the child holds them twice (the frame and the
    parsed container), writes them to files for its OpenFHE process, which holds them once more with the
    bootstrapping tables (each process has its own address space limit).  So the address space is 4 x the keys
    + 8 GiB, the file size and frame bound the keys + 64 MiB, never below the defaults and never above
    ``HEC_SANDBOX_BOOT_MEMORY_MB``: keys past that cap fail in one line that names it."""
    cap = int(settings.get("HEC_SANDBOX_BOOT_MEMORY_MB")) << 20
    if key_bytes + (64 << 20) > cap:
        raise errors.LimitExceeded(f"these evaluation keys take {key_bytes >> 20} MiB, more than a worker's "
                                   f"HEC_SANDBOX_BOOT_MEMORY_MB ({cap >> 20} MiB) allows: raise it")
    return replace(base, memory=min(cap, max(base.memory, 4 * key_bytes + 8 * _GiB)),
                   fsize=min(cap, max(base.fsize, key_bytes + (64 << 20))),
                   max_blob=min(cap, max(base.max_blob, key_bytes + (64 << 20))))


class _Child:
    """One child process, its pipes and the reader that bounds what it writes to the worker's log."""

    module = "he_compute.worker.child"

    def __init__(self, limits: Limits, log: Any, *, extra: dict[str, Any] | None = None):
        self.tmp = tempfile.mkdtemp(prefix="hec-sandbox-")
        self.memory, self.limits = limits.memory, limits
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        env = {"PATH": "/usr/bin:/bin", "HOME": self.tmp, "TMPDIR": self.tmp, "LANG": "C.UTF-8",
               "OMP_NUM_THREADS": str(limits.threads), **limits.env}
        for name in ("HEC_OPENFHE_PYTHON", "HEC_CKKS_INSECURE_TEST_PARAMS"):  # the bootstrapping engine's
            if os.environ.get(name):
                env[name] = os.environ[name]
        if os.environ.get("PYTHONPATH"):  # where this he_compute comes from (a checkout), not a credential
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(limits).items() if k != "env"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, str(to_child_r), str(from_child_w),
             json.dumps({**settings, **(extra or {})})],
            env=env, cwd=self.tmp, pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        os.close(to_child_r)
        os.close(from_child_w)
        self.log = BoundedLog(self.proc.stderr, log, limits.log_bytes)
        self.protections: list[str] = []
        self.missing: list[str] = []
        self._ready = False

    def ready(self) -> _Child:
        """Wait for the child's hello (it has locked itself down and loaded its warm modules)."""
        if not self._ready:
            hello, _ = self.call(None, deadline=time.monotonic() + 120)
            self.protections = [str(p)[:200] for p in hello.get("hello", [])][:16]
            self.missing = [str(p)[:200] for p in hello.get("missing", [])][:16]
            self._ready = True
        return self

    def call(self, header: dict[str, Any] | None, payload: bytes = b"", *, deadline: float | None,
             max_reply: int = 1 << 31) -> tuple[dict[str, Any], bytes]:
        """Send a frame (unless ``header`` is None) and read the reply; translate failures into errors."""
        try:
            if header is not None:
                write_frame(self._to_child, header, payload)
            reply, data = read_frame(self._from_child, max_payload=max_reply, deadline=deadline)
        except TimedOut:
            self.kill()
            raise EvaluationError("the job ran past its time limit: its evaluation process was killed") from None
        except ChildGone:
            raise EvaluationError(f"the evaluation process died ({self._death()}): "
                                  "the job is retried, then dead-lettered") from None
        except EvaluationError:
            self.kill()
            raise
        if "error" in reply:
            raise _translate(reply["error"], self.memory)
        return reply, data

    def _death(self) -> str:
        try:
            code = self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.kill()
            return "stopped answering"
        if code == -signal.SIGXCPU:
            return ("killed by SIGXCPU: it used up its CPU time, HEC_SANDBOX_COMPILE_CPU_S to open a model, "
                    "HEC_SANDBOX_CPU_S per evaluation")
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exit status {code}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """Kill the child now."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        """Ask the child to quit, kill it if it does not, and remove its files."""
        if self.proc.poll() is None:
            try:
                write_frame(self._to_child, {"op": "quit"})
                self.proc.wait(5)
            except (ChildGone, subprocess.TimeoutExpired, OSError):
                self.kill()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)


# Control bytes other than newline and tab become '?': a child's text must not steer the operator's terminal.
_PRINTABLE = bytes(b if b in (9, 10) or 32 <= b < 127 or b >= 128 else ord("?") for b in range(256))


class BoundedLog:
    """Copies a child's stderr to the worker's log, at most ``budget`` bytes per job, then a marker line.

    A reader thread drains the pipe to its end, so a child that writes without end neither blocks nor fills
    the log: what passes the budget is read and dropped (a crafted ciphertext made Concrete print
    "Premature EOF" in a loop: 23.7 MB in 106 s).
    """

    def __init__(self, pipe: Any, log: Any, budget: int):
        self._pipe, self._log, self.budget = pipe, log, budget
        self.written = self.dropped = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._drain, name="sandbox-stderr", daemon=True)
        self._thread.start()

    def new_job(self) -> None:
        """Start a new budget (each job gets its own)."""
        with self._lock:
            self.written = self.dropped = 0

    def _drain(self) -> None:
        with self._pipe:
            while chunk := self._pipe.read1(1 << 16):
                with self._lock:
                    room = max(self.budget - self.written, 0)
                    keep, self.written = chunk[:room], self.written + min(len(chunk), room)
                    marker = not self.dropped and len(chunk) > room
                    self.dropped += len(chunk) - len(keep)
                if keep:
                    self._write(keep.translate(_PRINTABLE))
                if marker:
                    self._write(f"\n[hec sandbox: the evaluation process wrote more than {self.budget} bytes to "
                                "its log for this job; the rest is dropped]\n".encode())

    def _write(self, data: bytes) -> None:
        target: Any = self._log if self._log is not None else sys.stderr
        try:
            target = getattr(target, "buffer", target)
            try:
                target.write(data)
            except TypeError:  # a text stream
                target.write(data.decode("utf-8", "replace"))
            target.flush()
        except (OSError, ValueError):  # the log is closed or gone: the child's text is dropped, not fatal
            pass

    def join(self, timeout: float) -> None:
        """Wait for the reader to reach the end of the pipe (the child has exited)."""
        self._thread.join(timeout)


_RESOURCE_KINDS = ("MemoryError", "ImportError", "OSError")


def _translate(error: Any, memory: int) -> Exception:
    """The child's error as one of our exception types (anything else: an evaluation failure)."""
    kind = str(error.get("type", "")) if isinstance(error, dict) else ""
    message = "".join(ch for ch in str(error.get("message", "") if isinstance(error, dict) else "")[:500]
                      if ch.isprintable())
    cls = _ERRORS.get(kind, EvaluationError)
    if cls is EvaluationError and kind:
        message = f"{kind}: {message}"
        if kind in _RESOURCE_KINDS:  # what running out of address space looks like from inside
            message += (f" (the evaluation process may use {memory >> 20} MiB of address space: "
                        "raise HEC_SANDBOX_MEMORY_MB if the model needs more)")
    return cls(message)


class Sandbox:
    """Evaluates in child processes, one per server part (see the module docstring)."""

    def __init__(self, limits: Limits | None = None, *, max_children: int = 2, log: Any = None,
                 prestart: bool = False):
        self.limits = limits or Limits()
        self.max_children = max_children
        self._log = log
        self._spare: _Child | None = None
        if prestart:
            self.prestart()
        self._children: OrderedDict[str, _Child] = OrderedDict()
        self._key_ids: OrderedDict[str, tuple[str, str]] = OrderedDict()   # keys digest -> (key id, model id)
        self._model_ids: dict[str, tuple[str, str]] = {}                   # server digest -> (model id, scheme)
        self._bootstrapping: dict[str, bool] = {}                          # server digest -> bootstrapping engine
        self._key_bytes: dict[str, int] = {}                               # keys digest -> blob size
        self._current: _Child | None = None
        self.protections: list[str] = []   # what the newest child's lock-down achieved, as it reported
        self.missing: list[str] = []       # what it could not apply (never claimed above)

    def prestart(self) -> None:
        """Start a spare child now, so the next new model does not wait for one to boot.

        The child is started from the calling thread and read from later: Linux sends the parent-death
        signal when the *thread* that started a child ends, so a helper thread must not start it.
        """
        if self._spare is None:
            try:
                self._spare = _Child(self.limits, self._log)
            except OSError:  # a spare is an optimisation: the first job starts its own child
                self._spare = None

    def _take_spare(self) -> _Child | None:
        spare, self._spare = self._spare, None
        if spare is None:
            return None
        try:
            return spare.ready()
        except EvaluationError:
            spare.close()
            return None

    def _child(self, server: str, deadline: float | None, limits: Limits | None = None) -> tuple[_Child, bool]:
        child = self._children.get(server)
        if child is not None and child.alive() and (limits is None or child.limits.memory >= limits.memory):
            self._children.move_to_end(server)
            return child, True
        if child is not None:  # dead, or started with limits below what these keys need
            child.close()
            del self._children[server]
        while len(self._children) >= self.max_children:
            self._children.popitem(last=False)[1].close()
        # A spare has the default limits: a bootstrapping bundle's child is started with its own.
        child = (self._take_spare() if limits is None else None) or _Child(limits or self.limits, self._log).ready()
        self.protections, self.missing = child.protections, child.missing
        self._children[server] = child
        return child, False

    def load(self, task: Task, fetch: Fetch, deadline: float | None = None) -> Loaded:
        """Make ``task``'s model and keys current in its child; the ids come from the worker's own parsing."""
        fetched: dict[str, bytes] = {}

        def once(digest: str) -> bytes:  # a bootstrapping bundle's keys are sized before the child starts
            if digest not in fetched:
                fetched[digest] = fetch(digest)
            return fetched[digest]

        limits = None
        if self._ids_for_server(task, once)[1] == "ckks" and self._bootstrapping.get(task.server):
            self._ids_for_keys(task, once)
            limits = boot_limits(self.limits, self._key_bytes[task.keys])
        child, _ = self._child(task.server, deadline, limits)
        child.log.new_job()
        need, _ = child.call({"op": "load", "server": task.server, "keys": task.keys}, deadline=deadline)
        wanted = [w for w in need.get("need", []) if w in ("server", "keys")]
        for what in wanted:
            digest = task.server if what == "server" else task.keys
            data = once(digest)
            if digest not in (self._model_ids if what == "server" else self._key_ids):  # parsed once per blob
                self._remember_ids(what, digest, data)
            reply, _ = child.call({"op": "put", "what": what, "digest": digest}, data, deadline=deadline)
            child.protections += [str(p)[:200] for p in reply.get("applied", [])][:4]
        if wanted:
            child.call({"op": "load", "server": task.server, "keys": task.keys}, deadline=deadline)
        fetched.clear()
        model_id, scheme = self._ids_for_server(task, fetch)
        key_id, keys_model = self._ids_for_keys(task, fetch)
        if keys_model != model_id:
            raise errors.KeyMismatchError("the evaluation keys were made for another model than this bundle")
        check_ids(task, model_id, key_id, scheme)
        self._current = child
        return Loaded(model_id, key_id, "server" not in wanted, "keys" not in wanted)

    def _remember_ids(self, what: str, digest: str, data: bytes) -> None:
        if what == "server":
            part = container.parse(data, expect="server", source=f"server part {digest[:19]}")
            sections = check_server_part(part)  # digests and model id, recomputed here
            # The scheme's own checks (TFHE: the circuit walked against its allow-list in a process of its
            # own) run here, before the child sees the bytes: the child may not start that process.
            schemes.server(part.scheme).check_server_part(part.meta, sections)
            self._model_ids[digest] = (str(part.meta["model_id"]), part.scheme)
            if part.scheme == "ckks":
                from ..schemes.ckks.boot import bootstrapping

                self._bootstrapping[digest] = bootstrapping(part.meta)
        else:
            c = container.parse(data, expect="evalkeys", source=f"evaluation keys {digest[:19]}")
            self._key_ids[digest] = (evalkeys_format.verify(c), str(c.meta.get("model_id")))
            self._key_bytes[digest] = len(data)
            while len(self._key_ids) > 64:
                self._key_bytes.pop(self._key_ids.popitem(last=False)[0], None)

    def _ids_for_server(self, task: Task, fetch: Fetch) -> tuple[str, str]:
        if task.server not in self._model_ids:
            self._remember_ids("server", task.server, fetch(task.server))
        return self._model_ids[task.server]

    def _ids_for_keys(self, task: Task, fetch: Fetch) -> tuple[str, str]:
        if task.keys not in self._key_ids:
            self._remember_ids("keys", task.keys, fetch(task.keys))
        return self._key_ids[task.keys]

    def evaluate(self, payload: bytes, deadline: float | None = None) -> bytes:
        """Evaluate one chunk in the current child."""
        if self._current is None:
            raise RuntimeError("Sandbox.evaluate called before load")
        _, result = self._current.call({"op": "eval"}, payload, deadline=deadline)
        return result

    def abort(self) -> None:
        """Kill the child working on the current job (a second stop signal)."""
        if self._current is not None:
            self._current.kill()

    def close(self) -> None:
        """Stop every child (the spare too: it never had a job, so it is killed without waiting for it to boot)."""
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.kill()
            spare.close()
        while self._children:
            self._children.popitem()[1].close()
        self._current = None
