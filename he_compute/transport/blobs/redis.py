"""``redis://`` blobs: chunked strings, published by one final ``SET NX`` so readers never see half a blob.

Layout: ``hec:blob:<hex>:<i>`` holds chunk ``i``; ``hec:blob:<hex>`` holds the
chunk count, written last and only once.  Redis strings stop at 512 MB, and
big values stall the server, hence the chunks.  Whoever can write to the server
can lie about both, so a read checks the count and every chunk's length against
the store's limit before it fetches a byte, and removes a blob that fails its
digest so that the next upload repairs it.
"""

from __future__ import annotations

from typing import Any

from ...errors import BlobNotFound, IntegrityError, LimitExceeded, StoreError
from ...formats.digests import check_digest, digest_of
from .._closing import Closing
from ..locations import redis_key
from .base import max_blob_bytes, verified

CHUNK = 4 * 1024 * 1024
"""Bytes per Redis string; evaluation keys (tens of MB) span several chunks."""


def _key(hexd: str, i: int | None = None) -> str:
    return redis_key("blob", hexd, i)


class RedisBlobStore(Closing):
    """Blobs in Redis.

    Example::

        store = RedisBlobStore.from_url("redis://127.0.0.1:6379/0"); store.put(b"x")
    """

    def __init__(self, client: Any, url: str, *, max_bytes: int | None = None):
        self._r = client
        self.url = url
        self.max_bytes = max_bytes or max_blob_bytes()

    @classmethod
    def from_url(cls, url: str) -> RedisBlobStore:
        """Connect lazily (redis-py is imported here, not at package import)."""
        import redis

        return cls(redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30), url)

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        import redis

        try:
            return fn(*args)
        except redis.RedisError as exc:
            raise StoreError(f"blob store {self.url}: {what} failed ({exc}): is Redis running?") from exc

    def put(self, data: bytes) -> str:
        """Write the chunks, then publish the count with ``SET NX`` (write-once)."""
        digest = digest_of(data)
        hexd = check_digest(digest)
        if self.exists(digest):
            return digest
        n = max(1, -(-len(data) // CHUNK))

        def write() -> None:
            pipe = self._r.pipeline(transaction=False)
            for i in range(n):
                pipe.set(_key(hexd, i), bytes(data[i * CHUNK : (i + 1) * CHUNK]))
            pipe.execute()
            self._r.set(_key(hexd), n, nx=True)

        self._call("put", write)
        return digest

    def adopt(self, digest: str, src: Any) -> None:
        """Copy the file ``src``, whose sha256 the caller has checked is ``digest``, chunk by chunk (never whole)."""
        hexd = check_digest(digest)
        if self.exists(digest):
            return
        n = 0
        with open(src, "rb") as fh:
            while (chunk := fh.read(CHUNK)) or n == 0:
                self._call("put", self._r.set, _key(hexd, n), chunk)
                n += 1
                if not chunk:
                    break
        self._call("put", lambda: self._r.set(_key(hexd), n, nx=True))  # _call passes no keywords

    def chunks(self, digest: str) -> Any:
        """The blob's bytes chunk by chunk, unverified (the receiver checks the digest); ``BlobNotFound`` if absent."""
        hexd = check_digest(digest)
        n = self._call("get", self._r.get, _key(hexd))
        if n is None:
            raise BlobNotFound(f"blob {digest[:19]} is not in {self.url}: upload it again (hec run does)")

        def gen() -> Any:
            for i in range(int(n)):
                yield self._call("get", self._r.get, _key(hexd, i)) or b""

        return gen()

    def get(self, digest: str) -> bytes:
        """Check the chunk count and lengths against the limit, read the chunks, verify the digest."""
        hexd = check_digest(digest)
        raw = self._call("get", self._r.get, _key(hexd))
        if raw is None:
            raise BlobNotFound(f"blob {digest[:19]} is not in {self.url}: upload it again (hec run does)")
        try:
            n = int(raw)
        except ValueError:
            self.delete(digest)
            raise IntegrityError(f"blob {digest[:19]} in {self.url} has an unreadable chunk count: removed; "
                                 "upload it again") from None
        most = max(1, -(-self.max_bytes // CHUNK))
        if not 1 <= n <= most:
            raise LimitExceeded(f"blob {digest[:19]} claims {n} chunks; this store's limit of {self.max_bytes} "
                                f"bytes allows {most} (HEC_MAX_BLOB_MB)")
        pipe = self._r.pipeline(transaction=False)
        for i in range(n):
            pipe.strlen(_key(hexd, i))
        total = sum(self._call("get", pipe.execute))
        if total > self.max_bytes:
            raise LimitExceeded(f"blob {digest[:19]} is {total} bytes, larger than this store's limit of "
                                f"{self.max_bytes} (HEC_MAX_BLOB_MB)")
        parts = self._call("get", self._r.mget, [_key(hexd, i) for i in range(n)])
        try:
            return verified(digest, b"".join(p or b"" for p in parts), self.url)
        except IntegrityError:
            self.delete(digest)
            raise

    def exists(self, digest: str) -> bool:
        """Whether the blob has been published."""
        return bool(self._call("exists", self._r.exists, _key(check_digest(digest))))

    def delete(self, digest: str) -> None:
        """Unpublish first, then drop the chunks (found by pattern: the stored count may be a lie)."""
        hexd = check_digest(digest)
        self._call("delete", self._r.delete, _key(hexd))
        chunks = list(self._call("delete", self._r.scan_iter, f"{_key(hexd)}:*", 1000))
        if chunks:
            self._call("delete", self._r.delete, *chunks)

    def close(self) -> None:
        """Close the connection pool."""
        self._r.close()
