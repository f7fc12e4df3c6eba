"""A worker's identity: its Ed25519 signing key, kept in its state directory.

A worker creates its key pair on first start in its state directory (mode
0700) as ``worker.key`` (PKCS#8 PEM, mode 0600, never pickled) and
``worker.pub`` (one allow-list line, see :mod:`he_compute.formats.signing`).
Processes sharing one state directory share one identity, which is right:
they are one machine and one trust domain, so they never count as two
independent replicas.

Example::

    me = WorkerIdentity.load_or_create("/var/lib/hec-worker")
    me.public_line()        # 'ed25519 <base64> ...': what a client puts on its allow-list
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..errors import IdentityError
from ..files import PRIVATE, atomic_write
from ..formats.signing import fingerprint, public_key_line, short_id

PRIVATE_FILE = "worker.key"
"""The private key inside a worker's state directory (PKCS#8 PEM, mode 0600)."""
PUBLIC_FILE = "worker.pub"
"""The public key inside a worker's state directory, as one allow-list line."""
STATE_ENV = "HEC_WORKER_STATE"
"""Environment variable naming a worker's state directory when ``--state`` is not given."""


class WorkerIdentity:
    """A worker's signing key.  Build it with :meth:`load_or_create` (or :meth:`generate` for a throwaway one)."""

    def __init__(self, private_key: Ed25519PrivateKey):
        if not isinstance(private_key, Ed25519PrivateKey):
            raise TypeError("WorkerIdentity needs an Ed25519PrivateKey")
        self._key = private_key
        self.public_raw: bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.worker_id: str = fingerprint(self.public_raw)

    @classmethod
    def generate(cls) -> WorkerIdentity:
        """A fresh identity kept only in memory (for workers started for one run, and tests)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, state_dir: str | os.PathLike[str]) -> WorkerIdentity:
        """Load the identity in ``state_dir``, creating the directory (0700) and key (0600) on first start."""
        path = Path(state_dir)
        if (path / PRIVATE_FILE).exists():
            return cls.load(path)
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(path, 0o700)
        except OSError as exc:
            raise IdentityError(f"cannot create worker state directory {path}: {exc.strerror}") from exc
        me = cls.generate()
        pem = me._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        atomic_write(path / PRIVATE_FILE, pem, PRIVATE)
        atomic_write(path / PUBLIC_FILE, (public_key_line(me.public_raw, f"worker {me.short_id}") + "\n").encode())
        return me

    @classmethod
    def load(cls, state_dir: str | os.PathLike[str]) -> WorkerIdentity:
        """Load an existing identity; refuse a key file that group or others can read (like ssh does)."""
        file = Path(state_dir) / PRIVATE_FILE
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
            data = file.read_bytes()
        except OSError as exc:
            raise IdentityError(f"cannot read worker key {file}: {exc.strerror}") from exc
        if mode & 0o077:
            raise IdentityError(f"worker key {file} is readable by others (mode {mode:04o}): chmod 600 it")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise IdentityError(f"worker key {file} is not a PEM Ed25519 private key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise IdentityError(f"worker key {file} is not an Ed25519 key")
        return cls(key)

    @property
    def short_id(self) -> str:
        """The 16-hex-digit worker id shown in messages."""
        return short_id(self.worker_id)

    def public_line(self, comment: str = "") -> str:
        """This worker's allow-list line."""
        return public_key_line(self.public_raw, comment)

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature of ``data``."""
        return self._key.sign(data)

    def __repr__(self) -> str:  # never show key material
        return f"WorkerIdentity({self.short_id})"


