"""The client's allow-list of worker public keys, and who operates each.

A text file of public keys, one per line, in the form ``ed25519 <base64 raw
key> [operator=NAME] [comment]`` (``#`` starts a comment line), as ``worker.pub``
and ``hec audit worker-key`` print it.  ``operator=NAME`` says who runs the
worker: replicas of a job only count as independent when their workers have
different operators, so one party with many keys gets one vote.

Example::

    allowed = AllowList.from_file("workers.allow")
    allowed.check(receipt_public_key)          # -> worker id, or raises UntrustedWorker
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Iterator

from ...errors import IdentityError, UntrustedWorker
from ...files import atomic_write
from ...formats.signing import fingerprint, parse_public_key, public_key_line, short_id

_OPERATOR = re.compile(r"(?:^|\s)operator=([A-Za-z0-9_.@-]{1,64})(?=\s|$)")


class AllowList:
    """The worker public keys a client accepts receipts from.

    Example::

        allowed = AllowList([me.public_raw]); allowed.save("workers.allow")
        AllowList.from_file("workers.allow").check(other.public_raw)   # raises UntrustedWorker
    """

    def __init__(self, keys: Iterable[bytes] = (), *, operator: str | None = None):
        self._keys: dict[str, bytes] = {}
        self._operators: dict[str, str] = {}
        for k in keys:
            self.add(k, operator=operator)

    @classmethod
    def from_text(cls, text: str, source: str = "allow-list") -> AllowList:
        """Parse allow-list lines; blank lines and ``#`` comments are skipped."""
        out = cls()
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip() and not line.lstrip().startswith("#"):
                try:
                    tokens = line.split()
                    rest = " ".join(tokens[2:] if tokens[0] == "ed25519" else tokens[1:])
                    found = _OPERATOR.search(rest)
                    out.add(parse_public_key(line), operator=found.group(1) if found else None)
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

    def add(self, key: bytes | str, *, operator: str | None = None) -> str:
        """Add a raw key or an allow-list line (``operator`` says who runs it); return its worker id."""
        raw = parse_public_key(key) if isinstance(key, str) else key
        worker_id = fingerprint(raw)
        self._keys[worker_id] = raw
        if operator:
            self._operators[worker_id] = operator
        return worker_id

    def operator_of(self, worker_id: str) -> str | None:
        """Who runs worker ``worker_id`` (``None`` when the list does not say)."""
        return self._operators.get(worker_id)

    @property
    def knows_operators(self) -> bool:
        """Whether every key on the list names its operator."""
        return bool(self._keys) and set(self._operators) >= set(self._keys)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the allow-list file (atomically)."""
        lines = [public_key_line(raw, (f"operator={self._operators[wid]} " if wid in self._operators else "")
                                 + f"worker {short_id(wid)}") for wid, raw in sorted(self._keys.items())]
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
