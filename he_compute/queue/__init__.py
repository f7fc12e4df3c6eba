"""The job queue: clients submit JSON jobs, untrusted workers claim them under a lease.

One small interface (:class:`JobQueue`), two engines picked by URL::

    sqlite:///abs/queue.db  or  sqlite://rel/queue.db   embedded default: one machine, many worker processes
    redis://host:port/db                                  Redis >= 6.2 Streams: many workers on many machines

Delivery is at-least-once: a job whose worker stops heartbeating is handed to
another worker after its lease runs out, up to ``max_attempts`` claims in all;
then it lands in the dead letter (state ``failed``) with its last error.
Completion is idempotent: the first result wins.  Jobs are JSON only (never
pickle); their payloads are blob digests (:mod:`he_compute.blobs`).

Example::

    from he_compute import queue
    q = queue.connect("sqlite://.hec/queue.db")
    job_id = q.submit({"op": "noop"}, device="cpu")
    lease = q.claim("worker-1", devices=("cpu",))
    q.heartbeat(lease, {"done": 1, "total": 2})
    q.complete(lease, {"outputs": []})
    assert q.status(job_id).state is queue.JobState.DONE
"""

from __future__ import annotations

import os

from ._base import (
    DEFAULT_LEASE_S,
    DEFAULT_MAX_ATTEMPTS,
    TERMINAL,
    Job,
    JobQueue,
    JobState,
    Lease,
    check_job_id,
)
from ._task import TASK_VERSION, Task

__all__ = [
    "DEFAULT_LEASE_S",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_URL",
    "TASK_VERSION",
    "TERMINAL",
    "Job",
    "JobQueue",
    "JobState",
    "Lease",
    "Task",
    "check_job_id",
    "connect",
    "default_url",
]

DEFAULT_URL = "sqlite://.hec/queue.db"
"""The embedded queue under ``./.hec/`` used when neither a URL nor ``HEC_QUEUE`` is given."""


def default_url() -> str:
    """``$HEC_QUEUE`` if set, else :data:`DEFAULT_URL`."""
    return os.environ.get("HEC_QUEUE") or DEFAULT_URL


def connect(url: str | None = None, *, lease_s: float | None = None) -> JobQueue:
    """Open the queue at ``url`` (default :func:`default_url`).

    ``lease_s`` (or ``?lease_s=N`` in the URL) is how long a claim lasts without
    a heartbeat before the job goes to another worker.

    Example::

        q = queue.connect("redis://127.0.0.1:6379/0", lease_s=30)
    """
    from urllib.parse import parse_qs

    from ..errors import QueueError

    url = url or default_url()
    base, _, query = url.partition("?")
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    if lease_s is None:
        try:
            lease_s = float(params.pop("lease_s", DEFAULT_LEASE_S))
        except ValueError:
            raise QueueError(f"{url!r}: lease_s must be a number of seconds") from None
    if lease_s <= 0:
        raise QueueError("the lease must be a positive number of seconds")
    scheme = base.split("://", 1)[0] if "://" in base else ""
    if scheme == "sqlite":
        from ._sqlite import SqliteQueue

        return SqliteQueue(base.split("://", 1)[1], lease_s=lease_s)
    if scheme in ("redis", "rediss", "unix"):
        from ._redis import RedisQueue

        return RedisQueue.from_url(base, lease_s=lease_s)
    raise QueueError(f"unknown queue URL {url!r}: use sqlite:///PATH/queue.db or redis://HOST:PORT/DB")
