"""Where the audit log lives, and the :class:`AuditLog` that appends to and verifies it.

The entries and their hashes are :mod:`he_compute.formats.audit`; this module
only stores lines.  Storage is a tiny Protocol (:class:`AuditStore`): a JSONL
file with a lock for the embedded queue (``DIR/audit.jsonl`` next to
``DIR/queue.db``), a Redis list for a Redis queue.  Where a queue's log lives
is :func:`he_compute.transport.locations.audit_location`.

Example::

    log = AuditLog.open(".hec/audit.jsonl")
    log.append("submit", job_id, {"spec": spec})
    head = log.verify()                # raises AuditError("audit entry 7 was rewritten ...")
    log.show(job_id)                   # the entries about one job
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Protocol

from ..formats import audit as entries
from ..formats.audit import LogHead
from ..formats.canonical import canonical
from ..files import atomic_write
from ._closing import Closing
from .locations import redis_key

__all__ = ["AuditLog", "AuditStore", "JsonlStore", "LogHead", "RedisStore"]


class AuditStore(Protocol):
    """Where entries live: an append-only sequence of JSON lines plus a head record.

    ``append(build)`` holds the store's lock while it calls
    ``build(last_line_or_None)`` and stores the ``(line, head)`` it returns, so
    concurrent appenders never fork the chain.  A new backend (say, Postgres)
    implements these four methods and nothing else; it may add
    ``append_many(builds)``, which stores several entries under one lock and one
    durable write (:meth:`AuditLog.batch` uses it where present).
    """

    location: str
    checkpoint_key: str
    """This log among the logs one client keeps checkpoints of (the location, plus the tenant at a coordinator)."""

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


class JsonlStore(Closing):
    """One JSON line per entry in ``PATH`` and the head in ``PATH.head``; appends hold an ``fcntl`` lock.

    Entries are made durable before the head, and the first append writes the empty log's head first, so a
    crash between the two leaves a head that lags behind the entries (still verifiable) and never no head.
    A crash in the middle of an append leaves a *torn* last line (no newline).  It is never taken for an
    entry: :meth:`lines` returns complete lines only and reports the torn bytes in :attr:`torn_bytes`,
    and the next append moves them to ``PATH.torn`` (for inspection) before it writes, so the chain goes
    on from the last complete entry.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.location = self.checkpoint_key = str(self.path)
        self._head = self.path.with_name(self.path.name + ".head")
        self.torn_bytes = 0

    def append(self, build: Callable[[str | None], tuple[str, str]]) -> str:
        return self.append_many([build])[0]

    def append_many(self, builds: list[Callable[[str | None], tuple[str, str]]]) -> list[str]:
        """Entries built one on the other under one lock, written with one fsync (and one head write)."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                self._set_aside_torn_tail(fh)
                if fh.seek(0, os.SEEK_END) == 0 and not self._head.exists():
                    # The head of the empty log goes first, so that a crash after the first entries are
                    # durable and before their head is written leaves a head that lags (which verifies)
                    # rather than none (which reads as a deleted head, i.e. tampering).
                    atomic_write(self._head, entries.empty_head().encode())
                last, lines, head = self._last_line(fh), [], ""
                for build in builds:
                    last, head = build(last)
                    lines.append(last)
                fh.seek(0, os.SEEK_END)
                fh.write("".join(line + "\n" for line in lines).encode())
                fh.flush()
                os.fsync(fh.fileno())
                atomic_write(self._head, head.encode())
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return lines

    def _set_aside_torn_tail(self, fh: Any) -> None:
        end = fh.seek(0, os.SEEK_END)
        if end == 0:
            return
        fh.seek(end - 1)
        if fh.read(1) == b"\n":
            return
        pos, buf = end, b""
        while pos > 0 and b"\n" not in buf:
            step = min(4096, pos)
            pos -= step
            fh.seek(pos)
            buf = fh.read(step) + buf
        cut = pos + buf.rfind(b"\n") + 1 if b"\n" in buf else 0
        fh.seek(cut)
        torn = fh.read()
        with open(self.path.with_name(self.path.name + ".torn"), "ab") as aside:
            aside.write(torn + b"\n")
            aside.flush()
            os.fsync(aside.fileno())
        fh.truncate(cut)
        fh.flush()
        os.fsync(fh.fileno())

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
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        complete, _, torn = data.rpartition(b"\n") if not data.endswith(b"\n") else (data, b"", b"")
        self.torn_bytes = len(torn)
        return complete.decode().splitlines()

    def head(self) -> str | None:
        try:
            return self._head.read_text()
        except FileNotFoundError:
            return None

    def close(self) -> None:
        pass


class RedisStore(Closing):
    """Entries in the Redis list ``hec:audit`` and the head in ``hec:audit:head``; appends use WATCH/MULTI."""

    KEY, HEAD = redis_key("audit"), redis_key("audit_head")

    def __init__(self, url: str):
        import redis

        self.location = self.checkpoint_key = url
        self._r: Any = redis.Redis.from_url(url.split("?", 1)[0])  # bytes replies (no decode_responses)

    def append(self, build: Callable[[str | None], tuple[str, str]]) -> str:
        return self.append_many([build])[0]

    def append_many(self, builds: list[Callable[[str | None], tuple[str, str]]]) -> list[str]:
        """Entries built one on the other and pushed in one transaction (built again if another got there first)."""
        import redis

        while True:
            with self._r.pipeline() as pipe:
                try:
                    pipe.watch(self.KEY)
                    raw = pipe.lindex(self.KEY, -1)
                    last, lines, head = raw.decode() if raw is not None else None, [], ""
                    for build in builds:
                        last, head = build(last)
                        lines.append(last)
                    pipe.multi()
                    pipe.rpush(self.KEY, *lines)
                    pipe.set(self.HEAD, head)
                    pipe.execute()
                    return lines
                except redis.WatchError:
                    continue

    def lines(self) -> list[str]:
        return [b.decode() for b in self._r.lrange(self.KEY, 0, -1)]

    def head(self) -> str | None:
        v = self._r.get(self.HEAD)
        return v.decode() if v is not None else None

    def close(self) -> None:
        self._r.close()


class AuditLog:
    """The audit log over one :class:`AuditStore`; a context manager that closes its store.

    Example::

        with AuditLog.open(".hec/audit.jsonl") as log:
            log.append("receipt", job_id, receipt); log.verify()
    """

    def __init__(self, store: AuditStore):
        self.store = store
        self._pending: list[Callable[[str | None], tuple[str, str]]] | None = None

    @classmethod
    def open(cls, location: str | os.PathLike[str]) -> AuditLog:
        """Open a JSONL file path, or a ``redis://`` URL."""
        loc = str(location)
        if loc.startswith(("redis://", "rediss://", "unix://")):
            return cls(RedisStore(loc))
        return cls(JsonlStore(loc))

    @property
    def location(self) -> str:
        """Where the entries are stored."""
        return self.store.location

    @property
    def checkpoint_key(self) -> str:
        """What a client's kept checkpoints of this log are filed under (see :class:`AuditStore`)."""
        return self.store.checkpoint_key

    def append(self, kind: str, job_id: str, body: dict[str, Any], *, now_ms: int | None = None) -> dict[str, Any]:
        """Append one entry (``kind`` is ``submit`` or ``receipt``) and return it (inside :meth:`batch`:
        the dict is filled in when the batch is stored)."""
        t = int(time.time() * 1000) if now_ms is None else now_ms
        out: dict[str, Any] = {}

        def build(last: str | None) -> tuple[str, str]:
            entry, head = entries.next_entry(last, kind, job_id, body, t, self.location)
            out.update(entry)
            return canonical(entry).decode(), head

        if self._pending is not None:
            self._pending.append(build)
        else:
            self.store.append(build)
        return out

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Entries appended in the block are stored together when it ends, even by an exception: one lock and
        one durable write for all of them (a run's poll logs a receipt per finished job: one fsync, not one
        per entry).  A crash inside the block loses its entries, never the chain: what was stored verifies."""
        if self._pending is not None:  # nested: the outer batch stores them
            yield
            return
        self._pending = []
        try:
            yield
        finally:
            pending, self._pending = self._pending, None
            if pending:
                many = getattr(self.store, "append_many", None)
                if many is not None:
                    many(pending)
                else:
                    for build in pending:
                        self.store.append(build)

    def checkpoint(self, signer: Any, *, now_ms: int | None = None) -> dict[str, Any]:
        """Append a checkpoint of the log as it is (size and Merkle root, computed under the store's lock),
        signed by ``signer``; return the entry (see :mod:`he_compute.formats.audit`)."""
        t = int(time.time() * 1000) if now_ms is None else now_ms
        out: dict[str, Any] = {}

        def build(last: str | None) -> tuple[str, str]:
            leaves = [bytes.fromhex(e["leaf"]) for e in entries.parse_lines(self.store.lines())]
            body = entries.checkpoint_body(len(leaves), entries.merkle_root(leaves).hex(), signer)
            entry, head = entries.next_entry(last, "checkpoint", "-", body, t, self.location)
            out.update(entry)
            return canonical(entry).decode(), head

        self.store.append(build)
        return out

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, parsed but not verified (see :meth:`verify`)."""
        return entries.parse_lines(self.store.lines())

    def verify(self, *, checkpoint: LogHead | tuple[int, str] | None = None) -> LogHead:
        """Check every entry, the chain, the head, and ``checkpoint`` (a ``(size, root)`` kept elsewhere).

        A torn last line (a crash during an append) is not an entry: it is reported in the head's
        ``torn_bytes`` and set aside by the next append."""
        head = entries.verify_lines(self.store.lines(), self.store.head(), checkpoint=checkpoint)
        torn = int(getattr(self.store, "torn_bytes", 0))
        return LogHead(head.size, head.chain, head.root, torn) if torn else head

    def _leaves(self, size: int | None) -> list[bytes]:
        leaves = [bytes.fromhex(e["leaf"]) for e in self.entries()]
        return leaves[: len(leaves) if size is None else size]

    def root(self, size: int | None = None) -> str:
        """The Merkle root (hex) over the first ``size`` entries (default all)."""
        return entries.merkle_root(self._leaves(size)).hex()

    def inclusion_proof(self, index: int, size: int | None = None) -> list[str]:
        """Hashes proving entry ``index`` is in the tree of the first ``size`` entries."""
        return entries.inclusion_proof(self._leaves(size), index)

    def show(self, job_id: str) -> list[dict[str, Any]]:
        """The entries about ``job_id``, oldest first."""
        return [e for e in self.entries() if e.get("job") == job_id]

    def close(self) -> None:
        """Release the store."""
        self.store.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
