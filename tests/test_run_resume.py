"""hec run under interruption: Ctrl-C and SIGTERM cancel its jobs; after SIGKILL the same command resumes.

The run is a real ``hec run`` process; workers are real :class:`Worker` loops in this process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
from click.testing import CliRunner

import he_compute
from he_compute.cli import main
from he_compute.transport import blobs, queue
from he_compute.transport.queue import JobState
from he_compute.worker.executor import InProcess
from he_compute.worker.loop import Worker
from queue_support import wait_for

N = 4


@pytest.fixture
def setup(compiled, cancer, tmp_path):
    c = compiled("linear")
    X = cancer[1][:N]
    c.client.encrypt(X).save(tmp_path / "x.enc")
    q_url = f"sqlite://{tmp_path / 'hec' / 'queue.db'}"
    args = ["run", str(tmp_path / "x.enc"), "--bundle", str(c.bundle_path), "--keys", str(c.client.keys_dir),
            "--queue", q_url, "-o", str(tmp_path / "y.enc"), "--samples-per-job", "1", "--timeout", "300"]
    return c, X, q_url, f"file://{tmp_path / 'hec' / 'blobs'}", args


def _start_run(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "he_compute", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "HEC_PROGRESS": "off"})


def _queued(q_url: str, n: int) -> list:
    with queue.connect(q_url) as q:
        jobs = q.jobs()
    return jobs if len(jobs) >= n else []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_hec_run_leaves_no_job_queued(setup, sig):
    c, X, q_url, b_url, args = setup
    proc = _start_run(args)
    wait_for(lambda: _queued(q_url, N), 120, what="the run to submit its jobs")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == ("Error: interrupted: the run's unfinished jobs were cancelled; run the "
                                            "same command again to resume (finished jobs are kept)")
    with queue.connect(q_url) as q:
        assert {j.state for j in q.jobs()} == {JobState.CANCELLED}


def test_a_killed_hec_run_is_resumed_without_resubmitting_finished_jobs(setup, tmp_path):
    c, X, q_url, b_url, args = setup
    proc = _start_run(args)
    jobs = wait_for(lambda: _queued(q_url, N), 120, what="the run to submit its jobs")
    with queue.connect(q_url) as q, blobs.connect(b_url) as store:
        worker = Worker(q, store, executor=InProcess(), log=lambda m: None)
        worker.stopping.set()
        for _ in range(2):  # two of the four jobs finish before the run is killed
            worker.run_one(q.claim("w1", operator=worker.operator))
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    with queue.connect(q_url) as q:
        states = sorted(j.state.value for j in q.jobs())
    assert states == ["done", "done", "queued", "queued"]

    with queue.connect(q_url) as q, blobs.connect(b_url) as store:
        worker = Worker(q, store, executor=InProcess(), log=lambda m: None)
        thread = threading.Thread(target=worker.run, kwargs={"poll_s": 0.05}, daemon=True)
        thread.start()
        try:
            res = CliRunner().invoke(main, args + ["--json"])
        finally:
            worker.stop()
            thread.join(30)
    assert res.exit_code == 0, res.output
    assert "resumed run" in res.stderr and "4 job group(s) had jobs from the earlier attempt" in res.stderr
    with queue.connect(q_url) as q:
        after = q.jobs()
    assert len(after) == N and {j.id for j in after} == {j.id for j in jobs}  # nothing resubmitted
    y = c.client.decrypt(he_compute.read_container(tmp_path / "y.enc"))
    np.testing.assert_allclose(y, c.model.predict_proba(X, fhe="disable"), atol=1e-9)

    res = CliRunner().invoke(main, args + ["--no-resume", "--timeout", "0.5"])  # a fresh run submits anew
    assert res.exit_code == 1 and "timed out" in res.stderr
