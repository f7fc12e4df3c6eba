"""Cheating workers, written only against the public queue and blob interfaces, are caught.

With replicas=2 and an honest spare the run still returns the right answer
(equal to Concrete ML's clear quantized predict_proba); a lone cheater facing
canaries makes the run fail with a message naming it.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

import he_compute
from he_compute.client import run as runner
from he_compute.transport import blobs, queue
from he_compute.transport.queue import JobState
from he_compute.client.run import KnownAnswers
from he_compute.errors import CanaryFailed
from he_compute.formats.receipt import sign_receipt
from he_compute.worker.identity import WorkerIdentity
from he_compute.worker.loop import Worker
from he_compute.transport.audit import AuditLog
from he_compute.transport.locations import Locations

N = 6


class Cheater(threading.Thread):
    """A worker that claims jobs like any other and returns a wrong answer with a receipt."""

    def __init__(self, q_url: str, b_url: str, kind: str):
        super().__init__(daemon=True)
        self.q, self.store, self.kind = queue.connect(q_url), blobs.connect(b_url), kind
        self.me, self.other = WorkerIdentity.generate(), WorkerIdentity.generate()
        self.name, self.done, self.stopping = f"cheater-{kind}", 0, threading.Event()

    def outputs(self, spec: dict) -> list[str] | None:
        if self.kind == "huge":  # well-signed, but far larger than any result of this circuit
            return [self.store.put(os.urandom(4 << 20)) for _ in spec["inputs"]]
        if self.kind in ("random", "wrong-key", "not-a-dict", "other-model"):
            return [self.store.put(os.urandom(len(self.store.get(d)))) for d in spec["inputs"]]
        if self.kind == "echo":
            return list(spec["inputs"])
        # replay: a well-formed result of another job (another sample's encrypted prediction)
        for job in self.q.jobs(JobState.DONE):
            if job.result and job.result.get("inputs") != spec["inputs"] and job.worker != self.name:
                return list(job.result["outputs"])[: len(spec["inputs"])] * len(spec["inputs"])
        return None

    def run(self) -> None:
        while not self.stopping.is_set():
            lease = self.q.claim(self.name, devices=("cpu",), block_s=0.05)
            if lease is None:
                continue
            spec = lease.job.spec
            outs = self.outputs(spec)
            if outs is None:
                self.q.release(lease)
                time.sleep(0.05)
                continue
            model_id = "f" * 64 if self.kind == "other-model" else spec["model_id"]  # signs another model
            receipt = sign_receipt(self.me, job_id=lease.job.id, model_id=model_id, key_id=spec["key_id"],
                                   inputs=spec["inputs"], outputs=outs, timings={"eval_ms": 1})
            if self.kind == "wrong-key":  # claims to be `me` but signs with another key
                forged = sign_receipt(self.other, job_id=lease.job.id, model_id=spec["model_id"],
                                      key_id=spec["key_id"], inputs=spec["inputs"], outputs=outs,
                                      timings={"eval_ms": 1})
                receipt["sig"] = forged["sig"]
            result = {"outputs": outs, "inputs": spec["inputs"], "receipt": receipt, "stats": {}}
            self.q.complete(lease, [1] if self.kind == "not-a-dict" else result)
            self.done += 1


class Honest(threading.Thread):
    """The real :class:`Worker`, in a thread."""

    def __init__(self, q_url: str, b_url: str, name: str):
        super().__init__(daemon=True)
        self.worker = Worker(queue.connect(q_url), blobs.connect(b_url), name=name, log=lambda m: None)

    def run(self) -> None:
        self.worker.run(poll_s=0.05)


@pytest.fixture
def setup(compiled, cancer, tmp_path):
    c = compiled("linear")
    X_train, X_test, _, _ = cancer
    bundle = he_compute.load_bundle(c.bundle_path)
    return {"c": c, "X": X_test[:N], "X_known": X_train[:40], "server": bundle.server_part(),
            "evk": he_compute.read_evaluation_keys(c.client.evaluation_keys_path),
            "q": f"sqlite://{tmp_path}/queue.db?lease_s=5", "b": f"file://{tmp_path}/blobs"}


def _start(*threads):
    for t in threads:
        t.start()
    return threads


def _stop(threads):
    for t in threads:
        if isinstance(t, Cheater):
            t.stopping.set()
        else:
            t.worker.stop()
    for t in threads:
        t.join(10)


@pytest.mark.parametrize("kind", ["random", "replay", "echo", "wrong-key", "not-a-dict", "huge", "other-model"])
def test_replicas_with_an_honest_spare_return_the_right_answer(setup, kind):
    s = setup
    enc = s["c"].client.encrypt(s["X"])
    cheat = Cheater(s["q"], s["b"], kind)
    threads = _start(cheat, Honest(s["q"], s["b"], "honest-1"), Honest(s["q"], s["b"], "honest-2"))
    try:
        report = runner.run(enc, s["server"], s["evk"], queue=s["q"], blobs=s["b"], policy=runner.Policy(replicas=2, accept_sybil_risk=True),
                            options=runner.RunOptions(timeout=30, samples_per_job=1, show_progress=False))
    finally:
        _stop(threads)
    decrypted = s["c"].client.decrypt(report.result)
    np.testing.assert_allclose(decrypted, s["c"].model.predict_proba(s["X"], fhe="disable"), rtol=0, atol=1e-9)
    v = report.verification
    flagged = set(v["flagged"])
    assert cheat.done > 0, "the cheater never got a job: the test proved nothing"
    wanted = f"unverified:{cheat.name}" if kind in ("wrong-key", "not-a-dict", "other-model") else cheat.me.short_id
    assert flagged == {wanted}, v
    assert v["replicas"] == 2 and v["audit"]["size"] > 0
    with AuditLog.open(Locations.resolve(s["q"]).audit) as log:
        assert log.verify().size == v["audit"]["size"]


@pytest.mark.parametrize("kind", ["random", "echo"])
def test_a_lone_cheater_is_caught_by_canaries_and_named(setup, kind):
    s = setup
    c = s["c"]
    enc = c.client.encrypt(s["X"])
    known = KnownAnswers(c.client, s["X_known"], c.model.predict_proba(s["X_known"], fhe="disable"))
    cheat = Cheater(s["q"], s["b"], kind)
    threads = _start(cheat)
    try:
        with pytest.raises(CanaryFailed, match=f"worker {cheat.me.short_id} returned a wrong result for a canary"):
            runner.run(enc, s["server"], s["evk"], queue=s["q"], blobs=s["b"],
                       policy=runner.Policy(canaries=0.2, known_answers=known),
                       options=runner.RunOptions(timeout=60, samples_per_job=1, show_progress=False))
    finally:
        _stop(threads)
    # The workers learn nothing: the queue holds ordinary jobs and results only.
    for job in queue.connect(s["q"]).jobs():
        assert set(job.spec) == {"v", "op", "scheme", "model_id", "server", "keys", "key_id", "inputs", "counts"}


def test_canaries_with_honest_workers_pass_and_do_not_leak_into_the_result(setup):
    s = setup
    c = s["c"]
    enc = c.client.encrypt(s["X"])
    known = KnownAnswers(c.client, s["X_known"], c.model.predict_proba(s["X_known"], fhe="disable"))
    threads = _start(Honest(s["q"], s["b"], "honest-1"))
    try:
        report = runner.run(enc, s["server"], s["evk"], queue=s["q"], blobs=s["b"],
                            policy=runner.Policy(canaries=0.3, known_answers=known),
                            options=runner.RunOptions(timeout=60, samples_per_job=2, show_progress=False))
    finally:
        _stop(threads)
    assert report.verification["canaries"] == 2 and report.verification["flagged"] == {}
    assert len(report.result.sections) == N
    np.testing.assert_allclose(c.client.decrypt(report.result), c.model.predict_proba(s["X"], fhe="disable"),
                               rtol=0, atol=1e-9)


def test_an_allow_list_rejects_unknown_workers(setup, tmp_path):
    from he_compute.client.run import AllowList
    from he_compute.errors import VerificationError

    s = setup
    enc = s["c"].client.encrypt(s["X"][:2])
    threads = _start(Honest(s["q"], s["b"], "stranger"))
    try:
        with pytest.raises(VerificationError, match="unverified:stranger"):
            runner.run(enc, s["server"], s["evk"], queue=s["q"], blobs=s["b"],
                       options=runner.RunOptions(timeout=20, samples_per_job=1, show_progress=False),
                       policy=runner.Policy(allowed=AllowList([WorkerIdentity.generate().public_raw])))
    finally:
        _stop(threads)


def test_hec_run_with_replicas_local_workers_then_audit_verify(setup, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from he_compute.cli import main

    s = setup
    c = s["c"]
    c.client.encrypt(s["X"][:3]).save(tmp_path / "x.enc")
    np.save(tmp_path / "known.npy", s["X_known"])
    runner_ = CliRunner()
    q = f"sqlite://{tmp_path}/q2/queue.db"
    res = runner_.invoke(main, ["run", str(tmp_path / "x.enc"), "--bundle", str(c.bundle_path), "--keys",
                                str(c.client.keys_dir), "--queue", q, "-o", str(tmp_path / "y.enc"),
                                "--local-workers", "2", "--replicas", "2", "--canaries", "0.3",
                                "--canary-inputs", str(tmp_path / "known.npy"), "--timeout", "120"])
    assert res.exit_code == 0, res.stderr
    assert "verified: 2 replica(s), 1 canaries" in res.stderr and "flagged: none" in res.stderr
    y = c.client.decrypt(he_compute.read_container(tmp_path / "y.enc"))
    np.testing.assert_allclose(y, c.model.predict_proba(s["X"][:3], fhe="disable"), rtol=0, atol=1e-9)
    res = runner_.invoke(main, ["audit", "verify", "--queue", q])
    assert res.exit_code == 0 and "entries intact" in res.stderr + res.stdout
