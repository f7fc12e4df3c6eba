"""A verifier learns of finished jobs by one batch-status call per poll, on every queue and over a coordinator;
a tenant asking the statuses of another tenant's jobs learns nothing (issue 23, issue 21's polling item)."""

from __future__ import annotations

import json
import threading
from collections import Counter

import httpx
import numpy as np
import pytest

import he_compute
from he_compute.client.run import runner
from he_compute.transport import blobs, queue
from he_compute.transport.remote import RemoteBlobs, RemoteProducer, Session
from he_compute.transport.remote.wire import API
from he_compute.worker.loop import Worker
from coordinator_support import CoordinatorProc, worker_proc, stop_all

N = 6  # jobs per run: one sample each


def _inputs(compiled, cancer):
    c = compiled("linear")
    bundle = he_compute.load_bundle(c.bundle_path)
    X = cancer[1][:N]
    return c, X, c.client.encrypt(X), bundle.server_part(), he_compute.read_evaluation_keys(c.client.evaluation_keys_path)


def test_a_run_of_n_jobs_asks_the_queue_once_per_poll_not_once_per_job(compiled, cancer, tmp_path):
    """Old code: one ``status`` per pending job per poll (at least N on the first poll), no ``statuses``."""
    c, X, enc, server, evk = _inputs(compiled, cancer)
    q_url, b_url = f"sqlite://{tmp_path}/queue.db", f"file://{tmp_path}/blobs"
    q = queue.connect(q_url)
    calls: Counter[str] = Counter()
    asked: list[int] = []
    status, statuses = q.status, q.statuses

    def one(job_id):
        calls["status"] += 1
        return status(job_id)

    def batch(job_ids):
        calls["statuses"] += 1
        asked.append(len(job_ids))
        return statuses(job_ids)

    q.status, q.statuses = one, batch  # type: ignore[method-assign]
    worker = Worker(queue.connect(q_url), blobs.connect(b_url), name="w", log=lambda m: None)
    thread = threading.Thread(target=worker.run, kwargs={"poll_s": 0.05}, daemon=True)
    thread.start()
    try:
        report = runner.run(enc, server, evk, queue=q, blobs=b_url,
                            options=runner.RunOptions(timeout=120, samples_per_job=1, resume=False, show_progress=False))
    finally:
        worker.stop()
        thread.join(30)
    np.testing.assert_allclose(c.client.decrypt(report.result), c.model.predict_proba(X, fhe="disable"), atol=1e-9)
    assert calls["status"] == 0, calls  # nothing asked job by job
    assert asked and asked[0] == N  # the first poll covers every job in one call
    assert calls["statuses"] < sum(asked), (calls, asked)  # fewer calls than job lookups


@pytest.fixture(scope="module")
def coord(tmp_path_factory, tls):  # noqa: F811
    c = CoordinatorProc(tmp_path_factory.mktemp("batch") / "data", tls).start()
    yield c
    c.stop()


class Counted(Session):
    """A tenant session that counts its requests by method and route."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: Counter[str] = Counter()

    def request(self, method, path, **kwargs):
        route = path.split("?")[0]
        parts = route.split("/")
        if len(parts) > 3 and parts[2] == "jobs" and parts[3].startswith("j"):
            parts[3] = "{id}"
        self.seen[f"{method} {'/'.join(parts)}"] += 1
        return super().request(method, path, **kwargs)


def test_a_run_through_a_coordinator_polls_by_batch_and_at_most_five_times_a_second(coord, compiled, cancer,
                                                                                      tmp_path, monkeypatch):
    """Old code: every poll tick asked ``GET /v1/jobs/{id}`` and listed the whole run (``GET /v1/jobs``)."""
    import time

    c, X, enc, server, evk = _inputs(compiled, cancer)
    monkeypatch.setenv("HEC_CHECKPOINTS", str(tmp_path / "checkpoints.json"))
    s = Counted(coord.url, token=coord.token(), ca=str(coord.tls[0]))
    w = worker_proc(coord, tmp_path / "w", token_file=coord.data / "enroll.token", log=tmp_path / "w.log")
    try:
        t0 = time.monotonic()
        report = runner.run(enc, server, evk, queue=RemoteProducer(s), blobs=RemoteBlobs(s),
                            options=runner.RunOptions(timeout=300, samples_per_job=1, resume=False, show_progress=False))
        took = time.monotonic() - t0
    finally:
        stop_all([w])
    np.testing.assert_allclose(c.client.decrypt(report.result), c.model.predict_proba(X, fhe="disable"), atol=1e-9)
    polls = s.seen[f"POST {API}/jobs/statuses"]
    print(f"{N} jobs in {took:.1f} s: {polls} batch-status requests")
    assert polls >= 1, s.seen
    assert s.seen[f"GET {API}/jobs/{{id}}"] == 0 and s.seen[f"GET {API}/jobs"] == 0, s.seen
    assert polls <= took / 0.2 + 2, (polls, took)  # one small request per 0.2 s at most, whatever N is


def test_a_tenant_asking_statuses_of_another_tenants_jobs_learns_nothing(coord, tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "he_compute", "coordinator", "add-tenant", "eve", "--data",
                          str(coord.data)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    alice = Session(coord.url, token=coord.token(), ca=str(coord.tls[0]))
    qa, sa = RemoteProducer(alice), RemoteBlobs(alice)
    d = sa.put(b"alice's input " + tmp_path.name.encode())
    mine = [qa.submit({"server": d, "keys": d, "inputs": [d]}, device="batchstatus") for _ in range(3)]
    assert set(qa.statuses(mine)) == set(mine)  # the owner sees its own
    eve = RemoteProducer(Session(coord.url, token=out.stdout.strip(), ca=str(coord.tls[0])))
    ghost = "j" + "0" * 20
    assert eve.statuses(mine + [ghost, "not-a-job-id"]) == {}  # the same answer as for ids that never existed
    # By hand: the answer holds no record, no count, nothing that tells an owned id from an absent one.
    with httpx.Client(verify=str(coord.tls[0])) as h:
        headers = {"authorization": f"Bearer {out.stdout.strip()}"}
        theirs = h.post(coord.url + f"{API}/jobs/statuses", json={"ids": mine}, headers=headers)
        nobody = h.post(coord.url + f"{API}/jobs/statuses", json={"ids": [ghost] * 3}, headers=headers)
        assert theirs.status_code == nobody.status_code == 200 and theirs.json() == nobody.json() == {"jobs": {}}
        # A page past the cap is refused before any id is looked up.
        big = h.post(coord.url + f"{API}/jobs/statuses", json={"ids": [ghost] * 501}, headers=headers)
        assert big.status_code in (413, 422) and "jobs" not in big.json(), big.text
        # Without a token: refused.
        assert h.post(coord.url + f"{API}/jobs/statuses", content=json.dumps({"ids": mine})).status_code == 401
    for job_id in mine:
        qa.cancel(job_id)


def test_owners_of_a_batch_are_read_at_once_on_both_state_engines(redis_url, tmp_path):
    from he_compute.coordinator.kv import RedisKV, SqliteKV

    for kv in (SqliteKV(tmp_path / "state.db"), RedisKV(redis_url)):
        kv.hset("owner", {"j1": "alice", "j2": "eve"})
        ids = ["j1", "jX", "j2"] + [f"k{i}" for i in range(600)]  # past SQLite's page of 500
        assert kv.hmget("owner", ids) == ["alice", None, "eve"] + [None] * 600
        assert kv.hmget("owner", []) == []
        kv.close()
