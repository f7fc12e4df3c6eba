"""A hostile job cannot harm a worker: evaluation runs in a locked-down child process per model.

The crash is real: a client wraps another circuit's evaluation keys in an evaluation-key container that
names this model (it can compute the key id itself), so every format check passes, and Concrete's
bootstrap panics in Rust (``assertion left == right failed``, 256 vs 128) and aborts the process.  In
process, that kills the worker and everything it holds; in the sandbox it kills one child.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import numpy as np
import pytest

import he_compute
from he_compute.formats.container import Container
from he_compute.formats.evalkeys import key_id
from he_compute.formats.task import Task
from he_compute.transport import blobs, queue
from he_compute.transport.queue import JobState
from he_compute.worker.loop import Worker
from he_compute.worker.sandbox import Limits, Sandbox
from queue_support import decrypt_jobs, submit_samples


@pytest.fixture(scope="module")
def other_tree(cancer, tmp_path_factory):
    """A tree whose circuit has other TFHE parameters than the shared one (its keys do not fit)."""
    from concrete.ml.sklearn import DecisionTreeClassifier

    X_train, _, y_train, _ = cancer
    model = DecisionTreeClassifier(max_depth=3, n_bits=4, random_state=0).fit(X_train, y_train)
    bundle = he_compute.compile(model, X_train, scheme="tfhe")
    return he_compute.Client.keygen(bundle, tmp_path_factory.mktemp("other") / "keys")


@pytest.fixture
def env(tmp_path):
    with queue.connect(f"sqlite://{tmp_path / 'queue.db'}", lease_s=10) as q, \
            blobs.connect(f"file://{tmp_path / 'blobs'}") as store:
        yield q, store


def _evil_job(q, store, c, other_client, X, max_attempts=2) -> str:
    """A job for model ``c`` whose 'evaluation keys' are another circuit's keys, relabelled for this model."""
    foreign = he_compute.read_evaluation_keys(other_client.evaluation_keys_path).sections["keys"]
    nonce = secrets.token_bytes(32)
    evil = Container("evalkeys", "tfhe", {"model_id": c.bundle.model_id, "key_id": key_id(nonce, foreign)},
                     {"keys": foreign, "nonce": nonce})
    enc = c.client.encrypt(X[:1])
    task = Task("tfhe", c.bundle.model_id, store.put(c.bundle.server_part().to_bytes()), store.put(evil.to_bytes()),
                evil.meta["key_id"], (store.put(enc.sections["chunk/000000"]),), (1,))
    return q.submit(task.to_json(), max_attempts=max_attempts)


def test_crafted_keys_crash_only_the_sandbox_child_and_the_worker_goes_on(env, compiled, cancer, other_tree):
    q, store = env
    c = compiled("tree")
    X = cancer[1][:2]
    evil = _evil_job(q, store, c, other_tree, X, max_attempts=2)
    honest, _ = submit_samples(q, store, c, X, per_job=2)
    lines: list[str] = []
    worker = Worker(q, store, executor=Sandbox(), log=lines.append)
    assert worker.run(burst=True) == 3  # two attempts of the evil job, then the honest one
    job = q.status(evil)
    assert job.state is JobState.FAILED and job.attempts == 2
    assert "the evaluation process died (killed by SIG" in job.error, job.error
    assert q.status(honest[0]).state is JobState.DONE
    np.testing.assert_allclose(decrypt_jobs(q, store, c, honest), c.model.predict_proba(X, fhe="disable"), atol=1e-9)


def test_control_the_same_keys_kill_an_in_process_worker(env, compiled, cancer, other_tree, tmp_path):
    """Positive control: without the sandbox, the crafted job takes the whole worker process down."""
    q, store = env
    c = compiled("tree")
    _evil_job(q, store, c, other_tree, cancer[1][:1])
    code = ("import sys; from he_compute.transport import queue, blobs\n"
            "from he_compute.worker.executor import InProcess\nfrom he_compute.worker.loop import Worker\n"
            f"q = queue.connect({q.url!r}); s = blobs.connect({store.url!r})\n"
            "Worker(q, s, executor=InProcess(), log=lambda m: None).run(burst=True)\nprint('survived')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode < 0 or out.returncode == 134, (out.returncode, out.stderr[-400:])
    assert "survived" not in out.stdout


def test_a_job_past_its_time_limit_is_killed_and_dead_lettered(env, compiled, cancer):
    q, store = env
    c = compiled("tree")
    slow, _ = submit_samples(q, store, c, cancer[1][:6], per_job=6, max_attempts=1)
    worker = Worker(q, store, executor=Sandbox(), job_timeout_s=3.0, log=lambda m: None)
    assert worker.run(burst=True) == 1
    job = q.status(slow[0])
    assert job.state is JobState.FAILED and "ran past its time limit" in job.error


def test_the_child_holds_no_credential_has_limits_and_no_network(env, compiled, cancer, monkeypatch):
    q, store = env
    c = compiled("linear")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-leak")
    monkeypatch.setenv("HEC_QUEUE", "redis://:password@10.0.0.5:6379/0")
    submit_samples(q, store, c, cancer[1][:1])
    sandbox = Sandbox(Limits(memory=8 << 30))
    worker = Worker(q, store, executor=sandbox, log=lambda m: None)
    worker.stopping.set()  # run one job by hand so that the child is still there to inspect
    worker.run_one(q.claim("inspector"))
    (child,) = sandbox._children.values()
    pid = child.proc.pid
    environ = open(f"/proc/{pid}/environ", "rb").read().decode()
    assert "do-not-leak" not in environ and "HEC_QUEUE" not in environ and "10.0.0.5" not in environ
    limits = open(f"/proc/{pid}/limits").read()
    assert f"Max address space         {8 << 30}" in limits and "Max core file size        0" in limits
    status = open(f"/proc/{pid}/status").read()
    if os.geteuid() == 0:
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
        assert "no network (own network namespace)" in child.protections
    assert "Seccomp:\t2" in status and "no ptrace, namespaces or sockets (seccomp)" in child.protections
    sandbox.close()
    assert child.proc.poll() is not None


@pytest.mark.parametrize("kind", ["linear", "tree"])
def test_a_child_running_as_nobody_still_evaluates_real_jobs_correctly(env, compiled, cancer, kind):
    q, store = env
    c = compiled(kind)
    X = cancer[1][:3]
    ids, _ = submit_samples(q, store, c, X)
    sandbox = Sandbox(Limits(memory=8 << 30))
    worker = Worker(q, store, executor=sandbox, log=lambda m: None)
    worker.stopping.set()
    for _ in ids:
        worker.run_one(q.claim("nobody-check"))
    (child,) = sandbox._children.values()
    uid_line = next(line for line in open(f"/proc/{child.proc.pid}/status") if line.startswith("Uid:"))
    sandbox.close()
    if os.geteuid() == 0:
        assert uid_line.split()[1:] == ["65534"] * 4, uid_line
    assert all(q.status(j).state == JobState.DONE for j in ids)
    np.testing.assert_allclose(decrypt_jobs(q, store, c, ids), c.model.predict_proba(X, fhe="disable"), atol=1e-9)


def test_a_child_out_of_memory_fails_the_job_and_the_worker_goes_on(env, compiled, cancer):
    q, store = env
    c = compiled("linear")
    starved, _ = submit_samples(q, store, c, cancer[1][:1], max_attempts=1)
    worker = Worker(q, store, executor=Sandbox(Limits(memory=400 << 20)), log=lambda m: None)
    assert worker.run(burst=True) == 1
    job = q.status(starved[0])
    assert job.state is JobState.FAILED and "raise HEC_SANDBOX_MEMORY_MB" in job.error, job.error
    ok, _ = submit_samples(q, store, c, cancer[1][:1])
    assert Worker(q, store, executor=Sandbox(), log=lambda m: None).run(burst=True) == 1
    assert q.status(ok[0]).state is JobState.DONE
