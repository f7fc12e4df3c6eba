"""Verification that holds: honest replicas agree by meaning, one party with many keys votes once,
receipts bind what was loaded, re-runs happen without a failed check, and the audit log is signed.

Workers are real: ``hec worker`` processes with their own identities and thread counts, or the real
:class:`Worker` loop in a thread; cheaters are threads that claim jobs like anyone else.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner

import he_compute
from he_compute.cli import main
from he_compute.client.run import AllowList, Policy, RunOptions, run
from he_compute.errors import InputError
from he_compute.formats.receipt import sign_receipt
from he_compute.transport import blobs, queue
from he_compute.transport.queue import JobState
from he_compute.worker.executor import InProcess
from he_compute.worker.identity import WorkerIdentity
from he_compute.worker.loop import Worker


def _hec_workers(tmp_path, urls, threads: list[int | None], operators: list[str]):
    """Start one ``hec worker`` per entry, each with its own identity; return the processes and an allow-list."""
    procs, allow = [], AllowList()
    for i, (t, op) in enumerate(zip(threads, operators)):
        state = tmp_path / f"w{i}"
        line = subprocess.run([sys.executable, "-m", "he_compute", "audit", "worker-key", "--state", str(state),
                               "--operator", op], capture_output=True, text=True, check=True).stdout.strip()
        allow.add(line, operator=op)
        cmd = [sys.executable, "-m", "he_compute", "worker", "--queue", urls[0], "--blobs", urls[1], "--device", "cpu",
               "--concurrency", "1", "--state", str(state)] + (["--threads", str(t)] if t else [])
        procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=open(tmp_path / f"w{i}.log", "ab")))
    return procs, allow


def _stop(procs):
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def test_honest_tfhe_replicas_at_1_2_and_default_threads_agree(tmp_path, compiled, cancer):
    c = compiled("tree")
    X = cancer[1][:3]
    urls = (f"sqlite://{tmp_path / 'q.db'}", f"file://{tmp_path / 'b'}")
    procs, allow = _hec_workers(tmp_path, urls, [1, 2, None], ["alice", "bob", "carol"])
    try:
        report = run(c.client.encrypt(X), c.bundle.server_part(),
                     he_compute.read_evaluation_keys(c.client.evaluation_keys_path), queue=urls[0], blobs=urls[1],
                     policy=Policy(replicas=3, allowed=allow, keys=c.client, decoys=0),
                     options=RunOptions(timeout=900, samples_per_job=1, show_progress=False))
    finally:
        _stop(procs)
    v = report.verification
    print("answers compared by meaning:", v["compared_by_meaning"], "tie-breakers:", v["tie_breakers"])
    assert v["flagged"] == {} and v["voters"] == ["operator alice", "operator bob", "operator carol"]
    np.testing.assert_allclose(c.client.decrypt(report.result), c.model.predict_proba(X, fhe="disable"), atol=1e-9)


class _Perturber(threading.Thread):
    """An honest CKKS worker whose answers differ in bytes, not in meaning, from everyone's: it adds 1e-9 to
    each output, as different hardware or libraries may change the last bits of an approximate result."""

    def __init__(self, q_url, b_url, ckks: dict, name: str):
        super().__init__(daemon=True)
        self.q, self.store, self.ckks, self.name = queue.connect(q_url), blobs.connect(b_url), ckks, name
        self.me, self.done, self.stopping = WorkerIdentity.generate(), 0, threading.Event()
        self.executor = InProcess()

    def run(self):
        from he_compute.formats.task import Task
        from he_compute.schemes.ckks.payload import Payload, pack, unpack
        from he_compute.schemes.ckks.seal import Engine, dump

        eng = Engine(self.ckks)
        while not self.stopping.is_set():
            lease = self.q.claim(self.name, block_s=0.05)
            if lease is None:
                continue
            task = Task.from_json(lease.job.spec)
            loaded = self.executor.load(task, self.store.get)
            outs = []
            for digest in task.inputs:
                p = unpack(self.executor.evaluate(self.store.get(digest)), role="output")
                nudged = [dump(eng.add_const(eng.ciphertext(ct), 1e-9)) for ct in p.ciphertexts]
                outs.append(self.store.put(pack(Payload("output", p.packing, p.n_samples, nudged, p.extra))))
            receipt = sign_receipt(self.me, job_id=lease.job.id, model_id=loaded.model_id, key_id=loaded.key_id,
                                   inputs=task.inputs, outputs=outs, timings={"eval_ms": 1})
            self.q.complete(lease, {"outputs": outs, "inputs": list(task.inputs), "receipt": receipt, "stats": {}})
            self.done += 1


def test_ckks_replicas_that_differ_in_bytes_but_not_in_meaning_agree(tmp_path, cancer):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    X_train, X_test, y_train, _ = cancer
    scaler = StandardScaler().fit(X_train)
    lr = LogisticRegression(max_iter=500).fit(scaler.transform(X_train), y_train)
    bundle = he_compute.compile(lr, scaler.transform(X_train), scheme="ckks", packing="batch")
    client = he_compute.Client.keygen(bundle, tmp_path / "keys")
    evk = he_compute.read_evaluation_keys(client.evaluation_keys_path)
    urls = (f"sqlite://{tmp_path / 'q.db'}", f"file://{tmp_path / 'b'}")
    honest = Worker(queue.connect(urls[0]), blobs.connect(urls[1]), executor=InProcess(), log=lambda m: None)
    other = _Perturber(urls[0], urls[1], bundle.manifest["ckks"], "perturber")
    allow = AllowList()
    allow.add(honest.identity.public_raw, operator="alice")
    allow.add(other.me.public_raw, operator="bob")
    t = threading.Thread(target=honest.run, kwargs={"poll_s": 0.05}, daemon=True)
    t.start()
    other.start()
    try:
        report = run(client.encrypt(scaler.transform(X_test)), bundle.server_part(), evk, queue=urls[0], blobs=urls[1],
                     policy=Policy(replicas=2, allowed=allow, keys=client, decoys=0),
                     options=RunOptions(timeout=300, show_progress=False))
    finally:
        honest.stop()
        other.stopping.set()
        t.join(30)
        other.join(30)
    v = report.verification
    assert other.done > 0 and v["compared_by_meaning"] >= 2 and v["flagged"] == {} and v["tie_breakers"] == 0
    got = client.decrypt(report.result)
    np.testing.assert_allclose(got, lr.predict_proba(scaler.transform(X_test)), atol=1e-3)


class _Sybil(threading.Thread):
    """One of several keys of one party: returns the same wrong answer (the inputs echoed) as its siblings,
    and claims jobs under an operator name of its own making."""

    def __init__(self, q_url, b_url, name: str):
        super().__init__(daemon=True)
        self.q, self.store, self.name = queue.connect(q_url), blobs.connect(b_url), name
        self.me, self.done, self.stopping = WorkerIdentity.generate(), 0, threading.Event()

    def run(self):
        while not self.stopping.is_set():
            lease = self.q.claim(self.name, block_s=0.05, operator=self.name)  # lies: one operator per key
            if lease is None:
                continue
            spec = lease.job.spec
            outs = list(spec["inputs"])
            receipt = sign_receipt(self.me, job_id=lease.job.id, model_id=spec["model_id"], key_id=spec["key_id"],
                                   inputs=spec["inputs"], outputs=outs, timings={"eval_ms": 1})
            self.q.complete(lease, {"outputs": outs, "inputs": spec["inputs"], "receipt": receipt, "stats": {}})
            self.done += 1


def test_one_party_with_three_keys_votes_once_and_is_outvoted(tmp_path, compiled, cancer):
    c = compiled("linear")
    X = cancer[1][:3]
    urls = (f"sqlite://{tmp_path / 'q.db'}?lease_s=5", f"file://{tmp_path / 'b'}")
    sybils = [_Sybil(*urls, f"mallory-{i}") for i in range(3)]
    honest = [Worker(queue.connect(urls[0]), blobs.connect(urls[1]), executor=InProcess(), name=f"h{i}",
                     log=lambda m: None) for i in range(2)]
    allow = AllowList()
    for s in sybils:
        allow.add(s.me.public_raw, operator="mallory")
    for op, w in zip(("alice", "bob"), honest):
        allow.add(w.identity.public_raw, operator=op)
    threads = [threading.Thread(target=w.run, kwargs={"poll_s": 0.05}, daemon=True) for w in honest]

    def honest_later() -> None:
        # The honest workers start once the sybils have answered two jobs: the queue hands out a group's
        # replicas first, so those two are replicas of one group and mallory's keys vote twice on it
        # (under load a race could otherwise spread the sybils over distinct groups, proving nothing).
        deadline = time.monotonic() + 120
        while sum(s.done for s in sybils) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        for t in threads:
            t.start()

    starter = threading.Thread(target=honest_later, daemon=True)
    for t in [*sybils, starter]:
        t.start()
    try:
        report = run(c.client.encrypt(X), c.bundle.server_part(),
                     he_compute.read_evaluation_keys(c.client.evaluation_keys_path), queue=urls[0], blobs=urls[1],
                     policy=Policy(replicas=3, allowed=allow, keys=c.client, decoys=0),
                     options=RunOptions(timeout=300, samples_per_job=1, show_progress=False))
    finally:
        for s in sybils:
            s.stopping.set()
        for w in honest:
            w.stop()
        starter.join(130)
        for t in [*sybils, *threads]:
            t.join(30)
    v = report.verification
    assert sum(s.done for s in sybils) >= 2, "the sybils never got two replicas: the test proved nothing"
    assert set(v["flagged"]) == {"operator mallory"} and v["duplicates"] >= 1
    assert v["rotate_keys"]  # a failed check: workers may have learnt from the run's reaction
    np.testing.assert_allclose(c.client.decrypt(report.result), c.model.predict_proba(X, fhe="disable"), atol=1e-9)


def test_replicas_without_known_operators_are_refused_in_one_line(tmp_path, compiled, cancer):
    c = compiled("linear")
    c.client.encrypt(cancer[1][:1]).save(tmp_path / "x.enc")
    res = CliRunner().invoke(main, ["run", str(tmp_path / "x.enc"), "--bundle", str(c.bundle_path), "--keys",
                                    str(c.client.keys_dir), "--queue", f"sqlite://{tmp_path / 'q.db'}", "-o",
                                    str(tmp_path / "y.enc"), "--replicas", "2"])
    assert res.exit_code == 1
    assert res.stderr.strip().startswith("Error: --replicas 2 needs workers whose operators are known")
    with pytest.raises(InputError, match="--accept-sybil-risk"):
        Policy(replicas=3, allowed=AllowList([WorkerIdentity.generate().public_raw])).check_operators(0)
    Policy(replicas=3, accept_sybil_risk=True).check_operators(0)  # accepted explicitly


def test_a_job_naming_another_model_or_key_gets_no_receipt(tmp_path, compiled, cancer):
    """The receipt binds what the worker loaded: a spec that names model M2 and keys K2 but points at the
    blobs of M1 and K1 fails (also on a cache hit) instead of being signed as M2/K2."""
    from queue_support import submit_samples

    m1, m2 = compiled("linear"), compiled("tree")
    with queue.connect(f"sqlite://{tmp_path / 'q.db'}") as q, blobs.connect(f"file://{tmp_path / 'b'}") as store:
        (honest,), _ = submit_samples(q, store, m1, cancer[1][:1])
        spec = dict(q.status(honest).spec)
        lying = q.submit({**spec, "model_id": m2.bundle.model_id, "key_id": m2.client.key_id})
        worker = Worker(q, store, executor=InProcess(), log=lambda m: None)
        assert worker.run(burst=True) == 2  # the honest job first: model and keys are cached for the lying one
        assert q.status(honest).state is JobState.DONE
        job = q.status(lying)
        assert job.state is JobState.FAILED and job.result is None and "KeyMismatchError" in job.error
        assert job.attempts == 1  # permanent: no retry elsewhere either


def test_decoy_reruns_happen_without_any_failed_check(tmp_path, compiled, cancer):
    c = compiled("linear")
    X = cancer[1][:4]
    urls = (f"sqlite://{tmp_path / 'q.db'}", f"file://{tmp_path / 'b'}")
    workers = [Worker(queue.connect(urls[0]), blobs.connect(urls[1]), executor=InProcess(), name=f"w{i}",
                      log=lambda m: None) for i in range(2)]
    allow = AllowList()
    for op, w in zip(("alice", "bob"), workers):
        allow.add(w.identity.public_raw, operator=op)
    threads = [threading.Thread(target=w.run, kwargs={"poll_s": 0.02}, daemon=True) for w in workers]
    for t in threads:
        t.start()
    try:
        report = run(c.client.encrypt(X), c.bundle.server_part(),
                     he_compute.read_evaluation_keys(c.client.evaluation_keys_path), queue=urls[0], blobs=urls[1],
                     policy=Policy(allowed=allow, decoys=1.0),
                     options=RunOptions(timeout=120, samples_per_job=1, show_progress=False))
        time.sleep(0.5)
    finally:
        for w in workers:
            w.stop()
        for t in threads:
            t.join(30)
    v = report.verification
    assert v["decoys"] == 4 and v["decoys_sent"] == 4 and v["flagged"] == {}
    with queue.connect(urls[0]) as q:
        assert len(q.jobs()) == 8  # every group ran twice, and no check had failed


def test_the_audit_log_is_signed_by_the_client_and_checked_against_its_own_copy(tmp_path, compiled, cancer):
    import hashlib
    import json

    from he_compute.formats.audit import leaf_hash
    from he_compute.formats.canonical import canonical

    c = compiled("linear")
    q_url = f"sqlite://{tmp_path / 'hec' / 'queue.db'}"
    with queue.connect(q_url) as q, blobs.connect(f"file://{tmp_path / 'hec' / 'blobs'}") as store:
        w = Worker(q, store, executor=InProcess(), log=lambda m: None)
        t = threading.Thread(target=w.run, kwargs={"poll_s": 0.02}, daemon=True)
        t.start()
        try:
            report = run(c.client.encrypt(cancer[1][:2]), c.bundle.server_part(),
                         he_compute.read_evaluation_keys(c.client.evaluation_keys_path), queue=q_url,
                         options=RunOptions(timeout=120, show_progress=False))
        finally:
            w.stop()
            t.join(30)
    audit = report.verification["audit"]
    assert "error" not in audit and audit["checkpoint"] == audit["size"] - 1
    assert (tmp_path / "hec" / "client.key").stat().st_mode & 0o077 == 0
    ok = CliRunner().invoke(main, ["audit", "verify", "--queue", q_url])
    assert ok.exit_code == 0 and "matches the checkpoint" in ok.stderr

    # Whoever stores the log rewrites it whole, recomputing every hash and the head: only the client's
    # own checkpoint can tell.
    path = tmp_path / "hec" / "audit.jsonl"
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    entries[1]["body"] = {"forged": True}
    kept = [e for e in entries if e["kind"] != "checkpoint"]  # it cannot forge the client's signature: drops them
    for i, e in enumerate(kept):
        e["i"] = i
        e["leaf"] = leaf_hash(e)
    prev = bytes(32)
    for e in kept:
        e["chain"] = hashlib.sha256(prev + bytes.fromhex(e["leaf"])).hexdigest()
        prev = bytes.fromhex(e["chain"])
    path.write_text("".join(canonical(e).decode() + "\n" for e in kept))
    (tmp_path / "hec" / "audit.jsonl.head").write_text(
        canonical({"size": len(kept), "chain": kept[-1]["chain"]}).decode())
    bad = CliRunner().invoke(main, ["audit", "verify", "--queue", q_url])
    assert bad.exit_code == 1 and "Error:" in bad.stderr and ("checkpoint" in bad.stderr or "deleted" in bad.stderr)


def test_keygen_rotate_keeps_the_old_keys_aside_and_makes_new_ones(compiled, tmp_path):
    import shutil

    c = compiled("linear")
    keys = tmp_path / "keys"
    shutil.copytree(c.client.keys_dir, keys)
    old = c.client.key_id
    res = CliRunner().invoke(main, ["keygen", str(c.bundle_path), "--keys", str(keys), "--rotate"])
    assert res.exit_code == 0, res.output
    assert f"retired the old keys to {keys / 'retired' / old[:16]}" in res.stderr
    new = he_compute.Client(keys)
    assert new.key_id != old and he_compute.Client(keys / "retired" / old[:16]).key_id == old
    assert (keys / "retired").stat().st_mode & 0o077 == 0
