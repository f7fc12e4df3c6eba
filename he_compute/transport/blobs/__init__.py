"""Content-addressed blob stores: where bundles' server parts, evaluation keys and ciphertexts travel.

A blob is named by the sha256 of its bytes, written as ``"sha256:<hex>"``
(:mod:`he_compute.formats.digests`).  Stores are write-once for honest
writers (putting the same bytes twice is a no-op), writes are atomic (a reader
never sees half a blob), every read is checked against the digest that names
it and bounded in size, so a tampered or damaged store raises
:class:`~he_compute.errors.IntegrityError` instead of returning wrong bytes.

Engines, picked by URL (heavy clients are imported only by their engine)::

    file:///abs/dir  or  file://rel/dir   one file per blob (default; also a shared filesystem)
    redis://host:port/db                  chunked strings in Redis, for one-server deployments
    s3://bucket/prefix[?endpoint_url=..]  one object per blob, via boto3

Example::

    from he_compute.transport import blobs
    with blobs.connect("file://.hec/blobs") as store:
        digest = store.put(b"ciphertext bytes")      # "sha256:..."
        assert store.get(digest) == b"ciphertext bytes"
"""

from __future__ import annotations

from ...errors import StoreError
from ..locations import is_redis, scheme_of
from .base import BlobStore, max_blob_bytes, verified

__all__ = ["BlobStore", "connect", "max_blob_bytes", "verified"]


def connect(url: str) -> BlobStore:
    """Open the blob store at ``url``.

    Raises :class:`~he_compute.errors.StoreError` for an unknown scheme or an unreachable store.

    Example::

        store = blobs.connect("redis://127.0.0.1:6379/0")
    """
    scheme = scheme_of(url)
    if scheme == "file":
        from .file import FileBlobStore

        return FileBlobStore.from_url(url)
    if is_redis(url):
        from .redis import RedisBlobStore

        return RedisBlobStore.from_url(url)
    if scheme == "s3":
        from .s3 import S3BlobStore

        return S3BlobStore.from_url(url)
    raise StoreError(f"unknown blob store URL {url!r}: use file://DIR, redis://HOST:PORT/DB or s3://BUCKET/PREFIX")
