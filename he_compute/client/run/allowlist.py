"""The client's allow-list of worker public keys.

A text file of public keys, one per line, in the form ``ed25519 <base64 raw
key> [comment]`` (``#`` starts a comment line), as ``worker.pub`` and
``hec audit worker-key`` print it.

Example::

    allowed = AllowList.from_file("workers.allow")
    allowed.check(receipt_public_key)          # -> worker id, or raises UntrustedWorker
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

from ...errors import IdentityError, UntrustedWorker
from ...files import atomic_write
from ...formats.signing import fingerprint, parse_public_key, public_key_line, short_id


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
