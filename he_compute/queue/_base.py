"""What every queue engine shares: job states, the Job and Lease records, the JobQueue Protocol."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterable, Protocol, runtime_checkable

from ..errors import QueueError

DEFAULT_LEASE_S = 30.0
"""Seconds a claim lasts without a heartbeat; workers heartbeat every third of it."""

DEFAULT_MAX_ATTEMPTS = 3
"""Claims a job gets (first run plus retries) before it goes to the dead letter."""

_JOB_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


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


def dumps(obj: Any) -> str:
    """Canonical JSON: the only serialization jobs ever get (never pickle)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


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

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON view (for ``hec status --json``)."""
        d = dict(self.__dict__)
        d["state"] = self.state.value
        return d


@dataclass
class Lease:
    """A worker's claim on a job; ``token`` proves ownership to heartbeat, fail and release."""

    job: Job
    token: str
    worker: str
    ref: dict[str, str] = field(default_factory=dict)  # engine-specific (Redis stream and entry id)


@runtime_checkable
class JobQueue(Protocol):
    """The queue interface both engines implement.

    Example::

        job_id = q.submit(spec); lease = q.claim("w1"); q.complete(lease, {"outputs": [...]})
    """

    url: str
    lease_s: float

    def submit(self, spec: dict[str, Any], *, device: str = "cpu", max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> str:
        """Queue a JSON job for workers that have ``device``; return its id."""
        ...

    def claim(self, worker: str, *, devices: Iterable[str] = ("cpu",), block_s: float = 0.0) -> Lease | None:
        """Take the oldest job for one of ``devices`` (waiting up to ``block_s``); ``None`` if there is none."""
        ...

    def heartbeat(self, lease: Lease, progress: dict[str, Any] | None = None) -> bool:
        """Extend the lease and record progress; ``False`` means stop: the job was cancelled or reassigned."""
        ...

    def complete(self, lease: Lease, result: dict[str, Any]) -> bool:
        """Record the result; ``False`` if the job already had one (or was cancelled): first result wins."""
        ...

    def fail(self, lease: Lease, error: str, *, retry: bool = True) -> JobState:
        """Report a failure: requeued while attempts remain and ``retry``, else dead-lettered (``failed``)."""
        ...

    def release(self, lease: Lease) -> None:
        """Give the job back unrun (worker shutting down); the claim does not count as an attempt."""
        ...

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; ``False`` if it had already ended."""
        ...

    def status(self, job_id: str) -> Job:
        """The job's current record; :class:`QueueError` if there is no such job."""
        ...

    def jobs(self, state: JobState | None = None, limit: int = 1000) -> list[Job]:
        """Jobs, oldest first, optionally only those in ``state``."""
        ...

    def dead_letter(self) -> list[Job]:
        """Jobs that ran out of attempts or failed for good, with their last error."""
        ...

    def maintain(self) -> int:
        """Requeue (or dead-letter) jobs whose lease ran out; return how many were touched."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
