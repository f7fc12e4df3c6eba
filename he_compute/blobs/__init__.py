"""Content-addressed blob stores: where bundles' server parts, evaluation keys and ciphertexts travel.

A blob is named by the sha256 of its bytes, written as ``"sha256:<hex>"``.
Stores are write-once (putting the same bytes twice is a no-op), writes are
atomic (a reader never sees half a blob) and every read is checked against the
digest that names it, so a tampered or damaged store raises
:class:`~he_compute.errors.IntegrityError` instead of returning wrong bytes.

Engines, picked by URL (heavy clients are imported only by their engine)::

    file:///abs/dir  or  file://rel/dir   one file per blob (default; also a shared filesystem)
    redis://host:port/db                  chunked strings in Redis, for one-server deployments
    s3://bucket/prefix[?endpoint_url=..]  one object per blob, via boto3

Example::

    from he_compute import blobs
    store = blobs.connect("file://.hec/blobs")
    digest = store.put(b"ciphertext bytes")      # "sha256:..."
    assert store.get(digest) == b"ciphertext bytes"
"""

from __future__ import annotations

from ._base import BlobNotFound, BlobStore, check_digest, digest_of, verified

__all__ = ["DEFAULT_URL", "BlobNotFound", "BlobStore", "check_digest", "connect", "digest_of", "for_queue", "verified"]

DEFAULT_URL = "file://.hec/blobs"
"""Where blobs go when no URL is given: ``./.hec/blobs`` next to the embedded queue."""


def for_queue(queue_url: str) -> str:
    """The blob store that goes with a queue when none is named.

    Next to an embedded queue: ``sqlite://DIR/queue.db`` -> ``file://DIR/blobs``.  With Redis, the same
    server (remote workers cannot see the client's disk).

    Example::

        blobs.for_queue("sqlite://.hec/queue.db")  # "file://.hec/blobs"
    """
    import os

    base = queue_url.split("?", 1)[0]
    if base.startswith("sqlite://"):
        return "file://" + os.path.join(os.path.dirname(base[len("sqlite://"):]) or ".", "blobs")
    if base.startswith(("redis://", "rediss://", "unix://")):
        return base
    return DEFAULT_URL


def connect(url: str | None = None) -> BlobStore:
    """Open the blob store at ``url`` (default :data:`DEFAULT_URL`).

    Raises :class:`~he_compute.errors.QueueError` for an unknown scheme or an
    unreachable store.

    Example::

        store = blobs.connect("redis://127.0.0.1:6379/0")
    """
    from ..errors import QueueError

    url = url or DEFAULT_URL
    scheme = url.split("://", 1)[0] if "://" in url else "file"
    if scheme == "file":
        from ._file import FileBlobStore

        return FileBlobStore.from_url(url)
    if scheme in ("redis", "rediss", "unix"):
        from ._redis import RedisBlobStore

        return RedisBlobStore.from_url(url)
    if scheme == "s3":
        from ._s3 import S3BlobStore

        return S3BlobStore.from_url(url)
    raise QueueError(f"unknown blob store URL {url!r}: use file://DIR, redis://HOST:PORT/DB or s3://BUCKET/PREFIX")
