"""The job queue: clients submit JSON jobs, untrusted workers claim them under a lease.

Two roles (:class:`Producer` for clients, :class:`Consumer` for workers), two
engines picked by URL (see :mod:`he_compute.transport.locations`)::

    sqlite:///abs/queue.db  or  sqlite://rel/queue.db   embedded default: one machine, many worker processes
    redis://host:port/db                                  Redis >= 6.2 Streams: many workers on many machines

Delivery is at-least-once: a job whose worker stops heartbeating is handed to
another worker after its lease runs out, up to ``max_attempts`` claims in all
(the submitter's wish, capped by the queue's own :data:`MAX_ATTEMPTS_CAP`);
then it lands in the dead letter (state ``failed``) with its last error.
Every worker call carries the lease token and the engine checks it: only the
current holder of a lease can heartbeat, complete, fail or release the job.
Jobs are JSON only (never pickle); their payloads are blob digests.

Example::

    from he_compute.transport import queue
    with queue.connect("sqlite://.hec/queue.db") as q:
        job_id = q.submit({"op": "noop"}, device="cpu")
        lease = q.claim("worker-1", devices=("cpu",))
        q.heartbeat(lease, {"done": 1, "total": 2})
        q.complete(lease, {"outputs": []})
        assert q.status(job_id).state is queue.JobState.DONE
"""

from __future__ import annotations

from ...errors import QueueError
from ..locations import default_queue_url, is_redis, path_of, scheme_of, split_query
from .base import (
    DEFAULT_LEASE_S,
    DEFAULT_MAX_ATTEMPTS,
    MAX_ATTEMPTS_CAP,
    TERMINAL,
    Consumer,
    Job,
    JobState,
    Lease,
    Producer,
    QueueEngine,
    check_job_id,
    routed_device,
)

__all__ = [
    "DEFAULT_LEASE_S",
    "DEFAULT_MAX_ATTEMPTS",
    "MAX_ATTEMPTS_CAP",
    "TERMINAL",
    "Consumer",
    "Job",
    "JobState",
    "Lease",
    "Producer",
    "QueueEngine",
    "check_job_id",
    "connect",
    "routed_device",
]


def connect(url: str | None = None, *, lease_s: float | None = None) -> QueueEngine:
    """Open the queue at ``url`` (default ``$HEC_QUEUE`` or the embedded queue); the engine serves both roles.

    ``lease_s`` (or ``?lease_s=N`` in the URL) is how long a claim lasts without
    a heartbeat before the job goes to another worker.

    Example::

        q = queue.connect("redis://127.0.0.1:6379/0", lease_s=30)
    """
    url = url or default_queue_url()
    base, params = split_query(url)
    if lease_s is None:
        try:
            lease_s = float(params.pop("lease_s", DEFAULT_LEASE_S))
        except ValueError:
            raise QueueError(f"{url!r}: lease_s must be a number of seconds") from None
    if lease_s <= 0:
        raise QueueError("the lease must be a positive number of seconds")
    if scheme_of(base) == "sqlite" and "://" in base:
        from .sqlite import SqliteQueue

        return SqliteQueue(path_of(base), lease_s=lease_s)
    if is_redis(base):
        from .redis import RedisQueue

        return RedisQueue.from_url(base, lease_s=lease_s)
    raise QueueError(f"unknown queue URL {url!r}: use sqlite:///PATH/queue.db or redis://HOST:PORT/DB")
