"""Writing files so that nobody ever sees half of one, and nobody else can read what is private.

Every artefact he_compute writes goes through :func:`atomic_write`: a temporary
file in the same directory, written, fsynced, given its final mode, renamed over
the target, and the directory fsynced so that the rename itself survives a
crash.  Modes are *upper bounds*: the process umask is honoured, never widened,
so ``umask 077`` keeps even public artefacts private.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PRIVATE = 0o600
"""Mode of secret keys and of files holding decrypted data."""
PUBLIC = 0o644
"""Mode of artefacts that are safe to share (bundles, ciphertexts, evaluation keys)."""


def _umask() -> int:
    # os.umask can only be read by setting it; the window is a few instructions in this process.
    current = os.umask(0o077)
    os.umask(current)
    return current


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Flush a directory entry (a rename or a new file) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes | list[bytes], mode: int = PUBLIC) -> None:
    """Write ``data`` (or its parts, one after the other) to ``path`` via a temp file, fsync, rename and
    directory fsync.

    ``mode`` is the widest mode the file gets; the umask narrows it further.
    The temporary file is created 0600, so the data is never readable by others
    while it is being written.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            for part in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
                fh.write(part)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) if needed and make it 0700."""
    p = Path(path)
    p.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(p, 0o700)
    return p
