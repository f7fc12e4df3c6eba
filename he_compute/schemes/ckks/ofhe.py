"""The parent's side of the OpenFHE process (:mod:`.ofhe_child`): start it, talk to it in bounded frames.

OpenFHE's wheel imports only on CPython 3.10, the rest of he_compute runs on 3.11: so each side (client and
worker) starts ``ofhe_child.py`` under the OpenFHE environment's interpreter (``make openfhe-env`` makes
``.venv-openfhe``; ``HEC_OPENFHE_PYTHON`` names another) and exchanges length-prefixed frames with it over
two pipes.  Every reply is bounded in size and time; an error comes back as one line.  On a worker the
process starts while the sandboxed child opens the model (before it refuses itself exec), so it inherits
the sandbox: resource limits, Landlock, seccomp, no network (:mod:`he_compute.worker.confine`).
"""

from __future__ import annotations

import json
import os
import select
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

from ... import settings
from ...errors import EvaluationError, UnsupportedModelError

_HEAD = struct.Struct(">I")
_BODY = struct.Struct(">Q")
MAX_HEADER = 1 << 16
CHILD = Path(__file__).with_name("ofhe_child.py")
# What the parent sends or accepts in one frame: ciphertexts, plan vectors, a context and a secret key (tens
# of MB at 128-bit).  Evaluation keys (gigabytes at 128-bit: 3.7 GB measured, bench/results/ckks_boot.md)
# never travel in frames: they go through files the parent names (Engine.keygen, Engine.open_worker).
MAX_FRAME = 1 << 31


def interpreter() -> Path:
    """The OpenFHE environment's python, or one line saying it is missing and how to make it."""
    named = settings.get("HEC_OPENFHE_PYTHON")
    path = Path(named) if named else Path(__file__).resolve().parents[3] / ".venv-openfhe" / "bin" / "python"
    if not path.exists():
        raise UnsupportedModelError(f"this machine has no OpenFHE environment ({path}) for the bootstrapping CKKS "
                                    "engine: run `make openfhe-env` or set HEC_OPENFHE_PYTHON")
    return path


def _env() -> dict[str, str]:
    # OpenFHE's OpenMP threads busy-wait by default, which on a shared machine costs 5x (research notes).
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_WAIT_POLICY": "passive",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HOME": os.environ.get("TMPDIR", "/tmp")}


class Process:
    """One OpenFHE process; ``call`` sends a request and returns ``(reply header, blobs)``."""

    def __init__(self, *, max_bytes: int = MAX_FRAME) -> None:
        to_child_r, self._to = os.pipe()
        self._from, from_child_w = os.pipe()
        self.max_bytes = max_bytes
        try:
            self.proc = subprocess.Popen(
                [str(interpreter()), "-I", str(CHILD), str(to_child_r), str(from_child_w), str(max_bytes)],
                env=_env(), pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            raise UnsupportedModelError(f"cannot start the OpenFHE environment's python: {exc}") from None
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        hello, _ = self._read(time.monotonic() + 120)
        if not hello.get("hello"):
            raise EvaluationError("the OpenFHE process did not start: check `make openfhe-env`")

    def call(self, op: str, header: dict[str, Any] | None = None, blobs: list[bytes] = (), *,  # type: ignore[assignment]
             timeout: float = 3600.0, error: type[Exception] = EvaluationError) -> tuple[dict[str, Any], list[bytes]]:
        """One request; an error reply raises ``error`` with the process's one line."""
        blobs = list(blobs)
        head = json.dumps({**(header or {}), "op": op, "sizes": [len(b) for b in blobs]}).encode()
        try:
            self._write(_HEAD.pack(len(head)) + head + _BODY.pack(sum(map(len, blobs))))
            for b in blobs:
                self._write(b)
        except BrokenPipeError:
            raise EvaluationError(f"the OpenFHE process died ({self._death()})") from None
        reply, out = self._read(time.monotonic() + timeout)
        if "error" in reply:
            raise error(f"OpenFHE: {str(reply['error'])[:300]}")
        return reply, out

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._to, view):]

    def _read(self, deadline: float) -> tuple[dict[str, Any], list[bytes]]:
        (hlen,) = _HEAD.unpack(self._exact(_HEAD.size, deadline))
        if hlen > MAX_HEADER:
            raise EvaluationError(f"the OpenFHE process sent a {hlen}-byte header (limit {MAX_HEADER})")
        try:
            header = json.loads(self._exact(hlen, deadline))
        except ValueError:
            raise EvaluationError("the OpenFHE process sent an unreadable header") from None
        (plen,) = _BODY.unpack(self._exact(_BODY.size, deadline))
        sizes = header.get("sizes", []) if isinstance(header, dict) else None
        if plen > self.max_bytes or not isinstance(sizes, list) or not all(isinstance(s, int) and s >= 0 for s in sizes) \
                or sum(sizes) != plen:
            raise EvaluationError(f"the OpenFHE process sent a malformed {plen}-byte reply")
        data = self._exact(plen, deadline) if plen else b""
        out, pos = [], 0
        for s in sizes:
            out.append(data[pos:pos + s])
            pos += s
        return header, out

    def _exact(self, n: int, deadline: float) -> bytes:
        parts, left = [], n
        while left:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([self._from], [], [], wait)[0]:
                self.close()
                raise EvaluationError("the OpenFHE process did not answer in time: it was killed")
            chunk = os.read(self._from, min(left, 1 << 22))
            if not chunk:
                raise EvaluationError(f"the OpenFHE process died ({self._death()})")
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)

    def _death(self) -> str:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.close()
            return "it stopped answering"
        return f"signal {-code}" if code < 0 else f"exit status {code}"

    def close(self) -> None:
        """Stop the process (it holds keys: nothing should outlive its user)."""
        if getattr(self, "proc", None) is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to, self._from):
            try:
                os.close(fd)
            except OSError:
                pass
        self._to = self._from = -1

    def __del__(self) -> None:
        try:
            if getattr(self, "_to", -1) != -1:
                self.close()
        except (AttributeError, TypeError, OSError):  # at interpreter exit the modules may be gone already
            pass


