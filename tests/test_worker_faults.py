"""Workers that die: SIGKILL mid-job, crash on every attempt, SIGTERM, a Redis restart.

Worker processes get test-only faults through ``queue_support.fault_env`` (see faults/sitecustomize.py):
``sleep=S`` slows each chunk so a test can kill the worker mid-job, ``exit`` kills
the worker as soon as it claims a job.
"""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest

from he_compute.transport import blobs, queue
from he_compute.transport.queue import JobState
from queue_support import decrypt_jobs, submit_samples, wait_for, worker_proc

LEASE = 1.5


@pytest.fixture(params=["sqlite", "redis"])
def urls(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'queue.db'}", f"file://{tmp_path / 'blobs'}"
    url = request.getfixturevalue("redis_url")
    return url, url


def _running_with_progress(q, job_id):
    job = q.status(job_id)
    return job.state is JobState.RUNNING and job.progress.get("done", 0) >= 1


def _kill_mid_job_then_finish(q, store, urls, job_id, tmp_path, between=None):
    slow = worker_proc(*urls, fault="sleep=1.0", lease=LEASE, log=tmp_path / "slow.log")
    try:
        wait_for(lambda: _running_with_progress(q, job_id), 90, what="the slow worker to be mid-job")
        slow.send_signal(signal.SIGKILL)
        slow.wait()
        if between:
            between()
        fresh = worker_proc(*urls, lease=LEASE, log=tmp_path / "fresh.log")
        try:
            wait_for(lambda: queue.connect(urls[0]).status(job_id).state in (JobState.DONE, JobState.FAILED), 90,
                     what="another worker to finish the job")
        finally:
            fresh.terminate()
            fresh.wait(30)
    finally:
        if slow.poll() is None:
            slow.kill()


def test_sigkill_mid_job_completes_on_another_worker(urls, compiled, cancer, tmp_path):
    q, store = queue.connect(urls[0], lease_s=LEASE), blobs.connect(urls[1])
    c = compiled("linear")
    X = cancer[1][:3]
    (job_id,), _ = submit_samples(q, store, c, X, per_job=3, max_attempts=3)
    _kill_mid_job_then_finish(q, store, urls, job_id, tmp_path)
    job = q.status(job_id)
    assert job.state is JobState.DONE and job.attempts == 2  # nothing lost, run once more, no further
    np.testing.assert_allclose(decrypt_jobs(q, store, c, [job_id]), c.model.predict_proba(X, fhe="disable"),
                               atol=1e-9)


def test_sigkill_then_redis_restart_still_completes(redis_server, redis_url, compiled, cancer, tmp_path):
    q, store = queue.connect(redis_url, lease_s=LEASE), blobs.connect(redis_url)
    c = compiled("linear")
    X = cancer[1][3:6]
    (job_id,), _ = submit_samples(q, store, c, X, per_job=3, max_attempts=3)
    _kill_mid_job_then_finish(q, store, (redis_url, redis_url), job_id, tmp_path, between=redis_server.restart)
    q = queue.connect(redis_url, lease_s=LEASE)
    job = q.status(job_id)
    assert job.state is JobState.DONE and job.attempts == 2
    np.testing.assert_allclose(decrypt_jobs(q, blobs.connect(redis_url), c, [job_id]),
                               c.model.predict_proba(X, fhe="disable"), atol=1e-9)


def test_job_that_kills_its_worker_every_time_ends_in_the_dead_letter(urls, compiled, cancer, tmp_path):
    q, store = queue.connect(urls[0], lease_s=LEASE), blobs.connect(urls[1])
    (job_id,), _ = submit_samples(q, store, compiled("linear"), cancer[1][:1], max_attempts=2)
    deaths = 0
    for _ in range(6):  # burst workers: each claims what it can (reaping expired leases first), then exits
        p = worker_proc(*urls, fault="exit", lease=LEASE, burst=True, log=tmp_path / "crash.log")
        deaths += p.wait(60) == 70
        if q.status(job_id).state is JobState.FAILED:
            break
        time.sleep(LEASE + 0.2)
    job = q.status(job_id)
    assert job.state is JobState.FAILED and job.attempts == 2 and deaths == 2  # never run past the limit
    assert "stopped heartbeating" in job.error
    assert [j.id for j in q.dead_letter()] == [job_id]


def test_job_that_raises_every_time_ends_in_the_dead_letter_with_its_error(tmp_path, compiled, cancer, monkeypatch):
    from he_compute.worker.loop import Worker

    def crash(self, lease, hb):
        raise ArithmeticError("simulated crash")  # a bug: nothing the worker loop expects

    q = queue.connect(f"sqlite://{tmp_path / 'q.db'}", lease_s=LEASE)
    store = blobs.connect(f"file://{tmp_path / 'b'}")
    (job_id,), _ = submit_samples(q, store, compiled("linear"), cancer[1][:1], max_attempts=3)
    monkeypatch.setattr(Worker, "_execute", crash)
    assert Worker(q, store, log=lambda m: None).run(burst=True) == 3
    job = q.status(job_id)
    assert job.state is JobState.FAILED and job.attempts == 3
    assert job.error == "ArithmeticError: simulated crash"


def test_sigterm_releases_the_job_in_hand(tmp_path, compiled, cancer):
    urls = (f"sqlite://{tmp_path / 'q.db'}", f"file://{tmp_path / 'b'}")
    q, store = queue.connect(urls[0], lease_s=LEASE), blobs.connect(urls[1])
    (job_id,), _ = submit_samples(q, store, compiled("linear"), cancer[1][:4], per_job=4, max_attempts=1)
    p = worker_proc(*urls, fault="sleep=1.0", lease=LEASE, log=tmp_path / "w.log")
    wait_for(lambda: _running_with_progress(q, job_id), 90, what="the worker to be mid-job")
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0
    job = q.status(job_id)
    assert job.state is JobState.QUEUED and job.attempts == 0  # released, not counted against max_attempts=1


def test_cli_worker_refuses_cuda_without_a_gpu(tmp_path):
    from click.testing import CliRunner

    from he_compute.cli import main

    result = CliRunner().invoke(main, ["worker", "--queue", f"sqlite://{tmp_path / 'q.db'}", "--device", "cuda",
                                       "--burst"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("Error: --device cuda: no usable GPU here")
