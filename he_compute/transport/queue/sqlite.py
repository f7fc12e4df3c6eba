"""``sqlite://`` queue: the embedded default, for several worker processes on one machine.

Two tables: ``jobs`` (the records) and ``leases`` (who holds a running job,
until when).  A claim is one ``BEGIN IMMEDIATE`` transaction, so two workers
can never take the same job; expired leases are reaped inside the same
transaction.  WAL mode lets readers (``hec status``) run beside writers.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from ...errors import QueueError
from .._closing import Closing
from .base import (
    DEFAULT_LEASE_S,
    DEFAULT_MAX_ATTEMPTS,
    MAX_ATTEMPTS_CAP,
    Job,
    JobState,
    Lease,
    check_job_id,
    check_tag,
    dumps,
    unreadable_job,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, state TEXT NOT NULL, device TEXT NOT NULL, spec TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL,
    error TEXT, result TEXT, progress TEXT NOT NULL DEFAULT '{}', worker TEXT,
    created REAL NOT NULL, updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, device, created);
CREATE TABLE IF NOT EXISTS leases (
    job_id TEXT PRIMARY KEY, token TEXT NOT NULL, worker TEXT NOT NULL, expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS group_claims (
    grp TEXT NOT NULL, operator TEXT NOT NULL, job_id TEXT NOT NULL, PRIMARY KEY (grp, operator)
);
"""
# Columns added after the first release: added to older databases on open.
_ADDED_COLUMNS = {"grp": "TEXT", "run": "TEXT"}
_STATES = {s.value for s in JobState}
_POLL_S = 0.1
_CHANGE_S = 0.005  # how often an idle claim or a waiting client looks for another connection's commit


def _row_to_job(row: sqlite3.Row) -> Job:
    """The record as a :class:`Job`; a record that does not parse becomes a failed job saying so."""
    try:
        return Job(
            id=row["id"], state=JobState(row["state"]), spec=json.loads(row["spec"]), device=row["device"],
            attempts=int(row["attempts"]), max_attempts=int(row["max_attempts"]), error=row["error"],
            result=json.loads(row["result"]) if row["result"] else None,
            progress=json.loads(row["progress"] or "{}"), worker=row["worker"], created=float(row["created"]),
            updated=float(row["updated"]), group=row["grp"], run=row["run"],
        )
    except (ValueError, TypeError, KeyError) as exc:
        return unreadable_job(str(row["id"]), exc)


class SqliteQueue(Closing):
    """The embedded queue in one SQLite file.

    Example::

        q = SqliteQueue(".hec/queue.db"); q.submit({"op": "noop"})
    """

    def __init__(self, path: str | Path, *, lease_s: float = DEFAULT_LEASE_S, max_attempts: int = MAX_ATTEMPTS_CAP):
        self.path = Path(path)
        self.url = f"sqlite://{self.path}"
        self.lease_s = float(lease_s)
        self.max_attempts_cap = int(max_attempts)
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._tx():
                for stmt in filter(str.strip, SCHEMA.split(";")):
                    self._db.execute(stmt)
                have = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
                for name, kind in _ADDED_COLUMNS.items():
                    if name not in have:
                        self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
                self._db.execute("CREATE INDEX IF NOT EXISTS jobs_by_run ON jobs (run, created)")
        except (sqlite3.Error, OSError) as exc:
            raise QueueError(f"cannot open queue database {self.path}: {exc}") from exc

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken eagerly so that concurrent claims serialize."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise QueueError(f"queue database {self.path}: {exc}") from exc

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise QueueError(f"queue database {self.path}: {exc}") from exc

    def submit(self, spec: dict[str, Any], *, device: str = "cpu", max_attempts: int = DEFAULT_MAX_ATTEMPTS,
               group: str | None = None, run: str | None = None) -> str:
        """Insert a queued job; return its id."""
        check_tag(group, "job group")
        check_tag(run, "run id")
        if max_attempts < 1:
            raise QueueError("max_attempts must be at least 1")
        max_attempts = min(int(max_attempts), self.max_attempts_cap)
        job_id = "j" + uuid.uuid4().hex[:20]
        now = time.time()
        with self._tx() as db:
            db.execute("INSERT INTO jobs (id, state, device, spec, max_attempts, created, updated, grp, run) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (job_id, JobState.QUEUED.value, device, dumps(spec),
                                                             int(max_attempts), now, now, group, run))
        return job_id

    def _reap(self, db: sqlite3.Connection, now: float) -> int:
        """Requeue or dead-letter running jobs whose lease expired (their worker died or hung)."""
        expired = db.execute(
            "SELECT l.job_id, l.worker, j.attempts, j.max_attempts FROM leases l JOIN jobs j ON j.id = l.job_id "
            "WHERE l.expires < ?", (now,)).fetchall()
        for job_id, worker, attempts, max_attempts in expired:
            error = (f"worker {worker} stopped heartbeating (killed or crashed) during attempt "
                     f"{attempts}/{max_attempts}")
            state = JobState.FAILED if attempts >= min(max_attempts, self.max_attempts_cap) else JobState.QUEUED
            db.execute("UPDATE jobs SET state = ?, error = ?, worker = NULL, updated = ? WHERE id = ? AND state = ?",
                       (state.value, error, now, job_id, JobState.RUNNING.value))
            db.execute("DELETE FROM leases WHERE job_id = ?", (job_id,))
        return len(expired)

    def claim(self, worker: str, *, devices: Iterable[str] = ("cpu",), block_s: float = 0.0,
              operator: str | None = None) -> Lease | None:
        """Atomically move the oldest queued job for ``devices`` to running, under a new lease.

        A job of a group this ``operator`` (default ``worker``) already claimed from is skipped.  A record
        that does not parse, or that has used up the queue's attempt cap, is moved to the dead letter here
        instead of being handed out.
        """
        devs = list(devices)
        who = operator or worker
        deadline = time.monotonic() + block_s
        marks = ",".join("?" * len(devs))
        while True:
            now = time.time()
            with self._tx() as db:
                self._reap(db, now)
                while True:
                    row = db.execute(f"SELECT * FROM jobs WHERE state = ? AND device IN ({marks}) AND (grp IS NULL "
                                     "OR NOT EXISTS (SELECT 1 FROM group_claims g WHERE g.grp = jobs.grp AND "
                                     "g.operator = ? AND g.job_id != jobs.id)) ORDER BY created, rowid LIMIT 1",
                                     (JobState.QUEUED.value, *devs, who)).fetchone()
                    if row is None:
                        break
                    job = _row_to_job(row)
                    if job.state is JobState.FAILED or job.attempts >= min(job.max_attempts, self.max_attempts_cap):
                        error = job.error or f"out of attempts ({job.attempts}/{self.max_attempts_cap})"
                        db.execute("UPDATE jobs SET state = ?, error = ?, updated = ? WHERE id = ?",
                                   (JobState.FAILED.value, error[:4000], now, row["id"]))
                        continue
                    token = uuid.uuid4().hex
                    db.execute("UPDATE jobs SET state = ?, attempts = attempts + 1, worker = ?, updated = ? "
                               "WHERE id = ?", (JobState.RUNNING.value, worker, now, row["id"]))
                    db.execute("INSERT OR REPLACE INTO leases (job_id, token, worker, expires) VALUES (?, ?, ?, ?)",
                               (row["id"], token, worker, now + self.lease_s))
                    if row["grp"] is not None:
                        db.execute("INSERT OR IGNORE INTO group_claims (grp, operator, job_id) VALUES (?, ?, ?)",
                                   (row["grp"], who, row["id"]))
                    job = _row_to_job(db.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone())
                    return Lease(job=job, token=token, worker=worker, operator=who)
            if time.monotonic() >= deadline:
                return None
            self.wait(min(_POLL_S, max(0.0, deadline - time.monotonic())))

    def wait(self, timeout_s: float) -> None:
        """Sleep up to ``timeout_s``, waking within ``_CHANGE_S`` of another connection's commit (SQLite's
        ``data_version``, a read of the WAL index: no database lock, no disk)."""
        deadline = time.monotonic() + timeout_s
        version = self._data_version()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(_CHANGE_S, left))
            if self._data_version() != version:
                return

    def _data_version(self) -> int:
        try:
            with self._lock:
                return int(self._db.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error:  # a locked or vanished database: let the caller's next query say what is wrong
            return -1

    def _owns(self, db: sqlite3.Connection, lease: Lease) -> bool:
        row = db.execute("SELECT 1 FROM leases l JOIN jobs j ON j.id = l.job_id WHERE l.job_id = ? AND l.token = ? "
                         "AND j.state = ?", (lease.job.id, lease.token, JobState.RUNNING.value)).fetchone()
        return row is not None

    def heartbeat(self, lease: Lease, progress: dict[str, Any] | None = None) -> bool:
        """Push the lease's expiry forward; ``False`` once the job is cancelled or reassigned."""
        now = time.time()
        with self._tx() as db:
            if not self._owns(db, lease):
                return False
            db.execute("UPDATE leases SET expires = ? WHERE job_id = ?", (now + self.lease_s, lease.job.id))
            if progress is not None:
                db.execute("UPDATE jobs SET progress = ?, updated = ? WHERE id = ?",
                           (dumps(progress), now, lease.job.id))
        return True

    def complete(self, lease: Lease, result: dict[str, Any]) -> bool:
        """Record the result if ``lease`` still holds the running job; ``False`` otherwise (nothing changes)."""
        now = time.time()
        data = dumps(result)
        with self._tx() as db:
            if not self._owns(db, lease):
                return False
            db.execute("UPDATE jobs SET state = ?, result = ?, error = NULL, updated = ? WHERE id = ?",
                       (JobState.DONE.value, data, now, lease.job.id))
            db.execute("DELETE FROM leases WHERE job_id = ?", (lease.job.id,))
            return True

    def fail(self, lease: Lease, error: str, *, retry: bool = True) -> JobState:
        """Requeue while attempts remain (and ``retry``), else dead-letter with ``error``."""
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT state, attempts, max_attempts FROM jobs WHERE id = ?", (lease.job.id,)).fetchone()
            if row is None:
                raise QueueError(f"no job {lease.job.id} in {self.url}")
            if not self._owns(db, lease):
                return JobState(row["state"])
            limit = min(int(row["max_attempts"]), self.max_attempts_cap)
            state = JobState.QUEUED if retry and row["attempts"] < limit else JobState.FAILED
            # A dead-lettered job keeps the name of the worker that failed it last: the client counts it
            # against that worker and gives the job to another.
            db.execute("UPDATE jobs SET state = ?, error = ?, worker = CASE WHEN ? THEN worker END, updated = ? "
                       "WHERE id = ?", (state.value, str(error)[:4000], state is JobState.FAILED, now, lease.job.id))
            db.execute("DELETE FROM leases WHERE job_id = ?", (lease.job.id,))
            return state

    def release(self, lease: Lease) -> None:
        """Requeue without counting the attempt (the worker is shutting down); its operator may then take
        another job of the group, since it ran none."""
        now = time.time()
        with self._tx() as db:
            if self._owns(db, lease):
                db.execute("DELETE FROM group_claims WHERE job_id = ?", (lease.job.id,))
                db.execute("UPDATE jobs SET state = ?, attempts = MAX(0, attempts - 1), worker = NULL, updated = ? "
                           "WHERE id = ?", (JobState.QUEUED.value, now, lease.job.id))
                db.execute("DELETE FROM leases WHERE job_id = ?", (lease.job.id,))

    def cancel(self, job_id: str) -> bool:
        """Mark a queued or running job cancelled; its worker stops at the next heartbeat."""
        check_job_id(job_id)
        self.status(job_id)
        with self._tx() as db:
            cur = db.execute("UPDATE jobs SET state = ?, updated = ? WHERE id = ? AND state IN (?, ?)",
                             (JobState.CANCELLED.value, time.time(), job_id, JobState.QUEUED.value,
                              JobState.RUNNING.value))
            db.execute("DELETE FROM leases WHERE job_id = ?", (job_id,))
            return cur.rowcount == 1

    def status(self, job_id: str) -> Job:
        """One job's record."""
        rows = self._read("SELECT * FROM jobs WHERE id = ?", (check_job_id(job_id),))
        if not rows:
            raise QueueError(f"no job {job_id} in {self.url}: list jobs with hec jobs --queue {self.url}")
        return _row_to_job(rows[0])

    def statuses(self, job_ids: Sequence[str]) -> dict[str, Job]:
        """The records of those of ``job_ids`` that exist (one query per 500 ids)."""
        ids = [check_job_id(j) for j in job_ids]
        out: dict[str, Job] = {}
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            rows = self._read(f"SELECT * FROM jobs WHERE id IN ({', '.join('?' * len(part))})", tuple(part))
            out.update((row["id"], _row_to_job(row)) for row in rows)
        return out

    def counts(self, *, run: str | None = None) -> dict[JobState, int]:
        """Jobs per state (of ``run``), counted by the database."""
        where, args = ("WHERE run = ? ", (run,)) if run is not None else ("", ())
        rows = self._read(f"SELECT state, COUNT(*) AS n FROM jobs {where}GROUP BY state", args)
        return {JobState(row["state"]): int(row["n"]) for row in rows if row["state"] in _STATES}

    def jobs(self, state: JobState | None = None, limit: int = 1000, *, run: str | None = None,
             since: float | None = None) -> list[Job]:
        """Jobs oldest first, filtered by state, run and creation time."""
        where: list[str] = []
        args: list[str | float] = []
        if state is not None:
            where.append("state = ?")
            args.append(JobState(state).value)
        if run is not None:
            where.append("run = ?")
            args.append(run)
        if since is not None:
            where.append("created >= ?")
            args.append(float(since))
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = self._read(f"SELECT * FROM jobs {clause}ORDER BY created, rowid LIMIT ?", (*args, int(limit)))
        return [_row_to_job(r) for r in rows]

    def dead_letter(self) -> list[Job]:
        """Failed jobs, with their last error."""
        return self.jobs(JobState.FAILED)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
