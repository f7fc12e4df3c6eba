"""Worker identity: an Ed25519 key pair per worker, and the client's allow-list of worker public keys.

A worker creates its key pair on first start in its state directory (mode
0700) as ``worker.key`` (PKCS#8 PEM, mode 0600, never pickled) and
``worker.pub`` (one allow-list line).  Its *worker id* is the sha256 of the
raw 32-byte public key, in hex; :func:`short_id` (16 hex digits) is what
messages show.  Processes sharing one state directory share one identity,
which is right: they are one machine and one trust domain, so they never
count as two independent replicas.

The allow-list is a text file of public keys, one per line, in the form
``ed25519 <base64 raw key> [comment]`` (``#`` starts a comment line), as
``worker.pub`` and ``hec audit worker-key`` print it.

Example::

    me = WorkerIdentity.load_or_create("/var/lib/hec-worker")
    allowed = AllowList.from_file("workers.allow")
    allowed.check(me.public_raw)          # -> worker id, or raises UntrustedWorker
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from pathlib import Path
from typing import Iterable, Iterator

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..container import atomic_write
from .errors import IdentityError, ReceiptError, UntrustedWorker

PRIVATE_FILE = "worker.key"
"""The private key inside a worker's state directory (PKCS#8 PEM, mode 0600)."""
PUBLIC_FILE = "worker.pub"
"""The public key inside a worker's state directory, as one allow-list line."""
KEY_TYPE = "ed25519"
STATE_ENV = "HEC_WORKER_STATE"
"""Environment variable naming a worker's state directory when ``--state`` is not given."""


def fingerprint(public_raw: bytes) -> str:
    """The worker id of a raw Ed25519 public key: sha256 hex of its 32 bytes."""
    if not isinstance(public_raw, bytes) or len(public_raw) != 32:
        raise ValueError("an Ed25519 public key is 32 raw bytes")
    return hashlib.sha256(public_raw).hexdigest()


def short_id(worker_id: str) -> str:
    """The 16-hex-digit form of a worker id that messages show."""
    return worker_id[:16]


def routed_device(device: str, worker_id: str) -> str:
    """The queue device tag that only worker ``worker_id`` claims: ``"<device>@<short id>"``.

    Every worker also claims the jobs tagged with its own id, so a client can
    send a tie-breaker or a re-run to a chosen worker through the ordinary
    queue interface.
    """
    return f"{device}@{short_id(worker_id)}"


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
        atomic_write(path / PRIVATE_FILE, pem, mode=0o600)
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


class AllowList:
    """The worker public keys a client accepts receipts from.

    Example::

        allowed = AllowList([me.public_raw]); allowed.save("workers.allow")
        AllowList.from_file("workers.allow").check(other.public_raw)   # raises UntrustedWorker
    """

    def __init__(self, keys: Iterable[bytes] = ()):
        self._keys: dict[str, bytes] = {}
        for k in keys:
            self.add(k)

    @classmethod
    def from_text(cls, text: str, source: str = "allow-list") -> AllowList:
        """Parse allow-list lines; blank lines and ``#`` comments are skipped."""
        out = cls()
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip() and not line.lstrip().startswith("#"):
                try:
                    out.add(parse_public_key(line))
                except IdentityError as exc:
                    raise IdentityError(f"{source} line {n}: {exc}") from None
        return out

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> AllowList:
        """Read an allow-list file."""
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise IdentityError(f"cannot read allow-list {path}: {exc.strerror}") from exc
        return cls.from_text(text, str(path))

    def add(self, key: bytes | str) -> str:
        """Add a raw key or an allow-list line; return its worker id."""
        raw = parse_public_key(key) if isinstance(key, str) else key
        worker_id = fingerprint(raw)
        self._keys[worker_id] = raw
        return worker_id

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the allow-list file (atomically)."""
        lines = [public_key_line(raw, f"worker {short_id(wid)}") for wid, raw in sorted(self._keys.items())]
        atomic_write(path, ("\n".join(lines) + "\n").encode())

    def check(self, public_raw: bytes) -> str:
        """Return the worker id of ``public_raw``; raise :class:`UntrustedWorker` if it is not allowed."""
        worker_id = fingerprint(public_raw)
        if worker_id not in self._keys:
            raise UntrustedWorker(f"worker {short_id(worker_id)} is not on the allow-list: add its worker.pub line "
                                  "to the list if you trust it", short_id(worker_id))
        return worker_id

    @property
    def worker_ids(self) -> list[str]:
        """The allowed worker ids, sorted."""
        return sorted(self._keys)

    def __contains__(self, worker_id: object) -> bool:
        return worker_id in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self.worker_ids)

    def __len__(self) -> int:
        return len(self._keys)
