"""Queue semantics on both engines (sqlite, redis): claim, lease, heartbeat, retries, dead letter, cancel.

These tests use plain JSON jobs and in-process claims, no FHE: they run in seconds.
"""

from __future__ import annotations

import threading
import time

import pytest

from he_compute.transport import queue
from he_compute.errors import QueueError
from he_compute.transport.locations import default_queue_url
from he_compute.transport.queue import JobState
from queue_support import LEASE


def test_submit_claim_complete(q):
    job_id = q.submit({"n": 1})
    assert q.status(job_id).state is JobState.QUEUED
    lease = q.claim("w1")
    assert lease.job.id == job_id and lease.job.spec == {"n": 1} and lease.job.attempts == 1
    assert q.status(job_id).state is JobState.RUNNING
    assert q.heartbeat(lease, {"done": 1, "total": 2})
    assert q.status(job_id).progress == {"done": 1, "total": 2}
    assert q.complete(lease, {"outputs": ["x"]})
    job = q.status(job_id)
    assert job.state is JobState.DONE and job.result == {"outputs": ["x"]}
    assert q.claim("w2") is None
    assert isinstance(q, queue.Producer) and isinstance(q, queue.Consumer)


def test_jobs_are_claimed_oldest_first_and_listed(q):
    ids = [q.submit({"i": i}) for i in range(3)]
    assert [j.id for j in q.jobs()] == ids
    assert q.claim("w").job.id == ids[0]
    assert [j.id for j in q.jobs(JobState.QUEUED)] == ids[1:]


def test_concurrent_claims_never_share_a_job(q, tmp_path):
    n = 20
    for i in range(n):
        q.submit({"i": i})
    got: list[str] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        own = queue.connect(q.url, lease_s=30)
        while (lease := own.claim(name)) is not None:
            with lock:
                got.append(lease.job.id)
            own.complete(lease, {})

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == n and len(set(got)) == n


def test_expired_lease_goes_to_another_worker_and_first_result_wins(q):
    job_id = q.submit({"x": 1}, max_attempts=3)
    first = q.claim("dead-worker")
    time.sleep(LEASE + 0.3)
    second = q.claim("live-worker")
    assert second is not None and second.job.id == job_id and second.job.attempts == 2
    assert "stopped heartbeating" in q.status(job_id).error
    assert not q.heartbeat(first)  # the old lease is gone
    assert q.complete(second, {"by": "live"})
    assert not q.complete(first, {"by": "dead"})  # a late duplicate does not overwrite
    assert q.status(job_id).result == {"by": "live"}


def test_heartbeat_keeps_the_lease(q):
    q.submit({})
    lease = q.claim("w1")
    for _ in range(4):
        time.sleep(LEASE / 2)
        assert q.heartbeat(lease)
    assert q.claim("w2") is None


def test_lost_workers_exhaust_retries_into_the_dead_letter(q):
    job_id = q.submit({}, max_attempts=2)
    for _ in range(2):
        assert q.claim("crashy") is not None
        time.sleep(LEASE + 0.3)
    assert q.claim("w") is None  # a third run would be past the retry limit
    job = q.status(job_id)
    assert job.state is JobState.FAILED and job.attempts == 2
    assert "stopped heartbeating" in job.error
    assert [j.id for j in q.dead_letter()] == [job_id]


def test_fail_retries_then_dead_letters_with_the_last_error(q):
    job_id = q.submit({}, max_attempts=3)
    for attempt in (1, 2, 3):
        lease = q.claim("w")
        assert lease.job.attempts == attempt
        state = q.fail(lease, f"boom {attempt}")
    assert state is JobState.FAILED
    job = q.status(job_id)
    assert job.state is JobState.FAILED and job.error == "boom 3" and job.attempts == 3
    assert q.claim("w") is None
    assert [j.id for j in q.dead_letter()] == [job_id]


def test_permanent_failure_skips_retries(q):
    job_id = q.submit({}, max_attempts=5)
    assert q.fail(q.claim("w"), "malformed job", retry=False) is JobState.FAILED
    assert q.status(job_id).attempts == 1


def test_release_does_not_count_an_attempt(q):
    job_id = q.submit({}, max_attempts=1)
    q.release(q.claim("stopping"))
    job = q.status(job_id)
    assert job.state is JobState.QUEUED and job.attempts == 0
    assert q.claim("w").job.id == job_id


def test_cancel_queued_and_running(q):
    a, b = q.submit({"a": 1}), q.submit({"b": 1})
    assert q.cancel(a)
    lease = q.claim("w")
    assert lease.job.id == b  # the cancelled job is skipped
    assert q.cancel(b)
    assert not q.heartbeat(lease)  # the worker learns at its next heartbeat
    assert not q.complete(lease, {})
    assert q.status(b).state is JobState.CANCELLED
    assert not q.cancel(b)


def test_jobs_go_only_to_workers_with_their_device(q):
    gpu_job = q.submit({"g": 1}, device="cuda")
    cpu_job = q.submit({"c": 1}, device="cpu")
    assert q.claim("cpu-worker", devices=["cpu"]).job.id == cpu_job
    assert q.claim("cpu-worker", devices=["cpu"]) is None
    assert q.claim("gpu-worker", devices=["cuda"]).job.id == gpu_job


def test_blocking_claim_waits_for_a_job(q):
    threading.Timer(0.3, lambda: q.submit({"late": 1})).start()
    start = time.monotonic()
    lease = q.claim("w", block_s=3)
    assert lease is not None and lease.job.spec == {"late": 1} and time.monotonic() - start < 2.5


def test_unknown_and_malformed_job_ids(q):
    with pytest.raises(QueueError, match="no job"):
        q.status("jdoesnotexist")
    with pytest.raises(QueueError, match="not a job id"):
        q.status("../etc/passwd")


def test_jobs_are_json_only(q):
    with pytest.raises((TypeError, ValueError)):
        q.submit({"obj": object()})


def test_connect_refuses_unknown_urls():
    with pytest.raises(QueueError, match="unknown queue URL"):
        queue.connect("amqp://localhost")


def test_default_url_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("HEC_QUEUE", raising=False)
    assert default_queue_url() == "sqlite://.hec/queue.db"
    monkeypatch.setenv("HEC_QUEUE", "redis://h:1/0")
    assert default_queue_url() == "redis://h:1/0"


def test_redis_jobs_survive_a_restart(redis_server, redis_url):
    q = queue.connect(redis_url, lease_s=LEASE)
    waiting = q.submit({"w": 1})
    running = q.submit({"r": 1})
    lease = q.claim("w-before")  # takes `waiting` (oldest)
    assert lease.job.id == waiting
    redis_server.restart()
    q2 = queue.connect(redis_url, lease_s=LEASE)
    assert q2.status(waiting).state is JobState.RUNNING
    time.sleep(LEASE + 0.3)
    got = {q2.claim("w-after").job.id, q2.claim("w-after").job.id}
    assert got == {waiting, running}  # the pending entry is reclaimed, the new one read
    assert q2.dead_letter() == []


def test_redis_dead_letter_stream_holds_the_error(redis_url):
    import redis

    q = queue.connect(redis_url, lease_s=LEASE)
    job_id = q.submit({}, max_attempts=1)
    q.fail(q.claim("w"), "RuntimeError: broke")
    entries = redis.Redis.from_url(redis_url).xrange("hec:dead")
    assert [(e[1][b"job"].decode(), e[1][b"error"].decode()) for e in entries] == [(job_id, "RuntimeError: broke")]


def test_no_operator_gets_two_replicas_of_one_group(q):
    first = q.submit({"r": 0}, group="run1/g0")
    second = q.submit({"r": 1}, group="run1/g0")
    other = q.submit({"x": 1}, group="run1/g1")
    a = q.claim("w-a", operator="alice")
    assert a.job.id == first and a.job.group == "run1/g0"
    # alice's second worker may not take the other replica, but may take another group's job
    b = q.claim("w-b", operator="alice")
    assert b.job.id == other
    assert q.claim("w-b", operator="alice") is None
    c = q.claim("w-c", operator="bob")
    assert c.job.id == second
    # without an operator a worker is its own operator
    q.submit({"r": 0}, group="run1/g2")
    q.submit({"r": 1}, group="run1/g2")
    assert q.claim("solo") is not None and q.claim("solo") is None


def test_jobs_filter_by_run_and_age(q):
    a = q.submit({"a": 1}, run="run-a")
    time.sleep(0.05)
    cut = time.time()
    time.sleep(0.05)
    b = q.submit({"b": 1}, run="run-b")
    assert [j.id for j in q.jobs(run="run-a")] == [a] and q.status(a).run == "run-a"
    assert [j.id for j in q.jobs(since=cut)] == [b]
    with pytest.raises(QueueError, match="not a valid run id"):
        q.submit({}, run="bad run id with spaces")


def test_an_operator_may_retry_its_own_job_and_after_a_release_take_another_replica(q):
    a = q.submit({"r": 0}, group="run2/g0", max_attempts=3)
    b = q.submit({"r": 1}, group="run2/g0", max_attempts=3)
    lease = q.claim("solo")
    assert lease.job.id == a
    q.fail(lease, "transient", retry=True)
    again = q.claim("solo")
    assert again.job.id == a and again.job.attempts == 2  # its own job comes back to it; the replica does not
    q.release(again)  # released unrun: the operator ran nothing of this group
    assert q.claim("solo").job.id in (a, b)


def test_statuses_and_counts_answer_in_one_call(q):
    """A verifier polls many jobs at once and ``hec status`` counts without listing: both agree with status()."""
    a, b, c = (q.submit({"n": i}, run="r1" if i < 2 else "r2") for i in range(3))
    lease = q.claim("w1")
    q.complete(lease, {"outputs": ["x"]})
    got = q.statuses([a, b, c, "no-such-job"])
    assert sorted(got) == sorted([a, b, c])
    assert all(got[j] == q.status(j) for j in (a, b, c))
    assert q.counts() == {JobState.DONE: 1, JobState.QUEUED: 2}
    assert q.counts(run="r1") == {JobState.DONE: 1, JobState.QUEUED: 1}
    assert q.counts(run="r2") == {JobState.QUEUED: 1}
    assert q.counts(run="none") == {}
    assert q.statuses([]) == {}
