"""hec worker stops when told and dies with its parent.

Real ``hec worker`` processes (several children each with their sandbox) get real signals: SIGTERM or
SIGINT stop them within the job in hand, a second signal at once (releasing the lease), SIGKILL leaves no
process of theirs behind, and a ``--burst`` worker gives up on a queue it cannot reach.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from he_compute.transport import blobs, queue
from he_compute.transport.queue import JobState
from queue_support import fault_env, free_port, submit_samples, wait_for

LEASE = 3.0


def _hec_worker(urls, *extra: str, fault: str = "", log: Path | None = None,
                env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "he_compute", "worker", "--queue", urls[0], "--blobs", urls[1], "--device", "cpu",
           "--lease", str(LEASE), *extra]
    full_env = {**os.environ, **fault_env(fault), "HEC_WORKER_STATE": "", **(env or {})}
    return subprocess.Popen(cmd, env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=open(log, "ab") if log else subprocess.DEVNULL)


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def env(tmp_path, compiled, cancer):
    urls = (f"sqlite://{tmp_path / 'q.db'}", f"file://{tmp_path / 'b'}")
    q, store = queue.connect(urls[0], lease_s=LEASE), blobs.connect(urls[1])
    yield urls, q, store, compiled("linear"), cancer[1]
    q.close()


def _mid_job(q, job_id):
    job = q.status(job_id)
    return job.state is JobState.RUNNING and job.progress.get("done", 0) >= 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_hec_worker_with_children_stops_within_the_job_in_hand(env, tmp_path, sig):
    urls, q, store, c, X = env
    (job_id,), _ = submit_samples(q, store, c, X[:6], per_job=6, max_attempts=1)
    proc = _hec_worker(urls, "--concurrency", "2", fault="sleep=1.0", log=tmp_path / "w.log")
    wait_for(lambda: _mid_job(q, job_id), 120, what="a worker to be mid-job")
    below = _descendants(proc.pid)
    start = time.monotonic()
    proc.send_signal(sig)
    assert proc.wait(30) == 0
    assert time.monotonic() - start < 15  # the sample in hand (about 1 s) and the release, not the whole job
    job = q.status(job_id)
    assert job.state is JobState.QUEUED and job.attempts == 0  # released, not counted
    wait_for(lambda: not any(_alive(p) for p in below), 10, what="every child to be gone")


def test_a_second_signal_stops_the_worker_at_once_and_releases_its_lease(env, tmp_path):
    urls, q, store, c, X = env
    (job_id,), _ = submit_samples(q, store, c, X[:2], per_job=2, max_attempts=1)
    proc = _hec_worker(urls, "--concurrency", "1", fault="sleep=60", log=tmp_path / "w.log")
    wait_for(lambda: q.status(job_id).state is JobState.RUNNING, 120, what="the worker to claim the job")
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0 and time.monotonic() - start < 10
    job = q.status(job_id)
    assert job.state is JobState.QUEUED and job.attempts == 0
    assert "stopped at once (second signal)" in (tmp_path / "w.log").read_text()


def test_sigkill_on_hec_worker_leaves_no_worker_process_behind(env, tmp_path):
    urls, q, store, c, X = env
    ids, _ = submit_samples(q, store, c, X[:2], per_job=1)
    proc = _hec_worker(urls, "--concurrency", "2", log=tmp_path / "w.log")
    wait_for(lambda: all(q.status(j).state is JobState.DONE for j in ids), 180, what="the workers to do the jobs")
    below = _descendants(proc.pid)
    assert len(below) >= 4  # two worker processes, each with its sandboxed evaluation child
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    wait_for(lambda: not any(_alive(p) for p in below), 15, what="every worker process to die with its parent")


def test_a_burst_worker_gives_up_on_a_queue_it_cannot_reach(tmp_path):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    proc = subprocess.run([sys.executable, "-m", "he_compute", "worker", "--queue", dead, "--burst",
                           "--concurrency", "1", "--device", "cpu"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HEC_BURST_PATIENCE_S": "3", "HEC_WORKER_STATE": ""})
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: the queue {dead} has been unreachable for 3s") and "Traceback" not in proc.stderr


def test_a_worker_process_that_dies_is_reported_and_restarted(env, tmp_path):
    urls, q, store, c, X = env
    log = tmp_path / "w.log"
    proc = _hec_worker(urls, "--concurrency", "2", log=log)
    try:
        wait_for(lambda: len([p for p in _descendants(proc.pid) if _is_worker(p)]) == 2, 60, what="two workers")
        victim = min(p for p in _descendants(proc.pid) if _is_worker(p))
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: "killed by SIGKILL" in log.read_text(), 30, what="the death to be reported")
        wait_for(lambda: len([p for p in _descendants(proc.pid) if _is_worker(p) and p != victim]) == 2, 60,
                 what="the dead worker to be restarted")
        ids, _ = submit_samples(q, store, c, X[:1])
        wait_for(lambda: q.status(ids[0]).state is JobState.DONE, 180, what="the workers to go on serving")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def _is_worker(pid: int) -> bool:
    """A ``hec worker`` child (not a sandboxed evaluation process)."""
    try:
        cmd = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"worker" in cmd and b"--concurrency" in cmd and _alive(pid)
