"""The pipe protocol between a worker and its sandboxed evaluation child: length-prefixed frames.

A frame is a small JSON header and an optional binary payload::

    u32 header length | header (JSON object) | u64 payload length | payload

Both sides bound every length before allocating: the child's replies are as
untrusted as the jobs it ran.
"""

from __future__ import annotations

import json
import os
import select
import struct
import time
from typing import Any

from ..errors import EvaluationError

_HEAD = struct.Struct(">I")
_BODY = struct.Struct(">Q")
MAX_HEADER = 64 * 1024


class ChildGone(EvaluationError):
    """The child closed its pipe (it crashed or was killed)."""


class TimedOut(EvaluationError):
    """The child did not answer before the deadline."""


def write_frame(fd: int, header: dict[str, Any], payload: bytes = b"") -> None:
    """Write one frame to ``fd`` (blocking)."""
    head = json.dumps(header, separators=(",", ":")).encode()
    _write_all(fd, _HEAD.pack(len(head)) + head + _BODY.pack(len(payload)))
    if payload:
        _write_all(fd, payload)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BrokenPipeError:
            raise ChildGone("the evaluation process is gone (broken pipe)") from None
        view = view[n:]


def read_frame(fd: int, *, max_payload: int, deadline: float | None = None) -> tuple[dict[str, Any], bytes]:
    """Read one frame from ``fd``; refuse sizes above the bounds; raise :class:`TimedOut` past ``deadline``."""
    (hlen,) = _HEAD.unpack(_read_exact(fd, _HEAD.size, deadline))
    if hlen > MAX_HEADER:
        raise EvaluationError(f"the evaluation process sent a {hlen}-byte header (limit {MAX_HEADER})")
    try:
        header = json.loads(_read_exact(fd, hlen, deadline))
    except ValueError as exc:
        raise EvaluationError(f"the evaluation process sent an unreadable header: {exc}") from None
    if not isinstance(header, dict):
        raise EvaluationError("the evaluation process sent a header that is not an object")
    (plen,) = _BODY.unpack(_read_exact(fd, _BODY.size, deadline))
    if plen > max_payload:
        raise EvaluationError(f"the evaluation process sent a {plen}-byte payload (limit {max_payload})")
    return header, _read_exact(fd, plen, deadline) if plen else b""


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    parts, left = [], n
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimedOut("the evaluation process did not answer in time")
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise ChildGone("the evaluation process exited")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)
