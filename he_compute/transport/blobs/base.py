"""The BlobStore Protocol and the check every engine runs on what it reads."""

from __future__ import annotations

from typing import Protocol, Self, runtime_checkable

from ... import settings
from ...errors import IntegrityError
from ...formats.digests import digest_of

def max_blob_bytes() -> int:
    """The largest blob a store reads (``HEC_MAX_BLOB_MB``): evaluation keys of a big TFHE circuit are a few
    hundred MB; anything larger is refused before it is read into memory."""
    return int(settings.get("HEC_MAX_BLOB_MB")) << 20


def verified(digest: str, data: bytes, where: str) -> bytes:
    """Return ``data`` if it hashes to ``digest``; raise :class:`IntegrityError` otherwise."""
    if digest_of(data) != digest:
        raise IntegrityError(f"blob {digest[:19]} in {where} does not match its digest (tampered or damaged): "
                             "delete it and upload it again")
    return data


@runtime_checkable
class BlobStore(Protocol):
    """A content-addressed store of byte strings; every engine is a context manager.

    Example::

        digest = store.put(data); data == store.get(digest); store.exists(digest)
    """

    url: str

    def put(self, data: bytes) -> str:
        """Store ``data`` (atomically) and return its digest ``"sha256:<hex>"``."""
        ...

    def get(self, digest: str) -> bytes:
        """Return the bytes named ``digest``, verified; :class:`~he_compute.errors.BlobNotFound` if absent."""
        ...

    def exists(self, digest: str) -> bool:
        """Whether the store holds ``digest`` (used to skip uploads)."""
        ...

    def delete(self, digest: str) -> None:
        """Remove ``digest`` if present (garbage collection, repair of a damaged blob)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...

    def __enter__(self) -> Self:
        ...

    def __exit__(self, *exc: object) -> None:
        """Close."""
        ...
