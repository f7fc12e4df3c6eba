"""``file://`` blobs: one file per blob under ``DIR/ab/<hex>``, written by temp file + fsync + rename."""

from __future__ import annotations

import os
from pathlib import Path

from ...files import atomic_write
from ...errors import BlobNotFound, StoreError
from ...formats.digests import check_digest, digest_of
from .._closing import Closing
from ..locations import path_of
from .base import verified


class FileBlobStore(Closing):
    """Blobs as files; safe for several processes and for a shared filesystem (rename is atomic).

    Example::

        store = FileBlobStore(Path(".hec/blobs")); store.put(b"x")
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.url = f"file://{self.root}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create blob directory {self.root}: {exc.strerror}") from exc

    @classmethod
    def from_url(cls, url: str) -> FileBlobStore:
        """Open the store a ``file://`` URL names."""
        return cls(path_of(url))

    def _path(self, digest: str) -> Path:
        hexd = check_digest(digest)
        return self.root / hexd[:2] / hexd

    def put(self, data: bytes) -> str:
        """Write once: an existing blob is left alone (same name, same bytes)."""
        digest = digest_of(data)
        path = self._path(digest)
        if not path.exists():
            try:
                atomic_write(path, bytes(data), 0o644)
            except OSError as exc:
                raise StoreError(f"cannot write blob to {self.root}: {exc.strerror}") from exc
        return digest

    def path(self, digest: str) -> Path:
        """The file that holds ``digest`` (streaming readers use it; the content is checked by whoever reads it)."""
        return self._path(digest)

    def adopt(self, digest: str, src: Path) -> None:
        """Move the file ``src``, whose sha256 the caller has checked is ``digest``, into the store (same filesystem)."""
        path = self._path(digest)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(src, 0o644)
            os.replace(src, path)
        except OSError as exc:
            raise StoreError(f"cannot write blob to {self.root}: {exc.strerror}") from exc

    def get(self, digest: str) -> bytes:
        """Read and verify a blob."""
        path = self._path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest[:19]} is not in {self.url}: upload it again (hec run does)") from None
        except OSError as exc:
            raise StoreError(f"cannot read blob {digest[:19]} from {self.root}: {exc.strerror}") from exc
        return verified(digest, data, self.url)

    def exists(self, digest: str) -> bool:
        """Whether the blob file is present (its content is checked on read)."""
        return self._path(digest).is_file()

    def delete(self, digest: str) -> None:
        """Remove the blob file if present."""
        try:
            os.unlink(self._path(digest))
        except FileNotFoundError:
            pass

    def close(self) -> None:
        """Nothing to release."""
