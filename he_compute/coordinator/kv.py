"""The coordinator's own small store: hashes, sorted sets and expiring markers, on SQLite or on Redis.

The coordinator keeps tenants, workers, enrolment tokens, nonces, job and blob
ownership and counters here (:mod:`.state` says what lives where).  Writing
that logic once over this tiny interface, with one backend per deployment
shape, keeps the embedded default (one SQLite file under ``--data``) and the
scale-out shape (one Redis shared by several coordinator processes) identical
in behaviour:

* :class:`SqliteKV`: one table ``kv(key, field, value, score, expires)``;
* :class:`RedisKV`: native hashes and sorted sets under ``hec:coord:`` keys
  (:func:`he_compute.transport.locations.coordinator_key`), so several
  coordinators over one Redis share nonces, leases and quotas.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from ..errors import QueueError
from ..transport.locations import coordinator_key


class KV(Protocol):
    """Hashes (``h*``), sorted sets (``z*``) and expiring markers (``setnx``); values are strings."""

    def hget(self, key: str, field: str) -> str | None: ...
    def hgetall(self, key: str) -> dict[str, str]: ...
    def hmget(self, key: str, fields: list[str]) -> list[str | None]: ...
    def hset(self, key: str, mapping: dict[str, str]) -> None: ...
    def hsetnx(self, key: str, field: str, value: str) -> bool: ...
    def hincrby(self, key: str, field: str, n: int = 1) -> int: ...
    def hdel(self, key: str, field: str) -> bool: ...
    def zadd(self, key: str, member: str, score: float) -> None: ...
    def zrem(self, key: str, member: str) -> bool: ...
    def zcard(self, key: str) -> int: ...
    def zrange(self, key: str, low: float, limit: int) -> list[str]: ...
    def zprune(self, key: str, below: float) -> None: ...
    def setnx(self, key: str, ttl_s: float) -> bool: ...
    def batch(self, calls: list[tuple[str, tuple[Any, ...]]]) -> list[Any]: ...
    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT NOT NULL, field TEXT NOT NULL, value TEXT, score REAL,
                               expires REAL, PRIMARY KEY (key, field));
CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires) WHERE expires IS NOT NULL;
CREATE INDEX IF NOT EXISTS kv_score ON kv (key, score);
"""


class SqliteKV:
    """The embedded backend: one SQLite file (WAL), safe for the threads of one coordinator process."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            for stmt in filter(str.strip, _SCHEMA.split(";")):
                self._db.execute(stmt)
        except (sqlite3.Error, OSError) as exc:
            raise QueueError(f"cannot open the coordinator's state {self.path}: {exc}") from exc

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> tuple[list[Any], int]:
        """One autocommitted statement, its rows fetched under the lock (no statement is left open across threads)."""
        with self._lock:
            try:
                cur = self._db.execute(sql, args)
                return cur.fetchall(), cur.rowcount
            except sqlite3.Error as exc:
                raise QueueError(f"coordinator state {self.path}: {exc}") from exc

    def hget(self, key: str, field: str) -> str | None:
        rows, _ = self._run("SELECT value FROM kv WHERE key = ? AND field = ?", (key, field))
        return rows[0][0] if rows else None

    def hgetall(self, key: str) -> dict[str, str]:
        return dict(self._run("SELECT field, value FROM kv WHERE key = ?", (key,))[0])

    def hmget(self, key: str, fields: list[str]) -> list[str | None]:
        found: dict[str, str] = {}
        for i in range(0, len(fields), 500):  # SQLite's bound-parameter limit
            part = fields[i : i + 500]
            rows, _ = self._run(f"SELECT field, value FROM kv WHERE key = ? AND field IN ({', '.join('?' * len(part))})",
                                (key, *part))
            found.update(dict(rows))
        return [found.get(f) for f in fields]

    def hset(self, key: str, mapping: dict[str, str]) -> None:
        for field, value in mapping.items():
            self._run("INSERT INTO kv (key, field, value) VALUES (?, ?, ?) ON CONFLICT (key, field) "
                      "DO UPDATE SET value = excluded.value", (key, field, str(value)))

    def hsetnx(self, key: str, field: str, value: str) -> bool:
        return self._run("INSERT OR IGNORE INTO kv (key, field, value) VALUES (?, ?, ?)", (key, field, value))[1] == 1

    def hincrby(self, key: str, field: str, n: int = 1) -> int:
        rows, _ = self._run("INSERT INTO kv (key, field, value) VALUES (?, ?, ?) ON CONFLICT (key, field) DO UPDATE "
                            "SET value = CAST(value AS INTEGER) + ? RETURNING value", (key, field, str(n), n))
        return int(rows[0][0])

    def hdel(self, key: str, field: str) -> bool:
        return self._run("DELETE FROM kv WHERE key = ? AND field = ?", (key, field))[1] == 1

    def zadd(self, key: str, member: str, score: float) -> None:
        self._run("INSERT INTO kv (key, field, score) VALUES (?, ?, ?) ON CONFLICT (key, field) DO UPDATE "
                  "SET score = excluded.score", (key, member, float(score)))

    def zrem(self, key: str, member: str) -> bool:
        return self.hdel(key, member)

    def zcard(self, key: str) -> int:
        return int(self._run("SELECT COUNT(*) FROM kv WHERE key = ?", (key,))[0][0][0])

    def zrange(self, key: str, low: float, limit: int) -> list[str]:
        rows, _ = self._run("SELECT field FROM kv WHERE key = ? AND score >= ? ORDER BY score, rowid LIMIT ?",
                            (key, float(low), int(limit)))
        return [r[0] for r in rows]

    def zprune(self, key: str, below: float) -> None:
        """Drop the members scored below ``below``."""
        self._run("DELETE FROM kv WHERE key = ? AND score < ?", (key, float(below)))

    def setnx(self, key: str, ttl_s: float) -> bool:
        now = time.time()
        with self._lock:
            self._run("DELETE FROM kv WHERE expires IS NOT NULL AND expires < ?", (now,))
            return self._run("INSERT OR IGNORE INTO kv (key, field, expires) VALUES (?, '', ?)", (key, now + ttl_s))[1] == 1

    def batch(self, calls: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        """Several calls ``(method name, args)`` in order, their answers in a list (one lock hold)."""
        with self._lock:
            return [getattr(self, name)(*args) for name, args in calls]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class RedisKV:
    """The scale-out backend: Redis hashes and sorted sets, shared by every coordinator process."""

    def __init__(self, url: str):
        import redis

        self.url = url
        self._r = redis.Redis.from_url(url, socket_connect_timeout=5, socket_keepalive=True, decode_responses=True)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import redis

        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            raise QueueError(f"coordinator state in Redis failed ({exc}): is Redis running?") from exc

    @staticmethod
    def _issue(c: Any, name: str, key: str, args: tuple[Any, ...]) -> Any:
        """Send one call on ``c`` (the client, or a pipeline that queues it)."""
        k = coordinator_key(key)
        if name == "hset":
            return c.hset(k, mapping={f: str(v) for f, v in args[0].items()})
        if name == "zadd":
            return c.zadd(k, {args[0]: float(args[1])})
        if name == "zrange":
            return c.zrangebyscore(k, float(args[0]), "+inf", start=0, num=int(args[1]))
        if name == "zprune":
            return c.zremrangebyscore(k, "-inf", f"({float(args[0])!r}")
        if name == "setnx":
            return c.set(k, "1", nx=True, px=max(1, int(args[0] * 1000)))
        return getattr(c, name)(k, *args)  # hget hgetall hmget hsetnx hincrby hdel zrem zcard: Redis's own

    _CONVERT: dict[str, Any] = {"hmget": list, "hsetnx": bool, "hincrby": int, "hdel": bool, "zrem": bool,
                                "zcard": int, "zrange": list, "setnx": bool,
                                "hset": lambda _: None, "zadd": lambda _: None, "zprune": lambda _: None}

    def _one(self, name: str, key: str, *args: Any) -> Any:
        out = self._call(self._issue, self._r, name, key, args)
        return self._CONVERT.get(name, lambda v: v)(out)

    def batch(self, calls: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        """Several calls ``(method name, (key, *args))`` in one round trip (a pipeline, not a transaction: each
        call is atomic, as it is alone), their answers in a list."""
        pipe = self._r.pipeline(transaction=False)
        for name, (key, *args) in calls:
            self._issue(pipe, name, key, tuple(args))
        out = self._call(pipe.execute)
        return [self._CONVERT.get(name, lambda v: v)(v) for (name, _), v in zip(calls, out)]

    def hget(self, key: str, field: str) -> str | None:
        return self._one("hget", key, field)

    def hgetall(self, key: str) -> dict[str, str]:
        return self._one("hgetall", key)

    def hmget(self, key: str, fields: list[str]) -> list[str | None]:
        return self._one("hmget", key, fields) if fields else []

    def hset(self, key: str, mapping: dict[str, str]) -> None:
        self._one("hset", key, mapping)

    def hsetnx(self, key: str, field: str, value: str) -> bool:
        return self._one("hsetnx", key, field, value)

    def hincrby(self, key: str, field: str, n: int = 1) -> int:
        return self._one("hincrby", key, field, n)

    def hdel(self, key: str, field: str) -> bool:
        return self._one("hdel", key, field)

    def zadd(self, key: str, member: str, score: float) -> None:
        self._one("zadd", key, member, score)

    def zrem(self, key: str, member: str) -> bool:
        return self._one("zrem", key, member)

    def zcard(self, key: str) -> int:
        return self._one("zcard", key)

    def zrange(self, key: str, low: float, limit: int) -> list[str]:
        return self._one("zrange", key, low, limit)

    def zprune(self, key: str, below: float) -> None:
        """Drop the members scored below ``below``."""
        self._one("zprune", key, below)

    def setnx(self, key: str, ttl_s: float) -> bool:
        return self._one("setnx", key, ttl_s)

    def close(self) -> None:
        self._r.close()
