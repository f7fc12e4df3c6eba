"""Helpers shared by the queue, blob, worker and run tests (no tests here; the fixtures are in conftest.py).

A test session starts one ``redis-server`` (Debian's, installed by ``make redis``) and one moto S3 server on
free loopback ports (conftest.py's ``redis_server`` and ``s3_endpoint``), and kills them after.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A throw-away redis-server with AOF persistence (fsync always) in ``directory``."""

    def __init__(self, directory: Path):
        self.dir, self.port = directory, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed: run make redis (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # redis flushes the AOF and exits
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def flush(self) -> None:
        import redis

        redis.Redis(port=self.port).flushall()


LEASE = 0.6  # seconds: short leases make expiry tests quick


FAULTS = Path(__file__).resolve().parent / "faults"


def fault_env(fault: str) -> dict[str, str]:
    """Environment that makes the worker processes started with it misbehave (see faults/sitecustomize.py)."""
    if not fault:
        return {}
    path = os.pathsep.join(p for p in (str(FAULTS), os.environ.get("PYTHONPATH", "")) if p)
    return {"HE_COMPUTE_TEST_FAULT": fault, "PYTHONPATH": path}


def worker_proc(queue_url: str, blobs_url: str, *, fault: str = "", lease: float = 1.5, burst: bool = False,
                log: Path | None = None) -> subprocess.Popen:
    """Start one worker process (one thread) with an optional test fault."""
    from he_compute.commands import WorkerOptions

    env = {**os.environ, **fault_env(fault), "OMP_NUM_THREADS": "1"}
    cmd = WorkerOptions(device="cpu", threads=1, burst=burst, lease_s=lease).argv(queue_url, blobs_url)
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                            stderr=open(log, "ab") if log else subprocess.DEVNULL)


def wait_for(predicate, timeout: float = 60.0, every: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


PYTHON = sys.executable


def submit_samples(q, store, compiled, X, *, per_job: int = 1, max_attempts: int = 3, server_part=None):
    """Encrypt ``X`` with the compiled model's client, upload everything, submit jobs; return (job ids, enc)."""
    import he_compute
    from he_compute.formats.ciphertexts import chunk_name
    from he_compute.formats.task import Task

    enc = compiled.client.encrypt(compiled.prepare(X))
    part = server_part or compiled.bundle.server_part()
    evk = he_compute.read_evaluation_keys(compiled.client.evaluation_keys_path)
    server, keys = store.put(part.to_bytes()), store.put(evk.to_bytes())
    inputs = [store.put(enc.sections[chunk_name(i)]) for i in range(len(enc.sections))]
    counts = enc.meta["chunks"]
    ids = []
    for i in range(0, len(inputs), per_job):
        task = Task("tfhe", part.meta["model_id"], server, keys, evk.meta["key_id"],
                    tuple(inputs[i : i + per_job]), tuple(counts[i : i + per_job]))
        ids.append(q.submit(task.to_json(), max_attempts=max_attempts))
    return ids, enc


def decrypt_jobs(q, store, compiled, job_ids):
    """Decrypt the outputs of finished jobs, in order, into one array."""
    import numpy as np

    rows = []
    for job_id in job_ids:
        for digest in q.status(job_id).result["outputs"]:
            rows.append(compiled.client._backend.decrypt(store.get(digest), 1))
    return np.concatenate(rows)
