"""Blob transfer through the coordinator: streamed both ways, checked on arrival, or handed to S3 by presigned URL.

No blob is ever held whole in the coordinator's memory (evaluation keys run to
hundreds of MB).  An upload is streamed into a temporary file under the data
directory while it is hashed and counted; past its size cap it is cut off
(:class:`~he_compute.errors.LimitExceeded`), and a body that does not hash to
the digest it was announced under is thrown away
(:class:`~he_compute.errors.IntegrityError`); only then does the store adopt
it.  A download is streamed from the store (a file, or Redis chunk by chunk);
the receiver checks the digest.

With an ``s3://`` store the coordinator does not carry bytes at all: a reader
gets a presigned GET URL for that one object, valid for a few minutes; a writer
gets a presigned PUT URL for a fresh staging object, and on commit the
coordinator hashes the staged object before copying it to its content address.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

from anyio import to_thread

from ..errors import BlobNotFound, IntegrityError, LimitExceeded, StoreError
from ..formats.digests import check_digest
from ..transport.blobs import BlobStore
from .kv import KV

PRESIGN_S = 300
"""How long a presigned URL works."""


class Blobs:
    """The coordinator's view of its blob store: streaming reads and writes, presigned URLs for S3."""

    def __init__(self, store: BlobStore, incoming: Path, kv: KV, *, presign_s: int = PRESIGN_S):
        self.store, self.kv, self.presign_s = store, kv, presign_s
        self.incoming = Path(incoming)
        self.incoming.mkdir(parents=True, exist_ok=True)
        os.chmod(self.incoming, 0o700)

    @property
    def presigned(self) -> bool:
        """Whether bytes travel by presigned URL (S3) instead of through the coordinator."""
        return hasattr(self.store, "presigned_get")

    def exists(self, digest: str) -> bool:
        """Whether the store holds ``digest``."""
        return self.store.exists(digest)

    def read(self, digest: str) -> tuple[str, Any]:
        """How to send ``digest``: ``("url", presigned)``, ``("path", file)`` or ``("chunks", iterator)``."""
        check_digest(digest)
        if not self.store.exists(digest):
            raise BlobNotFound(f"blob {digest[:19]} is not in the store")
        if self.presigned:
            return "url", self.store.presigned_get(digest, self.presign_s)  # type: ignore[attr-defined]
        if hasattr(self.store, "path"):
            return "path", self.store.path(digest)
        if hasattr(self.store, "chunks"):
            return "chunks", self.store.chunks(digest)
        return "chunks", iter([self.store.get(digest)])

    async def receive(self, digest: str, body: AsyncIterator[bytes], limit: int) -> int:
        """Stream ``body`` into the store as ``digest``: at most ``limit`` bytes, and only if it hashes to ``digest``.

        Returns the size.  Nothing reaches the store unless both checks pass.
        """
        check_digest(digest)
        fd, tmp = tempfile.mkstemp(prefix="upload-", dir=self.incoming)
        h, n = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as fh:
                async for chunk in body:
                    n += len(chunk)
                    if n > limit:
                        raise LimitExceeded(f"upload of {digest[:19]} is over its {limit}-byte cap: refused")
                    h.update(chunk)
                    fh.write(chunk)
            if "sha256:" + h.hexdigest() != digest:
                raise IntegrityError(f"the uploaded bytes do not hash to {digest[:19]}: refused (nothing stored)")
            if not await to_thread.run_sync(self.store.exists, digest):
                await to_thread.run_sync(self._adopt, digest, Path(tmp))
            return n
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _adopt(self, digest: str, path: Path) -> None:
        if hasattr(self.store, "adopt"):
            self.store.adopt(digest, path)
            return
        raise StoreError(f"the blob store {self.store.url} cannot take streamed uploads")

    # -- S3: presigned staging uploads -------------------------------------------------------------------------

    def stage(self, who: str, digest: str, size: int) -> dict[str, Any]:
        """A presigned PUT for a fresh staging object that ``who`` may later commit as ``digest``."""
        check_digest(digest)
        name = uuid.uuid4().hex
        self.kv.hset("staging", {name: json.dumps({"who": who, "digest": digest, "size": int(size),
                                                   "until": time.time() + self.presign_s})})
        url = self.store.presigned_staging_put(name, size, self.presign_s)  # type: ignore[attr-defined]
        return {"url": url, "staging": name, "headers": {"content-length": str(int(size))}}

    def commit(self, who: str, name: str, digest: str) -> int:
        """Hash the staging object ``name`` (streamed from S3); copy it to ``digest`` if it matches. Returns its size."""
        raw = self.kv.hget("staging", name) if isinstance(name, str) and len(name) == 32 else None
        ticket = json.loads(raw) if raw else None
        if ticket is None or ticket["who"] != who or ticket["digest"] != digest:
            raise BlobNotFound("no such upload for this caller: ask for a new upload URL")
        self.kv.hdel("staging", name)
        size, chunks = self.store.staged(name)  # type: ignore[attr-defined]
        try:
            if size != ticket["size"]:
                raise LimitExceeded(f"the upload holds {size} bytes, {ticket['size']} were announced: refused")
            h = hashlib.sha256()
            for chunk in chunks:
                h.update(chunk)
            if "sha256:" + h.hexdigest() != digest:
                raise IntegrityError(f"the uploaded bytes do not hash to {digest[:19]}: refused (nothing stored)")
            self.store.promote(name, digest)  # type: ignore[attr-defined]
        except BaseException:
            self.store.drop_staged(name)  # type: ignore[attr-defined]
            raise
        return size


def file_chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    """A file's bytes in ``size`` pieces."""
    with open(path, "rb") as fh:
        while chunk := fh.read(size):
            yield chunk
