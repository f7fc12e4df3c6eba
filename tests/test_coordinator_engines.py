"""The queue engines under a coordinator, where many workers answer to one operator: a job whose worker died
goes back to a worker of the same operator (it is a retry, not a second replica), while a second replica of
the group still never does.  Before this fix the Redis engine cycled such a job forever, running, unclaimable."""

from __future__ import annotations

import pytest

from he_compute.transport import queue
from queue_support import wait_for


@pytest.fixture(params=["sqlite", "redis"])
def engine(request, tmp_path):
    url = f"sqlite://{tmp_path / 'q.db'}" if request.param == "sqlite" else request.getfixturevalue("redis_url")
    with queue.connect(url, lease_s=0.5) as q:
        yield q


def test_a_dead_workers_job_goes_back_to_its_operator_but_a_second_replica_never_does(engine):
    replicas = [engine.submit({"n": i}, device="ops", group="run1/0") for i in range(2)]
    first = engine.claim("w1", devices=["ops"], operator="lab")
    assert first is not None and first.job.id in replicas
    # w1 dies (no heartbeat); w2 of the same operator must get that job back, and only that one.
    again = wait_for(lambda: engine.claim("w2", devices=["ops"], operator="lab", block_s=0.2), timeout=30,
                     what="the dead worker's job to come back")
    assert again.job.id == first.job.id and again.job.attempts == 2
    assert engine.complete(again, {"ok": True})
    assert engine.claim("w3", devices=["ops"], operator="lab", block_s=0.5) is None
    other = engine.claim("w4", devices=["ops"], operator="other-lab")
    assert other is not None and other.job.id != first.job.id


def test_reclaiming_a_dead_workers_jobs_counts_deliveries_only_for_the_job_taken(redis_url):  # noqa: F811
    """A worker dies holding four jobs; another takes them back one by one, and all four get done.  Claiming the
    idle entries in a batch used to count a delivery on each, dead-lettering jobs that were never retried."""
    with queue.connect(redis_url, lease_s=0.5) as q:
        ids = [q.submit({"n": i}, device="many", max_attempts=2) for i in range(4)]
        held = [q.claim("dies", devices=["many"]) for _ in ids]
        assert all(held)
        done = []
        while len(done) < len(ids):
            lease = wait_for(lambda: q.claim("lives", devices=["many"], block_s=0.2), timeout=60, what="a job back")
            assert q.complete(lease, {"ok": True})
            done.append(lease.job.id)
        assert sorted(done) == sorted(ids) and all(q.status(i).state.value == "done" for i in ids)
