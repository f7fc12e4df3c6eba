"""``file://`` blobs: one file per blob under ``DIR/ab/<hex>``, written by temp file + fsync + rename."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

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

    def listing(self) -> Iterator[tuple[str, int, float]]:
        """``(digest, size, mtime)`` of every blob file (for ``hec gc``'s sweep of unreferenced blobs)."""
        for path in self.root.glob("[0-9a-f][0-9a-f]/*"):
            name = path.name
            if len(name) == 64 and name[:2] == path.parent.name and not name.startswith("."):
                try:
                    st = path.stat()
                except FileNotFoundError:  # deleted meanwhile
                    continue
                yield f"sha256:{name}", st.st_size, st.st_mtime

    def close(self) -> None:
        """Nothing to release."""
