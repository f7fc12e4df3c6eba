"""Ed25519 public keys on the wire: worker ids, allow-list lines, signature checks.

A *worker id* is the sha256 of a raw 32-byte Ed25519 public key, in hex;
:func:`short_id` (16 hex digits) is what messages show.  An allow-list line
reads ``ed25519 <base64 raw key> [comment]``.  Private keys never appear here:
they live in :mod:`he_compute.worker.identity` (workers) and are only ever
used through a signer's ``sign`` method.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..errors import IdentityError, ReceiptError

KEY_TYPE = "ed25519"


def fingerprint(public_raw: bytes) -> str:
    """The worker id of a raw Ed25519 public key: sha256 hex of its 32 bytes."""
    if not isinstance(public_raw, bytes) or len(public_raw) != 32:
        raise ValueError("an Ed25519 public key is 32 raw bytes")
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
