"""Attacks on the queue, on both engines: forged leases, a submitter asking for endless retries, poison records.

Each test writes what a hostile party can write (a Lease object with a guessed token, a job record with
broken JSON put straight into the database) and checks the queue refuses it and keeps serving others.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from he_compute.transport.queue import MAX_ATTEMPTS_CAP, JobState, Lease
from he_compute.worker.loop import Worker


def _forge(lease: Lease) -> Lease:
    """What another worker can build: the job (it can list jobs) but not the token."""
    return Lease(job=lease.job, token="0" * 32, worker="attacker", ref=dict(lease.ref))


def _poison(q, job_id: str) -> None:
    """Overwrite a job's spec with bytes that are not JSON, as someone with database access could."""
    if q.url.startswith("sqlite://"):
        with sqlite3.connect(q.path) as db:
            db.execute("UPDATE jobs SET spec = ? WHERE id = ?", ("{not json", job_id))
    else:
        import redis

        redis.Redis.from_url(q.url).hset(f"hec:job:{job_id}", "spec", "{not json")


def test_a_forged_lease_can_neither_complete_fail_release_nor_heartbeat(q):
    job_id = q.submit({"n": 1})
    lease = q.claim("honest")
    forged = _forge(lease)
    assert not q.complete(forged, {"outputs": ["sha256:" + "0" * 64]})
    assert q.fail(forged, "sabotage", retry=False) is JobState.RUNNING
    q.release(forged)
    assert not q.heartbeat(forged)
    job = q.status(job_id)
    assert job.state is JobState.RUNNING and job.result is None and job.error in (None, "")
    assert q.complete(lease, {"by": "honest"})
    assert q.status(job_id).result == {"by": "honest"}


def test_the_queue_not_the_submitter_decides_how_often_a_job_is_retried(q):
    job_id = q.submit({"always": "crashes"}, max_attempts=10**6)
    assert q.status(job_id).max_attempts == MAX_ATTEMPTS_CAP
    runs = 0
    while (lease := q.claim("w")) is not None:
        runs += 1
        q.fail(lease, f"crash {runs}")
        assert runs <= MAX_ATTEMPTS_CAP
    assert runs == MAX_ATTEMPTS_CAP and q.status(job_id).state is JobState.FAILED


def test_a_record_rewritten_to_ask_for_more_attempts_is_still_capped(q):
    job_id = q.submit({"x": 1})
    if q.url.startswith("sqlite://"):
        with sqlite3.connect(q.path) as db:
            db.execute("UPDATE jobs SET max_attempts = ? WHERE id = ?", (10**6, job_id))
    else:
        import redis

        redis.Redis.from_url(q.url).hset(f"hec:job:{job_id}", "max_attempts", 10**6)
    runs = 0
    while (lease := q.claim("w")) is not None and runs < 50:
        runs += 1
        q.fail(lease, "crash")
    assert runs == MAX_ATTEMPTS_CAP and q.status(job_id).state is JobState.FAILED


def test_an_unreadable_job_record_goes_to_the_dead_letter_and_workers_go_on(q, tmp_path):
    from he_compute.transport import blobs

    poison = q.submit({"op": "evaluate"})
    honest = q.submit({"op": "noop"})
    _poison(q, poison)
    lease = q.claim("w1")
    assert lease is not None and lease.job.id == honest  # the poison record is skipped, not handed out
    job = q.status(poison)
    assert job.state is JobState.FAILED and "unreadable job record" in job.error
    assert [j.id for j in q.jobs(JobState.FAILED)] == [poison]
    q.release(lease)
    # A real worker survives it too (here the honest job is malformed for evaluation: it fails cleanly).
    again = q.submit({"op": "evaluate"})
    _poison(q, again)
    with blobs.connect(f"file://{tmp_path / 'blobs'}") as store:
        assert Worker(q, store, log=lambda m: None).run(burst=True) == 1
    assert q.status(again).state is JobState.FAILED and q.status(honest).state is JobState.FAILED


def test_listing_shows_an_unreadable_record_instead_of_crashing(q):
    job_id = q.submit({"a": 1})
    _poison(q, job_id)
    listed = {j.id: j for j in q.jobs()}
    assert "unreadable job record" in (listed[job_id].error or "")
    assert "unreadable job record" in (q.status(job_id).error or "")


def test_a_result_that_is_not_json_serializable_data_is_refused(q):
    q.submit({})
    lease = q.claim("w")
    with pytest.raises((TypeError, ValueError)):
        q.complete(lease, {"outputs": [float("nan")]})
    assert json.dumps(q.status(lease.job.id).spec) == "{}"
