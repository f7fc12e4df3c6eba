"""Decrypting bytes a worker made, bounded in time and output.

A result chunk comes from an untrusted worker.  Its size and framing are checked before anything parses
it, but a scheme library's parser can still misbehave on bytes that pass those checks: Concrete's
``Value.deserialize`` allocates 16 GB, or loops for ever, on a TFHE result with one flipped bit.  So the
client decrypts in a forked child of itself: the keys are already in memory and nothing new is loaded, so
a fork costs tens of milliseconds where a fresh interpreter would spend seconds importing Concrete
(``python -m bench decrypt``):

* a **deadline**: a child that has not answered by then is killed, and the caller gets a
  :class:`~he_compute.errors.FormatError` naming what it was decrypting;
* **bounded output**: the child's stdout and stderr go to a pipe this process drains; a child that prints
  more than ``OUTPUT_BYTES`` (a library printing without end) is killed, and only its first line, made
  printable, reaches a message;
* bounded memory: 2 GB of address space beyond what it inherited, and no core dumps.

The child sends back frames on a pipe: progress counts, then one float64 array (or an error), every length
checked against what the caller expects.  Nothing is unpickled.  The deadline is ``HEC_DECRYPT_TIMEOUT_S``
(default 60 seconds) per call, plus a little per chunk for a whole result.
"""

from __future__ import annotations

import os
import resource
import select
import signal
import struct
import time
from typing import Callable

import numpy as np

from .. import errors, settings
from ..errors import FormatError, HECError
from ..formats.text import printable

PER_CHUNK_S = 0.5
"""Added to the deadline of a whole result per chunk (an honest TFHE chunk decrypts in milliseconds)."""
OUTPUT_BYTES = 64 << 10
"""What a decrypting child may print (library warnings) before ``SIGXFSZ`` stops it."""
MEMORY_BYTES = 2 << 30
"""Address space a decrypting child may add to what it inherited (decryption itself needs little)."""
_FRAME = struct.Struct("<cQ")  # kind, body length
_SHAPE = struct.Struct("<QQ")  # rows, columns of the result

Work = Callable[[Callable[[int], None]], np.ndarray]


def timeout_s() -> float:
    """The per-call deadline (``HEC_DECRYPT_TIMEOUT_S``)."""
    value: float = settings.get("HEC_DECRYPT_TIMEOUT_S")
    return value


def run_bounded(work: Work, *, what: str, max_values: int, deadline_s: float,
                progress: Callable[[int], None] | None = None) -> np.ndarray:
    """``work(report)`` in a forked child under a deadline; return its array (at most ``max_values`` floats).

    ``report(n)`` in the child reaches ``progress(n)`` here.  Every failure, including a child that is killed,
    raises :class:`FormatError` (or the child's own :class:`HECError` subclass) naming ``what``.
    """
    r, w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child, measured through the parent
        os.close(r)
        os.close(err_r)
        _child(work, w, err_w)
    os.close(w)
    os.close(err_w)
    try:
        return _collect(pid, r, err_r, what, max_values, time.monotonic() + deadline_s, deadline_s, progress)
    finally:
        os.close(r)
        os.close(err_r)


def _child(work: Work, w: int, err_w: int) -> None:
    """Decrypt, send the result, leave without running any of the parent's cleanup."""
    code = 1
    try:
        os.dup2(err_w, 1)
        os.dup2(err_w, 2)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        # A length field flipped to 16 GB makes Concrete allocate (and zero) that much before it fails.
        room = _address_space() + MEMORY_BYTES
        resource.setrlimit(resource.RLIMIT_AS, (room, room))
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it kills us

        def report(n: int) -> None:
            _send(w, b"P", struct.pack("<Q", n))

        try:
            y = np.ascontiguousarray(work(report), dtype=np.float64)
            y = y.reshape(y.shape[0], -1) if y.ndim else y.reshape(1, 1)
            _send(w, b"R", _SHAPE.pack(*y.shape) + y.tobytes())
        except HECError as exc:
            _send(w, b"E", f"{type(exc).__name__}\n{exc}".encode(errors="replace")[:4000])
        except Exception as exc:  # noqa: BLE001 - a library's own exception on hostile bytes
            _send(w, b"E", f"FormatError\n{type(exc).__name__}: {exc}".encode(errors="replace")[:4000])
        code = 0
    finally:
        os._exit(code)


def _address_space() -> int:
    """This process's mapped address space in bytes (``VmSize``)."""
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _send(fd: int, kind: bytes, body: bytes) -> None:
    data = memoryview(_FRAME.pack(kind, len(body)) + body)
    while data:
        data = data[os.write(fd, data):]


def _collect(pid: int, r: int, err_r: int, what: str, max_values: int, deadline: float, budget: float,
             progress: Callable[[int], None] | None) -> np.ndarray:
    buf = bytearray()
    limit = _FRAME.size + _SHAPE.size + 8 * max_values + 8192  # the result, or an error of at most 4000 bytes
    result: np.ndarray | None = None
    reaped = False
    printed, said = 0, b""
    try:
        while result is None:
            left = deadline - time.monotonic()
            ready = select.select([r, err_r] if printed >= 0 else [r], [], [], max(0.0, left))[0] if left > 0 else []
            if not ready:
                raise FormatError(f"{what} did not decrypt within {budget:.0f}s: the worker's bytes are not a "
                                  "valid result (raise HEC_DECRYPT_TIMEOUT_S if the machine is just slow)")
            if err_r in ready:
                out = os.read(err_r, 1 << 16)
                said = said or out[:300]
                printed = printed + len(out) if out else -1  # -1: the child closed its output
                if printed > OUTPUT_BYTES:
                    raise FormatError(f"{what} could not be decrypted: it printed without end"
                                      + (f" ({_first_line(said)})" if said else ""))
                continue
            chunk = os.read(r, 1 << 20)
            if not chunk:
                _, status = os.waitpid(pid, 0)
                reaped = True
                raise FormatError(f"{what} could not be decrypted: {_death(status, said)}")
            buf += chunk
            if len(buf) > limit:
                raise FormatError(f"{what}: the decrypting process sent more than {limit} bytes")
            result = _frames(buf, what, max_values, progress)
    finally:
        if not reaped:
            os.kill(pid, signal.SIGKILL)  # not reaped yet, so the pid is still ours even if it has exited
            os.waitpid(pid, 0)
    return result


def _frames(buf: bytearray, what: str, max_values: int, progress: Callable[[int], None] | None) -> np.ndarray | None:
    """Consume whole frames from ``buf``; the result once it has arrived."""
    while len(buf) >= _FRAME.size:
        kind, length = _FRAME.unpack_from(buf)
        if len(buf) < _FRAME.size + length:
            return None
        body = bytes(buf[_FRAME.size : _FRAME.size + length])
        del buf[: _FRAME.size + length]
        if kind == b"P" and length == 8:
            if progress is not None:
                progress(struct.unpack("<Q", body)[0])
        elif kind == b"R" and length >= _SHAPE.size:
            rows, cols = _SHAPE.unpack_from(body)
            if rows * cols > max_values or length != _SHAPE.size + 8 * rows * cols:
                raise FormatError(f"{what}: the decrypted result has an unexpected size")
            return np.frombuffer(body, dtype=np.float64, offset=_SHAPE.size).reshape(rows, cols).copy()
        elif kind == b"E":
            name, _, message = body.decode(errors="replace").partition("\n")
            cls = getattr(errors, name, None)
            if not (isinstance(cls, type) and issubclass(cls, HECError)):
                cls = FormatError
            raise cls(f"{what}: {printable(message, 300)}")
        else:
            raise FormatError(f"{what}: the decrypting process sent an unknown frame")
    return None


def _first_line(said: bytes) -> str:
    return printable(said.split(b"\n", 1)[0].decode(errors="replace"), 200)


def _death(status: int, said: bytes) -> str:
    """Why the child ended without an answer, with the first line it printed."""
    if os.WIFSIGNALED(status):
        why = f"the decrypting process died of {signal.Signals(os.WTERMSIG(status)).name}"
    else:
        why = f"the decrypting process exited with status {os.WEXITSTATUS(status)}"
    return why + (f" ({_first_line(said)})" if said else "")
