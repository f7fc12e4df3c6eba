"""The audit log: intact logs verify; an edited, a deleted and a reordered entry are caught by index."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from he_compute.errors import AuditError
from he_compute.formats.audit import verify_inclusion
from he_compute.formats.receipt import sign_receipt
from he_compute.transport.audit import AuditLog
from he_compute.worker.identity import WorkerIdentity
from he_compute.formats.audit import merkle_root
from he_compute.transport.locations import audit_location as location_for_queue


@pytest.fixture
def cli():
    from he_compute.cli import main

    return main


def _fill(path, n=8):
    log = AuditLog.open(path)
    me = WorkerIdentity.generate()
    for i in range(n):
        job = f"job-{i // 2}"
        if i % 2 == 0:
            log.append("submit", job, {"spec": {"inputs": ["sha256:" + "a" * 64], "model_id": "m" * 64}})
        else:
            log.append("receipt", job, sign_receipt(me, job_id=job, model_id="m" * 64, key_id="k" * 64,
                                                    inputs=["sha256:" + "a" * 64], outputs=["sha256:" + "b" * 64],
                                                    timings={"eval_ms": i}))
    return log


def _lines(path):
    return path.read_text().splitlines()


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def test_an_intact_log_verifies_and_shows_a_job(tmp_path):
    log = _fill(tmp_path / "audit.jsonl")
    head = log.verify()
    assert head.size == 8 and head.root == log.root() and len(head.chain) == 64
    assert [e["kind"] for e in log.show("job-1")] == ["submit", "receipt"]
    assert log.verify(checkpoint=(5, log.root(5))) == head


def test_an_edited_entry_is_reported_by_index(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = _fill(path)
    lines = _lines(path)
    entry = json.loads(lines[3])
    entry["body"]["outputs"] = ["sha256:" + "c" * 64]
    lines[3] = json.dumps(entry)
    _write(path, lines)
    with pytest.raises(AuditError, match="entry 3 was rewritten") as info:
        log.verify()
    assert info.value.index == 3


def test_an_edit_with_recomputed_hashes_is_caught_by_the_head_and_checkpoint(tmp_path):
    from he_compute.formats.audit import leaf_hash

    path = tmp_path / "audit.jsonl"
    log = _fill(path)
    checkpoint = log.verify()
    lines = _lines(path)
    # A careful forger recomputes the leaf and every later chain hash.
    entries = [json.loads(line) for line in lines]
    entries[2]["body"]["spec"]["model_id"] = "z" * 64
    prev = bytes(32)
    import hashlib

    for e in entries:
        e["leaf"] = leaf_hash(e)
        e["chain"] = hashlib.sha256(prev + bytes.fromhex(e["leaf"])).hexdigest()
        prev = bytes.fromhex(e["chain"])
    _write(path, [json.dumps(e) for e in entries])
    with pytest.raises(AuditError, match="does not match the log's head"):
        log.verify()
    (tmp_path / "audit.jsonl.head").write_text(json.dumps({"size": 8, "chain": entries[-1]["chain"]}))
    log.verify()  # the forger also rewrote the head: only a checkpoint kept elsewhere can tell
    with pytest.raises(AuditError, match="do not match the checkpoint root"):
        log.verify(checkpoint=(checkpoint.size, checkpoint.root))


def test_a_deleted_entry_is_reported_by_index(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = _fill(path)
    lines = _lines(path)
    del lines[4]
    _write(path, lines)
    with pytest.raises(AuditError, match="entry 4 is missing.*deleted") as info:
        log.verify()
    assert info.value.index == 4


def test_a_deleted_tail_is_reported_against_the_head(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = _fill(path)
    _write(path, _lines(path)[:6])
    with pytest.raises(AuditError, match="head records 8: entries from 6 on were deleted") as info:
        log.verify()
    assert info.value.index == 6


def test_a_reordered_entry_is_reported_by_index(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = _fill(path)
    lines = _lines(path)
    lines[2], lines[5] = lines[5], lines[2]
    _write(path, lines)
    with pytest.raises(AuditError, match="entry 2 is out of place.*reordered") as info:
        log.verify()
    assert info.value.index == 2


def test_a_renumbered_reorder_still_breaks_the_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = _fill(path)
    entries = [json.loads(line) for line in _lines(path)]
    entries[2], entries[3] = entries[3], entries[2]
    entries[2]["i"], entries[3]["i"] = 2, 3
    _write(path, [json.dumps(e) for e in entries])
    with pytest.raises(AuditError, match="entry 2") as info:
        log.verify()
    assert info.value.index == 2


def test_garbage_line_is_reported(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = _fill(path)
    lines = _lines(path)
    lines[1] = lines[1][:-5]
    _write(path, lines)
    with pytest.raises(AuditError, match="entry 1 is not valid JSON"):
        log.verify()


def test_concurrent_appends_keep_one_chain(tmp_path):
    path = tmp_path / "audit.jsonl"

    def work(k):
        log = AuditLog.open(path)
        for i in range(20):
            log.append("submit", f"job-{k}-{i}", {"k": k})

    _in_threads(work, 4)
    assert AuditLog.open(path).verify().size == 80


def _in_threads(work, n):
    """``work(k)`` for ``k`` in ``range(n)``, each in its own thread, all at once."""
    threads = [threading.Thread(target=work, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_batches_store_together_with_one_fsync_and_keep_one_chain_with_concurrent_appenders(tmp_path, monkeypatch):
    """A batch's entries are stored when it ends (even by an exception), built one on the other under one
    lock and written with one fsync; batches and single appends from other threads still form one chain."""
    import os

    path = tmp_path / "audit.jsonl"
    fsyncs = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real(fd))[1])
    log = AuditLog.open(path)
    with log.batch():
        for i in range(10):
            log.append("submit", f"job-{i}", {"i": i})
        assert not path.exists()  # nothing stored until the batch ends
    # one fsync of the log, and the head's atomic write (its file and its directory); the log's very first
    # append writes the empty log's head first (crash consistency), another atomic write
    assert log.verify().size == 10 and len(fsyncs) == 5
    fsyncs.clear()
    with log.batch():
        for i in range(10):
            log.append("submit", f"job-b{i}", {"i": i})
    assert log.verify().size == 20 and len(fsyncs) == 3
    with pytest.raises(RuntimeError):
        with log.batch():
            log.append("submit", "job-x", {})
            raise RuntimeError("the run failed after submitting")
    assert [e["job"] for e in log.entries()][-1] == "job-x"

    def work(k):
        mine = AuditLog.open(path)
        for i in range(10):
            if k % 2:
                mine.append("submit", f"job-{k}-{i}", {"k": k})
            else:
                with mine.batch():
                    for j in range(3):
                        mine.append("receipt", f"job-{k}-{i}-{j}", {"k": k})

    _in_threads(work, 4)
    assert AuditLog.open(path).verify().size == 21 + 2 * 10 + 2 * 30


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=1, max_value=40), st.data())
def test_inclusion_proofs_verify_for_every_size_and_fail_for_another_leaf(n, data):
    import hashlib

    leaves = [hashlib.sha256(bytes([i])).digest() for i in range(n)]
    root = merkle_root(leaves).hex()
    index = data.draw(st.integers(min_value=0, max_value=n - 1))
    from he_compute.formats.audit import _path

    proof = [p.hex() for p in _path(index, leaves)]
    verify_inclusion(leaves[index].hex(), index, n, proof, root)
    wrong = (index + 1) % n
    if wrong != index:
        with pytest.raises(AuditError):
            verify_inclusion(leaves[wrong].hex(), index, n, proof, root)


def test_inclusion_proof_from_a_log(tmp_path):
    log = _fill(tmp_path / "audit.jsonl", 11)
    e = log.entries()[6]
    verify_inclusion(e["leaf"], 6, 11, log.inclusion_proof(6), log.root())
    with pytest.raises(AuditError):
        verify_inclusion(e["leaf"], 6, 11, log.inclusion_proof(5), log.root())


def test_the_log_lives_next_to_the_embedded_queue():
    assert location_for_queue("sqlite:///srv/hec/queue.db") == "/srv/hec/audit.jsonl"
    assert location_for_queue("sqlite://.hec/queue.db?lease_s=5") == ".hec/audit.jsonl"
    assert location_for_queue("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_cli_verify_detects_edit_delete_and_reorder(tmp_path, cli):
    runner = CliRunner()
    path = tmp_path / "audit.jsonl"
    _fill(path)
    queue = f"sqlite://{tmp_path}/queue.db"
    ok = runner.invoke(cli, ["audit", "verify", "--queue", queue])
    assert ok.exit_code == 0, ok.output
    assert "8 entries intact" in ok.output
    pristine = _lines(path)
    cases = {
        "edited": (lambda ls: ls.__setitem__(3, ls[3].replace('"eval_ms":3', '"eval_ms":4')), "entry 3 was rewritten"),
        "deleted": (lambda ls: ls.__delitem__(5), "entry 5 is missing"),
        "reordered": (lambda ls: ls.insert(1, ls.pop(6)), "entry 1 is out of place"),
    }
    for name, (mangle, message) in cases.items():
        lines = list(pristine)
        mangle(lines)
        _write(path, lines)
        res = runner.invoke(cli, ["audit", "verify", "--log", str(path)])
        assert res.exit_code == 1, name
        assert res.output.startswith(f"Error: audit {message}"), (name, res.output)
        assert len(res.output.strip().splitlines()) == 1
    _write(path, pristine)
    assert runner.invoke(cli, ["audit", "verify", "--log", str(path)]).exit_code == 0


def test_cli_verify_checkpoint_and_show(tmp_path, cli):
    runner = CliRunner()
    path = tmp_path / "audit.jsonl"
    log = _fill(path)
    res = runner.invoke(cli, ["audit", "verify", "--log", str(path), "--size", "4", "--root", log.root(4)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["audit", "verify", "--log", str(path), "--size", "4", "--root", "0" * 64])
    assert res.exit_code == 1 and "checkpoint root" in res.output
    res = runner.invoke(cli, ["audit", "show", "job-2", "--log", str(path)])
    assert res.exit_code == 0, res.output
    assert "submit" in res.output and "receipt from worker" in res.output
    shown = json.loads(runner.invoke(cli, ["audit", "show", "job-2", "--log", str(path), "--json"]).output)
    assert [e["i"] for e in shown] == [4, 5]
    res = runner.invoke(cli, ["audit", "show", "job-9", "--log", str(path)])
    assert res.exit_code == 1 and res.output == "Error: the audit log has no entry for job job-9\n"
    res = runner.invoke(cli, ["audit", "verify", "--log", str(tmp_path / "none.jsonl")])
    assert res.exit_code == 1 and "no audit log" in res.output


def test_cli_worker_key_prints_an_allow_list_line(tmp_path, cli):
    from he_compute.client.run import AllowList

    res = CliRunner().invoke(cli, ["audit", "worker-key", "--state", str(tmp_path / "w")])
    assert res.exit_code == 0, res.output
    me = WorkerIdentity.load(tmp_path / "w")
    assert AllowList.from_text(res.output).check(me.public_raw) == me.worker_id


def test_every_audit_command_has_help_with_an_example(cli):
    from he_compute.cli import commands

    group = commands()["audit"]
    for name, cmd in group.commands.items():
        assert cmd.help and "Example:" in cmd.help, name


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_the_redis_store_detects_a_rewrite(tmp_path):
    import socket
    import time

    import redis

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL)
    try:
        r = redis.Redis(port=port)
        for _ in range(100):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        url = f"redis://127.0.0.1:{port}/0"
        log = AuditLog.open(location_for_queue(url))
        for i in range(3):
            log.append("submit", f"job-{i}", {"n": i})
        with log.batch():  # stored in one transaction, on the same chain
            for i in range(3, 5):
                log.append("submit", f"job-{i}", {"n": i})
        assert log.verify().size == 5
        entry = json.loads(r.lindex("hec:audit", 2))
        entry["job"] = "job-x"
        r.lset("hec:audit", 2, json.dumps(entry))
        with pytest.raises(AuditError, match="entry 2 was rewritten"):
            log.verify()
        log.close()
    finally:
        proc.terminate()
        proc.wait()


def test_a_torn_last_line_is_reported_set_aside_and_appending_goes_on(tmp_path, cli):
    path = tmp_path / "audit.jsonl"
    log = _fill(path, n=4)
    head = log.verify()
    with open(path, "ab") as fh:  # a crash in the middle of the next append
        fh.write(b'{"v":1,"i":4,"t":17,"kind":"subm')
    torn = log.verify()
    assert (torn.size, torn.root, torn.torn_bytes) == (4, head.root, 32)
    res = CliRunner().invoke(cli, ["audit", "verify", "--log", str(path)])
    assert res.exit_code == 0 and "32 bytes of a torn last line follow entry 3" in res.stderr
    entry = log.append("submit", "job-4", {"n": 4})
    assert entry["i"] == 4
    after = log.verify()
    assert after.size == 5 and after.torn_bytes == 0
    assert (tmp_path / "audit.jsonl.torn").read_bytes().startswith(b'{"v":1,"i":4,"t":17')


def test_a_run_keeps_its_verified_results_when_the_audit_log_was_tampered_with(tmp_path, compiled, cancer):
    import threading

    import numpy as np

    import he_compute
    from he_compute.client.run import RunOptions, run
    from he_compute.transport import blobs, queue
    from he_compute.worker.executor import InProcess
    from he_compute.worker.loop import Worker

    c = compiled("linear")
    q_url, b_url = f"sqlite://{tmp_path}/queue.db", f"file://{tmp_path}/blobs"
    _fill(tmp_path / "audit.jsonl", n=4)
    lines = _lines(tmp_path / "audit.jsonl")
    entry = json.loads(lines[1])
    entry["job"] = "job-x"
    lines[1] = json.dumps(entry)
    (tmp_path / "audit.jsonl").write_text("\n".join(lines) + "\n")
    with queue.connect(q_url) as q, blobs.connect(b_url) as store:
        worker = Worker(q, store, executor=InProcess(), log=lambda m: None)
        thread = threading.Thread(target=worker.run, kwargs={"poll_s": 0.05}, daemon=True)
        thread.start()
        try:
            X = cancer[1][:2]
            report = run(c.client.encrypt(X), c.bundle.server_part(),
                         he_compute.read_evaluation_keys(c.client.evaluation_keys_path), queue=q_url, blobs=b_url,
                         options=RunOptions(timeout=120, show_progress=False))
        finally:
            worker.stop()
            thread.join(30)
    assert "entry 1 was rewritten" in report.verification["audit"]["error"]
    np.testing.assert_allclose(c.client.decrypt(report.result), c.model.predict_proba(X, fhe="disable"), atol=1e-9)
