"""The tamper-evident audit log of submissions and receipts, kept with the queue.

Built like a transparency log (RFC 6962 / 9162).  Entry ``i`` is one JSON line::

    {"i": i, "t": <unix ms>, "kind": "submit" | "receipt", "job": <job id>, "body": {...},
     "leaf": sha256(0x00 || canonical({i, t, kind, job, body})),
     "chain": sha256(chain[i-1] || leaf)}            # chain[-1] = 32 zero bytes

Three things make it tamper-evident:

* the **leaf hash** binds an entry's content and its index: an edit shows as a leaf mismatch;
* the **running chain hash** binds each entry to all before it: a deletion, an insertion or a
  reordering breaks the chain at the first entry that moved;
* the **head** ``(size, chain)`` is rewritten after every append, and the **Merkle root** over all
  leaves (:meth:`AuditLog.root`) is a checkpoint a client can keep elsewhere (the run report
  prints it): a truncated tail shows against the head, and a log rewritten wholesale (every hash
  recomputed) shows against any root kept outside it.  :meth:`AuditLog.inclusion_proof` and
  :func:`verify_inclusion` prove that one entry is in a log of a given root.

:meth:`AuditLog.verify` raises :class:`~.errors.AuditError` naming the first bad index.

Storage is a tiny Protocol (:class:`AuditStore`): a JSONL file with a lock for the embedded
queue (``DIR/audit.jsonl`` next to ``DIR/queue.db``), a Redis list for a Redis queue.

Example::

    log = AuditLog.for_queue("sqlite://.hec/queue.db")
    log.append("submit", job_id, {"spec": spec})
    head = log.verify()                # raises AuditError("audit entry 7 was rewritten ...")
    log.show(job_id)                   # the entries about one job
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from .canonical import canonical
from .errors import AuditError

AUDIT_VERSION = 1
KINDS = ("submit", "receipt")
_ZERO = bytes(32)


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def leaf_hash(entry: dict[str, Any]) -> str:
    """The leaf hash of an entry's content (hex), as RFC 6962 hashes a leaf: sha256(0x00 || data)."""
    content = {k: entry.get(k) for k in ("i", "t", "kind", "job", "body")}
    return _h(b"\x00" + canonical(content)).hex()


def _node(left: bytes, right: bytes) -> bytes:
    return _h(b"\x01" + left + right)


def _split(n: int) -> int:
    """The largest power of two below ``n`` (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def merkle_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 Merkle tree hash of ``leaves`` (each already a leaf hash)."""
    if not leaves:
        return _h(b"")
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return _node(merkle_root(leaves[:k]), merkle_root(leaves[k:]))


def _path(m: int, leaves: list[bytes]) -> list[bytes]:
    if len(leaves) <= 1:
        return []
    k = _split(len(leaves))
    if m < k:
        return _path(m, leaves[:k]) + [merkle_root(leaves[k:])]
    return _path(m - k, leaves[k:]) + [merkle_root(leaves[:k])]


def verify_inclusion(leaf: str, index: int, size: int, proof: list[str], root: str) -> None:
    """Raise :class:`AuditError` unless ``proof`` shows leaf ``index`` is in the tree of ``size`` leaves with ``root``.

    The verification algorithm of RFC 9162, section 2.1.3.2.
    """
    if not 0 <= index < size:
        raise AuditError(f"entry {index} cannot be in a log of {size} entries", index)
    fn, sn, r = index, size - 1, bytes.fromhex(leaf)
    for p_hex in proof:
        p = bytes.fromhex(p_hex)
        if sn == 0:
            raise AuditError(f"inclusion proof for entry {index} is too long", index)
        if fn & 1 or fn == sn:
            r = _node(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0 or r.hex() != root:
        raise AuditError(f"entry {index} is not in the log with root {root[:16]}", index)


@dataclass(frozen=True)
class LogHead:
    """A checkpoint of the log: its ``size``, last ``chain`` hash and Merkle ``root`` (hex)."""

    size: int
    chain: str
    root: str

    def to_json(self) -> dict[str, Any]:
        """Plain JSON view."""
        return {"size": self.size, "chain": self.chain, "root": self.root}


class AuditStore(Protocol):
    """Where entries live: an append-only sequence of JSON lines plus a head record.

    ``append(build)`` holds the store's lock while it calls
    ``build(last_line_or_None)`` and stores the ``(line, head)`` it returns, so
    concurrent appenders never fork the chain.  A new backend (say, Postgres)
    implements these four methods and nothing else.
    """

    location: str

    def append(self, build: Callable[[str | None], tuple[str, str]]) -> str:
        """Under the store's lock: ``line, head = build(last line)``; store both; return the line."""
        ...

    def lines(self) -> list[str]:
        """Every stored line, in order."""
        ...

    def head(self) -> str | None:
        """The stored head record (JSON), or ``None`` before the first append."""
        ...

    def close(self) -> None:
        """Release resources."""
        ...


class JsonlStore:
    """One JSON line per entry in ``PATH`` and the head in ``PATH.head``; appends hold an ``fcntl`` lock."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.location = str(self.path)
        self._head = self.path.with_name(self.path.name + ".head")

    def append(self, build: Callable[[str | None], tuple[str, str]]) -> str:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                line, head = build(self._last_line(fh))
                fh.seek(0, os.SEEK_END)
                fh.write(line.encode() + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
                tmp = self._head.with_name(self._head.name + ".tmp")
                tmp.write_text(head)
                os.replace(tmp, self._head)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return line

    @staticmethod
    def _last_line(fh: Any) -> str | None:
        end = fh.seek(0, os.SEEK_END)
        if end == 0:
            return None
        pos, buf = end, b""
        while pos > 0 and buf.count(b"\n") < 2:
            step = min(4096, pos)
            pos -= step
            fh.seek(pos)
            buf = fh.read(step) + buf
        return buf.rstrip(b"\n").rsplit(b"\n", 1)[-1].decode()

    def lines(self) -> list[str]:
        try:
            return self.path.read_text().splitlines()
        except FileNotFoundError:
            return []

    def head(self) -> str | None:
        try:
            return self._head.read_text()
        except FileNotFoundError:
            return None

    def close(self) -> None:
        pass


class RedisStore:
    """Entries in the Redis list ``hec:audit`` and the head in ``hec:audit:head``; appends use WATCH/MULTI."""

    KEY, HEAD = "hec:audit", "hec:audit:head"

    def __init__(self, url: str):
        import redis

        self.location = url
        self._r = redis.Redis.from_url(url.split("?", 1)[0])

    def append(self, build: Callable[[str | None], tuple[str, str]]) -> str:
        import redis

        while True:
            with self._r.pipeline() as pipe:
                try:
                    pipe.watch(self.KEY)
                    last = pipe.lindex(self.KEY, -1)
                    line, head = build(last.decode() if last is not None else None)
                    pipe.multi()
                    pipe.rpush(self.KEY, line)
                    pipe.set(self.HEAD, head)
                    pipe.execute()
                    return line
                except redis.WatchError:
                    continue

    def lines(self) -> list[str]:
        return [b.decode() for b in self._r.lrange(self.KEY, 0, -1)]

    def head(self) -> str | None:
        v = self._r.get(self.HEAD)
        return v.decode() if v is not None else None

    def close(self) -> None:
        self._r.close()


def location_for_queue(queue_url: str) -> str:
    """Where the audit log of a queue lives: ``DIR/audit.jsonl`` for ``sqlite://DIR/queue.db``, else the Redis URL."""
    base = queue_url.split("?", 1)[0]
    if base.startswith("sqlite://"):
        return os.path.join(os.path.dirname(base[len("sqlite://"):]) or ".", "audit.jsonl")
    if base.startswith(("redis://", "rediss://", "unix://")):
        return base
    return os.path.join(".hec", "audit.jsonl")


class AuditLog:
    """The audit log over one :class:`AuditStore`.

    Example::

        log = AuditLog.open(".hec/audit.jsonl"); log.append("receipt", job_id, receipt); log.verify()
    """

    def __init__(self, store: AuditStore):
        self.store = store

    @classmethod
    def open(cls, location: str | os.PathLike[str]) -> AuditLog:
        """Open a JSONL file path, or a ``redis://`` URL."""
        loc = str(location)
        if loc.startswith(("redis://", "rediss://", "unix://")):
            return cls(RedisStore(loc))
        return cls(JsonlStore(loc))

    @classmethod
    def for_queue(cls, queue_url: str) -> AuditLog:
        """The log kept with the queue at ``queue_url`` (see :func:`location_for_queue`)."""
        return cls.open(location_for_queue(queue_url))

    @property
    def location(self) -> str:
        """Where the entries are stored."""
        return self.store.location

    def append(self, kind: str, job_id: str, body: dict[str, Any], *, now_ms: int | None = None) -> dict[str, Any]:
        """Append one entry (``kind`` is ``submit`` or ``receipt``) and return it."""
        if kind not in KINDS:
            raise ValueError(f"audit entry kind must be one of {KINDS}")
        t = int(time.time() * 1000) if now_ms is None else now_ms
        out: dict[str, Any] = {}

        def build(last: str | None) -> tuple[str, str]:
            if last is None:
                i, prev = 0, _ZERO
            else:
                try:
                    previous = json.loads(last)
                    i, prev = int(previous["i"]) + 1, bytes.fromhex(previous["chain"])
                except (ValueError, KeyError, TypeError):
                    raise AuditError(f"the last entry of {self.location} is unreadable: run hec audit verify") from None
            entry = {"v": AUDIT_VERSION, "i": i, "t": t, "kind": kind, "job": job_id, "body": body}
            entry["leaf"] = leaf_hash(entry)
            entry["chain"] = _h(prev + bytes.fromhex(entry["leaf"])).hex()
            out.update(entry)
            head = canonical({"size": i + 1, "chain": entry["chain"]}).decode()
            return canonical(entry).decode(), head

        self.store.append(build)
        return out

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, parsed but not verified (see :meth:`verify`)."""
        out = []
        for n, line in enumerate(self.store.lines()):
            try:
                out.append(json.loads(line))
            except ValueError:
                raise AuditError(f"audit entry {n} is not valid JSON (rewritten or damaged)", n) from None
        return out

    def verify(self, *, checkpoint: LogHead | tuple[int, str] | None = None) -> LogHead:
        """Check every entry, the chain, the head, and ``checkpoint`` (a ``(size, root)`` kept elsewhere).

        Returns the current head; raises :class:`AuditError` at the first bad index.
        """
        lines = self.store.lines()
        indices: list[Any] = []
        parsed: list[dict[str, Any]] = []
        for n, line in enumerate(lines):
            try:
                e = json.loads(line)
                if not isinstance(e, dict):
                    raise ValueError
            except ValueError:
                raise AuditError(f"audit entry {n} is not valid JSON (rewritten or damaged)", n) from None
            parsed.append(e)
            indices.append(e.get("i"))
        prev, leaves = _ZERO, []
        for n, e in enumerate(parsed):
            if e.get("i") != n:
                if n in indices[n + 1:]:
                    raise AuditError(f"audit entry {n} is out of place (found entry {e.get('i')!r} there): "
                                     "the log was reordered", n)
                raise AuditError(f"audit entry {n} is missing (found entry {e.get('i')!r} in its place): "
                                 "entries were deleted", n)
            if e.get("v") != AUDIT_VERSION or e.get("kind") not in KINDS:
                raise AuditError(f"audit entry {n} has an unknown version or kind (rewritten)", n)
            try:
                leaf = leaf_hash(e)
            except ValueError:
                raise AuditError(f"audit entry {n} holds values no honest entry holds (rewritten)", n) from None
            if e.get("leaf") != leaf:
                raise AuditError(f"audit entry {n} was rewritten: its content no longer matches its leaf hash", n)
            chain = _h(prev + bytes.fromhex(leaf)).hex()
            if e.get("chain") != chain:
                raise AuditError(f"audit entry {n} does not chain to entry {n - 1}: entries before it were "
                                 "rewritten, inserted or reordered", n)
            prev = bytes.fromhex(chain)
            leaves.append(bytes.fromhex(leaf))
        self._check_head(parsed)
        head = LogHead(len(parsed), prev.hex(), merkle_root(leaves).hex())
        if checkpoint is not None:
            size, root = (checkpoint.size, checkpoint.root) if isinstance(checkpoint, LogHead) else checkpoint
            if size > len(leaves):
                raise AuditError(f"the log has {len(leaves)} entries but the checkpoint has {size}: entries from "
                                 f"{len(leaves)} on were deleted", len(leaves))
            if merkle_root(leaves[:size]).hex() != root:
                raise AuditError(f"the first {size} entries do not match the checkpoint root {root[:16]}: "
                                 "the log was rewritten", None)
        return head

    def _check_head(self, parsed: list[dict[str, Any]]) -> None:
        raw = self.store.head()
        if raw is None:
            if parsed:
                raise AuditError("the log's head record is missing: it was deleted or replaced", None)
            return
        try:
            head = json.loads(raw)
            size, chain = int(head["size"]), str(head["chain"])
        except (ValueError, KeyError, TypeError):
            raise AuditError("the log's head record is unreadable (rewritten or damaged)", None) from None
        if size > len(parsed):
            raise AuditError(f"the log has {len(parsed)} entries but its head records {size}: entries from "
                             f"{len(parsed)} on were deleted", len(parsed))
        if size and parsed[size - 1].get("chain") != chain:
            raise AuditError(f"audit entry {size - 1} does not match the log's head: the log was rewritten", size - 1)

    def root(self, size: int | None = None) -> str:
        """The Merkle root (hex) over the first ``size`` entries (default all)."""
        leaves = [bytes.fromhex(e["leaf"]) for e in self.entries()]
        return merkle_root(leaves[: len(leaves) if size is None else size]).hex()

    def inclusion_proof(self, index: int, size: int | None = None) -> list[str]:
        """Hashes proving entry ``index`` is in the tree of the first ``size`` entries (for :func:`verify_inclusion`)."""
        leaves = [bytes.fromhex(e["leaf"]) for e in self.entries()]
        leaves = leaves[: len(leaves) if size is None else size]
        if not 0 <= index < len(leaves):
            raise AuditError(f"the log has no entry {index}", index)
        return [p.hex() for p in _path(index, leaves)]

    def show(self, job_id: str) -> list[dict[str, Any]]:
        """The entries about ``job_id``, oldest first."""
        return [e for e in self.entries() if e.get("job") == job_id]

    def close(self) -> None:
        """Release the store."""
        self.store.close()
