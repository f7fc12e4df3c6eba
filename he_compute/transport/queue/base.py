"""What every queue engine shares: job states, the Job and Lease records, and the two roles' Protocols.

A client *produces* jobs (:class:`Producer`: submit, status, jobs, cancel);
a worker *consumes* them (:class:`Consumer`: claim, heartbeat, complete,
fail, release).  Both engines implement both roles; the coordinator exposes
each role to its own kind of caller.  Every engine is closable and a context
manager.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterable, Protocol, Self, Sequence, runtime_checkable

from ...errors import QueueError
from ...formats.canonical import compact
from ...formats.signing import short_id

DEFAULT_LEASE_S = 30.0
"""Seconds a claim lasts without a heartbeat; workers heartbeat every third of it."""

DEFAULT_MAX_ATTEMPTS = 3
"""Claims a job gets (first run plus retries) before it goes to the dead letter."""

MAX_ATTEMPTS_CAP = 5
"""The most attempts any job gets, whatever its submitter asks: the queue, not the submitter, decides retries."""

_JOB_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_TAG = re.compile(r"[A-Za-z0-9_.:/@-]{1,128}")


class JobState(str, Enum):
    """Life of a job: queued -> running -> done | failed (dead letter) | cancelled; running -> queued on retry."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})
"""States a job never leaves."""


def check_job_id(job_id: str) -> str:
    """Return ``job_id`` if it is a plausible id (it becomes part of keys); raise :class:`QueueError` otherwise."""
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise QueueError(f"{str(job_id)[:80]!r} is not a job id: ids are letters, digits, '.', '_' and '-'")
    return job_id


def check_tag(value: str | None, what: str) -> str | None:
    """Validate a run or group tag (it becomes part of keys); ``None`` passes."""
    if value is not None and (not isinstance(value, str) or not _TAG.fullmatch(value)):
        raise QueueError(f"{str(value)[:80]!r} is not a valid {what}: letters, digits and . _ : / @ - only")
    return value


def dumps(obj: Any) -> str:
    """Compact sorted JSON: the only serialization jobs ever get (never pickle)."""
    return compact(obj)


def routed_device(device: str, worker_id: str) -> str:
    """The queue device tag that only worker ``worker_id`` claims: ``"<device>@<short id>"``.

    Every worker also claims the jobs tagged with its own id, so a client can
    send a tie-breaker or a re-run to a chosen worker through the ordinary
    queue interface.
    """
    return f"{device}@{short_id(worker_id)}"


@dataclass
class Job:
    """A job as the queue sees it: JSON ``spec`` in, JSON ``result`` out."""

    id: str
    state: JobState
    spec: dict[str, Any]
    device: str = "cpu"
    attempts: int = 0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    error: str | None = None
    result: dict[str, Any] | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    worker: str | None = None
    created: float = 0.0
    updated: float = 0.0
    group: str | None = None   # replicas of one piece of work share a group: no operator gets two of them
    run: str | None = None     # the client run that submitted it (for hec jobs --run and resuming)

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON view (for ``hec status --json``)."""
        d = dict(self.__dict__)
        d["state"] = self.state.value
        return d


def unreadable_job(job_id: str, exc: Exception) -> Job:
    """How an engine shows a record it cannot parse: a failed job naming the problem (never an exception)."""
    return Job(id=job_id, state=JobState.FAILED, spec={}, error=f"unreadable job record: {type(exc).__name__}: "
               f"{str(exc)[:200]}")


@dataclass
class Lease:
    """A worker's claim on a job; ``token`` proves ownership to heartbeat, fail and release."""

    job: Job
    token: str
    worker: str
    ref: dict[str, str] = field(default_factory=dict)  # engine-specific (Redis stream and entry id)
    operator: str = ""                                  # who claimed, for the group rule (default: worker)


@runtime_checkable
class Producer(Protocol):
    """The client's side of a queue.

    Example::

        job_id = q.submit(spec); q.status(job_id).state; q.cancel(job_id)
    """

    url: str

    def submit(self, spec: dict[str, Any], *, device: str = "cpu", max_attempts: int = DEFAULT_MAX_ATTEMPTS,
               group: str | None = None, run: str | None = None) -> str:
        """Queue a JSON job for workers that have ``device``; return its id (attempts are capped by the queue).

        Jobs of one ``group`` (replicas) never go to the same operator; ``run`` tags the client run."""
        ...

    def status(self, job_id: str) -> Job:
        """The job's current record; :class:`QueueError` if there is no such job."""
        ...

    def statuses(self, job_ids: Sequence[str]) -> dict[str, Job]:
        """The records of those of ``job_ids`` that exist, in one round trip (what a verifier polls)."""
        ...

    def counts(self, *, run: str | None = None) -> dict[JobState, int]:
        """How many jobs (of ``run``) are in each state, without reading their records."""
        ...

    def jobs(self, state: JobState | None = None, limit: int = 1000, *, run: str | None = None,
             since: float | None = None) -> list[Job]:
        """Jobs, oldest first, optionally only those in ``state`` (``failed`` is the dead letter), of ``run``,
        or created at or after ``since`` (unix seconds)."""
        ...

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; ``False`` if it had already ended."""
        ...

    def wait(self, timeout_s: float) -> None:
        """Return within ``timeout_s``, early once another party changed the queue (a job finished), so a
        client polling for results hears of them at once; a plain sleep where the engine cannot tell."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...

    def __enter__(self) -> Self:
        ...

    def __exit__(self, *exc: object) -> None:
        """Close."""
        ...


def sleep_wait(_: Any, timeout_s: float) -> None:
    """:meth:`Producer.wait` for engines that cannot tell when the queue changed: a plain sleep."""
    time.sleep(max(0.0, timeout_s))


@runtime_checkable
class Consumer(Protocol):
    """A worker's side of a queue: everything goes through a :class:`Lease`, whose token the engine checks.

    Example::

        lease = q.claim("w1"); q.heartbeat(lease); q.complete(lease, result)
    """

    url: str
    lease_s: float

    def claim(self, worker: str, *, devices: Iterable[str] = ("cpu",), block_s: float = 0.0,
              operator: str | None = None) -> Lease | None:
        """Take the oldest job for one of ``devices`` (waiting up to ``block_s``) and reap expired leases;
        ``None`` if there is none.  A job whose group ``operator`` (default: ``worker``) has already
        claimed from is left for someone else."""
        ...

    def heartbeat(self, lease: Lease, progress: dict[str, Any] | None = None) -> bool:
        """Extend the lease and record progress; ``False`` means stop: the job was cancelled or reassigned."""
        ...

    def complete(self, lease: Lease, result: dict[str, Any]) -> bool:
        """Record the result; ``False`` if the lease is not (or no longer) the job's: first valid result wins."""
        ...

    def fail(self, lease: Lease, error: str, *, retry: bool = True) -> JobState:
        """Report a failure: requeued while attempts remain and ``retry``, else dead-lettered (``failed``)."""
        ...

    def release(self, lease: Lease) -> None:
        """Give the job back unrun (worker shutting down); the claim does not count as an attempt."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...

    def __enter__(self) -> Self:
        ...

    def __exit__(self, *exc: object) -> None:
        """Close."""
        ...


class QueueEngine(Producer, Consumer, Protocol):
    """What :func:`he_compute.transport.queue.connect` returns: one engine serving both roles."""
