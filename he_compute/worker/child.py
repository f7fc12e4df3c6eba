"""The sandboxed evaluation child: locks itself down, then evaluates one model's jobs for its parent worker.

Started by :mod:`.sandbox` as ``python -m he_compute.worker.child FD_IN FD_OUT LIMITS`` with an empty
environment (no credentials, no inherited secrets), its own temporary directory and two pipes.  Before it
reads anything a stranger wrote it:

* asks to be killed when its parent dies (Linux parent-death signal),
* caps its address space, open files, file size and core dumps (``setrlimit``),
* leaves the network and the machine's ``/dev/shm`` (its own namespaces, where permitted: root),
* gives up every capability and any new privilege, and is confined by Landlock (read-only packages,
  read-write temp dir) and seccomp (no ptrace, namespaces or sockets): see :mod:`.confine`,
* and, once its one model is compiled, refuses itself exec and fork (:func:`after_model_opened`).

It reports what took effect in its hello (and what did not, apart): nothing is claimed that failed.

Then it serves frames (:mod:`.frames`): ``load`` (which of this server part and these keys it still
needs), ``put`` (a blob it needed), ``eval`` (one payload, with a CPU-time budget), ``quit``.  Errors go
back as ``{"error": {"type", "message"}}``; a crash, an abort or a limit kills only this process.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import resource
import signal
import sys
from typing import Any

_PR_SET_PDEATHSIG = 1
_CLONE_NEWNET = 0x40000000
MAX_BLOB = 1 << 31


def lock_down(limits: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Apply the sandbox to this process; return the protections that took effect and those that did not."""
    from . import confine

    applied, missing = [], []
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
        applied.append("dies with its parent")
    if os.getppid() == 1:  # the parent died before the request above took effect
        os._exit(1)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for name, key in (("RLIMIT_AS", "memory"), ("RLIMIT_NOFILE", "files"), ("RLIMIT_FSIZE", "fsize")):
        value = int(limits[key])
        resource.setrlimit(getattr(resource, name), (value, value))
    applied.append(f"{limits['memory'] >> 20} MiB address space, {limits['files']} files, "
                   f"{limits['fsize'] >> 20} MiB per file")
    if libc.unshare(_CLONE_NEWNET) == 0:  # before the capabilities go: it needs CAP_SYS_ADMIN
        applied.append("no network (own network namespace)")
    else:
        missing.append("own network namespace: " + os.strerror(ctypes.get_errno()))
    shm = confine.private_shm()  # before the capabilities go, too
    (applied if shm else missing).append("own /dev/shm (mount namespace)")
    if os.getuid() == 0:  # root's closed home out of sight, the interpreter within reach of uid nobody
        unhidden, hidden = confine.unhide_for_others(confine.readable_paths(os.getcwd()))
        applied += [unhidden] if unhidden else []
        missing += [hidden] if hidden else []
    uid_problem: list[str] = []
    problem = confine.drop_capabilities(lambda: uid_problem.append(confine.become_nobody(os.getcwd())))
    if os.getuid() == confine.NOBODY and libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        os._exit(1)  # a uid change clears the parent-death signal: without it again, an orphan could linger
    if os.getppid() == 1:
        os._exit(1)
    missing += [p for p in uid_problem if p]
    (missing if problem else applied).append(problem or f"no capabilities (uid {os.getuid()}, gid {os.getgid()})")
    if confine.no_new_privileges():
        applied.append("no new privileges")
    else:
        missing.append("no new privileges: refused")
    for done, failed in (confine.landlock(os.getcwd()), confine.seccomp_filter()):
        if done:
            applied.append(done)
        if failed:
            missing.append(failed)
    return applied, missing


def after_model_opened() -> list[str]:
    """Once the one model is compiled (its linker has run), refuse exec and fork; say so only if it took."""
    from . import confine

    done, _ = confine.no_exec()
    return [done] if done else []


class _Model:
    """One server part's evaluator and the keys loaded for it (by blob digest)."""

    def __init__(self, max_keys: int) -> None:
        self.server: str | None = None
        self.evaluator: Any = None
        self.keys: dict[str, Any] = {}
        self.current: Any = None
        self.max_keys = max_keys

    def need(self, server: str, keys: str) -> list[str]:
        out = []
        if self.server != server:
            out.append("server")
        if keys not in self.keys:
            out.append("keys")
        if not out:
            self.current = self.keys[keys]
            self.keys[keys] = self.keys.pop(keys)  # most recently used last
        return out

    def put(self, what: str, digest: str, data: bytes) -> None:
        from ..formats import container
        from ..evaluator import Evaluator

        if what == "server":
            from ..schemes.tfhe.mlir_check import checked_by_parent

            part = container.parse(data, expect="server", source=f"server part {digest[:19]}")
            # The worker ran the scheme's checks on these bytes before sending them (this process may not
            # start the circuit checker: exec is refused here); the rest of the checks run again below.
            with checked_by_parent():
                evaluator = Evaluator(part)
            self.evaluator, self.server, self.keys, self.current = evaluator, digest, {}, None
        elif what == "keys":
            if self.evaluator is None:
                raise RuntimeError("keys sent before the server part")
            c = container.parse(data, expect="evalkeys", source=f"evaluation keys {digest[:19]}")
            self.keys[digest] = self.evaluator.load_keys(c)
            while len(self.keys) > self.max_keys:
                self.keys.pop(next(iter(self.keys)))
        else:
            raise ValueError(f"unknown blob kind {what!r}")

    def evaluate(self, payload: bytes) -> bytes:
        if self.current is None:
            raise RuntimeError("eval before load")
        out: bytes = self.evaluator.evaluate_payload(payload, self.current)
        return out


def _error(exc: BaseException) -> dict[str, Any]:
    return {"error": {"type": type(exc).__name__, "message": str(exc)[:1000]}}


def _cpu_budget(seconds: int) -> None:
    """Allow this process ``seconds`` more CPU time from now (RLIMIT_CPU is a total since it started)."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    soft = int(used.ru_utime + used.ru_stime) + seconds
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    resource.setrlimit(resource.RLIMIT_CPU, (soft if hard < 0 else min(soft, hard), hard))


def serve(fd_in: int, fd_out: int, limits: dict[str, Any]) -> None:
    """Answer frames until ``quit`` or end of input."""
    from .frames import ChildGone, read_frame, write_frame

    model = _Model(int(limits.get("max_keys", 4)))
    cpu_budget = int(limits["cpu_job_s"])
    while True:
        try:
            header, payload = read_frame(fd_in, max_payload=int(limits.get("max_blob", MAX_BLOB)))
        except ChildGone:
            return
        op = header.get("op")
        try:
            if op == "quit":
                return
            if op == "load":
                write_frame(fd_out, {"need": model.need(str(header["server"]), str(header["keys"]))})
            elif op == "put":
                # Opening a server part compiles its circuit: bounded like an evaluation (SIGXCPU past it).
                _cpu_budget(int(limits.get("compile_cpu_s", cpu_budget)) if header.get("what") == "server"
                            else cpu_budget)
                model.put(str(header["what"]), str(header["digest"]), payload)
                write_frame(fd_out, {"ok": True, "applied": after_model_opened() if header["what"] == "server"
                                     else []})
            elif op == "eval":
                _cpu_budget(cpu_budget)
                write_frame(fd_out, {"ok": True}, model.evaluate(payload))
            else:
                write_frame(fd_out, {"error": {"type": "FormatError", "message": f"unknown op {str(op)[:20]!r}"}})
        except MemoryError as exc:
            write_frame(fd_out, {"error": {"type": "MemoryError", "message": f"out of memory: {exc}"}})
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the parent as a typed message
            write_frame(fd_out, _error(exc))


def main(argv: list[str]) -> int:
    """``python -m he_compute.worker.child FD_IN FD_OUT LIMITS_JSON``."""
    fd_in, fd_out, limits = int(argv[0]), int(argv[1]), json.loads(argv[2])
    applied, missing = lock_down(limits)
    from .frames import write_frame

    for module in limits.get("warm", []):  # a spare child loads these while it waits for its first job
        try:
            importlib.import_module(str(module))
        except Exception:  # noqa: BLE001 - warming up is an optimisation; the job will say what is missing
            pass

    write_frame(fd_out, {"hello": applied, "missing": missing, "pid": os.getpid()})
    serve(fd_in, fd_out, limits)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
