"""Ed25519 keys: worker ids, allow-list lines, signature checks, and key files kept in private directories.

A *worker id* is the sha256 of a raw 32-byte Ed25519 public key, in hex;
:func:`short_id` (16 hex digits) is what messages show.  An allow-list line
reads ``ed25519 <base64 raw key> [comment]``.  :class:`SigningKey` is a private
key in a file (PKCS#8 PEM, 0600, in a 0700 directory, never pickled) that both
parties use: a worker to sign receipts (:mod:`he_compute.worker.identity`), a
client to sign audit checkpoints.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import FormatError, IdentityError, ReceiptError
from ..files import PRIVATE, atomic_write, private_dir

KEY_TYPE = "ed25519"


def fingerprint(public_raw: bytes) -> str:
    """The worker id of a raw Ed25519 public key: sha256 hex of its 32 bytes."""
    if not isinstance(public_raw, bytes) or len(public_raw) != 32:
        raise FormatError("an Ed25519 public key is 32 raw bytes")
    return hashlib.sha256(public_raw).hexdigest()


def short_id(worker_id: str) -> str:
    """The 16-hex-digit form of a worker id that messages show."""
    return worker_id[:16]


def public_key_line(public_raw: bytes, comment: str = "") -> str:
    """One allow-list line for ``public_raw``: ``ed25519 <base64> [comment]``."""
    line = f"{KEY_TYPE} {base64.b64encode(public_raw).decode()}"
    return f"{line} {comment}".rstrip() if comment else line


def parse_public_key(text: str) -> bytes:
    """The raw public key of one allow-list line (or a bare base64 key); :class:`IdentityError` if unreadable."""
    parts = text.strip().split()
    if parts and parts[0] == KEY_TYPE:
        parts = parts[1:]
    if not parts:
        raise IdentityError(f"{text.strip()[:60]!r} is not a worker public key: expected 'ed25519 <base64>'")
    try:
        raw = base64.b64decode(parts[0], validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise IdentityError(f"{parts[0][:60]!r} is not a base64 Ed25519 public key (32 bytes)")
    return raw


def verify_signature(public_raw: bytes, signature: bytes, data: bytes) -> None:
    """Raise :class:`ReceiptError` unless ``signature`` is ``public_raw``'s Ed25519 signature of ``data``."""
    try:
        Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, data)
    except (InvalidSignature, ValueError):
        raise ReceiptError(f"bad signature from worker {short_id(fingerprint(public_raw))}",
                           short_id(fingerprint(public_raw))) from None


class SigningKey:
    """An Ed25519 private key, kept in ``DIR/NAME`` (PKCS#8 PEM, 0600; ``DIR`` 0700).

    Example::

        key = SigningKey.load_or_create("/var/lib/hec-worker", "worker.key")
        signature = key.sign(b"...")
    """

    def __init__(self, private_key: Ed25519PrivateKey):
        if not isinstance(private_key, Ed25519PrivateKey):
            raise TypeError("SigningKey needs an Ed25519PrivateKey")
        self._key = private_key
        self.public_raw: bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key_id: str = fingerprint(self.public_raw)

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh key kept only in memory."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, directory: str | os.PathLike[str], name: str) -> tuple[SigningKey, bool]:
        """Load ``directory/name``, or create it (and the 0700 directory) on first use; ``True`` when created."""
        path = Path(directory)
        if (path / name).exists():
            return cls.load(path / name), False
        try:
            private_dir(path)
        except OSError as exc:
            raise IdentityError(f"cannot create key directory {path}: {exc.strerror}") from exc
        key = cls.generate()
        pem = key._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
        atomic_write(path / name, pem, PRIVATE)
        return key, True

    @classmethod
    def load(cls, file: str | os.PathLike[str]) -> SigningKey:
        """Load a key file; refuse one that group or others can read (as ssh does)."""
        file = Path(file)
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
            data = file.read_bytes()
        except OSError as exc:
            raise IdentityError(f"cannot read key {file}: {exc.strerror}") from exc
        if mode & 0o077:
            raise IdentityError(f"key {file} is readable by others (mode {mode:04o}): chmod 600 it")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise IdentityError(f"key {file} is not a PEM Ed25519 private key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise IdentityError(f"key {file} is not an Ed25519 key")
        return cls(key)

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature of ``data``."""
        return self._key.sign(data)

    def __repr__(self) -> str:  # never show key material
        return f"SigningKey({short_id(self.key_id)})"
