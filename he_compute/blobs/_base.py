"""The BlobStore Protocol and the digest helpers every engine shares."""

from __future__ import annotations

import re
from typing import Protocol, runtime_checkable

from ..container import sha256_hex
from ..errors import IntegrityError, QueueError

_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


class BlobNotFound(QueueError):
    """No blob with this digest is in the store."""


def digest_of(data: bytes) -> str:
    """The name of ``data`` in any blob store: ``"sha256:<hex>"``."""
    return "sha256:" + sha256_hex(data)


def check_digest(digest: str) -> str:
    """Return the hex part of a well-formed digest; raise :class:`QueueError` otherwise.

    Digests come from job JSON written by others, so they are validated before
    they become file names or keys (no path traversal, no key injection).
    """
    m = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if m is None:
        raise QueueError(f"{str(digest)[:80]!r} is not a blob digest: expected 'sha256:' and 64 lowercase hex digits")
    return m.group(1)


def verified(digest: str, data: bytes, where: str) -> bytes:
    """Return ``data`` if it hashes to ``digest``; raise :class:`IntegrityError` otherwise."""
    if digest_of(data) != digest:
        raise IntegrityError(f"blob {digest[:19]} in {where} does not match its digest (tampered or damaged): "
                             "delete it and upload it again")
    return data


@runtime_checkable
class BlobStore(Protocol):
    """A content-addressed, write-once store of byte strings.

    Example::

        digest = store.put(data); data == store.get(digest); store.exists(digest)
    """

    url: str

    def put(self, data: bytes) -> str:
        """Store ``data`` (atomically, once) and return its digest ``"sha256:<hex>"``."""
        ...

    def get(self, digest: str) -> bytes:
        """Return the bytes named ``digest``, verified; :class:`BlobNotFound` if absent."""
        ...

    def exists(self, digest: str) -> bool:
        """Whether the store holds ``digest`` (used to skip uploads)."""
        ...

    def delete(self, digest: str) -> None:
        """Remove ``digest`` if present (garbage collection; blobs are never overwritten)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
