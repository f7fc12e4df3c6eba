"""``file://`` blobs: one file per blob under ``DIR/ab/<hex>``, written by temp file + fsync + rename.

Reads trust nothing on disk: every path component below the root is opened without following links, the
blob must be a regular file no larger than the store's limit (checked before reading, so a link to
``/dev/zero`` or a FIFO neither hangs nor fills memory), and a blob that fails its digest is removed so that
the next upload repairs it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterator

from ...errors import BlobNotFound, IntegrityError, LimitExceeded, StoreError
from ...files import atomic_write
from ...formats.digests import check_digest, digest_of
from .._closing import Closing
from ..locations import path_of
from .base import max_blob_bytes, verified

_NOFOLLOW = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class FileBlobStore(Closing):
    """Blobs as files; safe for several processes and for a shared filesystem (rename is atomic).

    Example::

        store = FileBlobStore(Path(".hec/blobs")); store.put(b"x")
    """

    def __init__(self, root: Path, *, max_bytes: int | None = None):
        self.root = Path(root)
        self.url = f"file://{self.root}"
        self.max_bytes = max_bytes or max_blob_bytes()
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
        """Write the blob unless a regular file is already there (same name, same bytes; a damaged one is
        removed by the read that finds it)."""
        digest = digest_of(data)
        path = self._path(digest)
        if not self.exists(digest):
            try:
                if path.is_symlink() or (path.exists() and not path.is_file()):
                    path.unlink()
                if path.parent.is_symlink():
                    raise StoreError(f"{path.parent} is a link, not a directory of {self.url}: remove it")
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
        """Read a blob without following links, bounded by the store's limit, and verify it."""
        hexd = check_digest(digest)
        try:
            root = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise StoreError(f"cannot open blob directory {self.root}: {exc.strerror}") from exc
        try:
            data = self._read(root, hexd, digest)
        finally:
            os.close(root)
        try:
            return verified(digest, data, self.url)
        except IntegrityError:
            self.delete(digest)
            raise

    def _read(self, root: int, hexd: str, digest: str) -> bytes:
        try:
            sub = os.open(hexd[:2], os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW, dir_fd=root)
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest[:19]} is not in {self.url}: upload it again (hec run does)") from None
        except OSError:
            raise IntegrityError(f"{self.root / hexd[:2]} is not a regular directory (a link?): blob "
                                 f"{digest[:19]} refused; remove it") from None
        try:
            try:
                fd = os.open(hexd, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW, dir_fd=sub)
            except FileNotFoundError:
                raise BlobNotFound(f"blob {digest[:19]} is not in {self.url}: upload it again (hec run does)") from None
            except OSError as exc:  # ELOOP: the name is a link
                self.delete(digest)
                raise IntegrityError(f"blob {digest[:19]} in {self.url} is not a regular file ({exc.strerror}): "
                                     "removed; upload it again") from None
        finally:
            os.close(sub)
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode):
                self.delete(digest)
                raise IntegrityError(f"blob {digest[:19]} in {self.url} is not a regular file: removed; "
                                     "upload it again")
            if info.st_size > self.max_bytes:
                raise LimitExceeded(f"blob {digest[:19]} is {info.st_size} bytes, larger than this store's limit of "
                                    f"{self.max_bytes} (HEC_MAX_BLOB_MB)")
            return fh.read(self.max_bytes + 1)

    def exists(self, digest: str) -> bool:
        """Whether a regular blob file is present (its content is checked on read)."""
        path = self._path(digest)
        try:
            return stat.S_ISREG(os.lstat(path).st_mode) and not path.parent.is_symlink()
        except OSError:
            return False

    def delete(self, digest: str) -> None:
        """Remove the blob's name if present (a file, a link or a FIFO)."""
        try:
            os.unlink(self._path(digest))
        except (FileNotFoundError, IsADirectoryError, PermissionError):
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
