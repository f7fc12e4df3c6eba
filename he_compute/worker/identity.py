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
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..files import atomic_write
from ..formats.signing import SigningKey, public_key_line, short_id

PRIVATE_FILE = "worker.key"
"""The private key inside a worker's state directory (PKCS#8 PEM, mode 0600)."""
PUBLIC_FILE = "worker.pub"
"""The public key inside a worker's state directory, as one allow-list line."""
STATE_ENV = "HEC_WORKER_STATE"
"""Environment variable naming a worker's state directory when ``--state`` is not given."""


class WorkerIdentity:
    """A worker's signing key.  Build it with :meth:`load_or_create` (or :meth:`generate` for a throwaway one)."""

    def __init__(self, key: SigningKey | Ed25519PrivateKey):
        self._key = key if isinstance(key, SigningKey) else SigningKey(key)
        self.public_raw: bytes = self._key.public_raw
        self.worker_id: str = self._key.key_id

    @classmethod
    def generate(cls) -> WorkerIdentity:
        """A fresh identity kept only in memory (for workers started for one run, and tests)."""
        return cls(SigningKey.generate())

    @classmethod
    def load_or_create(cls, state_dir: str | os.PathLike[str]) -> WorkerIdentity:
        """Load the identity in ``state_dir``, creating the directory (0700) and key (0600) on first start."""
        key, created = SigningKey.load_or_create(state_dir, PRIVATE_FILE)
        me = cls(key)
        if created or not (Path(state_dir) / PUBLIC_FILE).exists():
            atomic_write(Path(state_dir) / PUBLIC_FILE,
                         (public_key_line(me.public_raw, f"worker {me.short_id}") + "\n").encode())
        return me

    @classmethod
    def load(cls, state_dir: str | os.PathLike[str]) -> WorkerIdentity:
        """Load an existing identity; refuse a key file that group or others can read (like ssh does)."""
        return cls(SigningKey.load(Path(state_dir) / PRIVATE_FILE))

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
