"""Content addresses: every blob, section and payload is named by its sha256.

A digest travels as ``"sha256:<64 lowercase hex digits>"``.  Digests arrive
in job records and receipts written by others, so :func:`check_digest`
validates one before it becomes a file name or a key (no path traversal, no
key injection).
"""

from __future__ import annotations

import hashlib
import re

from ..errors import FormatError

_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


def sha256_hex(data: bytes) -> str:
    """Return the lowercase hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def digest_of(data: bytes) -> str:
    """The name of ``data`` in any blob store: ``"sha256:<hex>"``."""
    return "sha256:" + sha256_hex(data)


def check_digest(digest: object) -> str:
    """Return the hex part of a well-formed digest; raise :class:`FormatError` otherwise."""
    m = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if m is None:
        raise FormatError(f"{str(digest)[:80]!r} is not a blob digest: expected 'sha256:' and 64 lowercase hex digits")
    return m.group(1)


def is_digest(value: object) -> bool:
    """Whether ``value`` is a well-formed digest string."""
    return isinstance(value, str) and _DIGEST.fullmatch(value) is not None
