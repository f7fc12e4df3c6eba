"""Every attack of issue 11, tried against a real coordinator process on loopback over TLS, each refused.

Requests are crafted by hand (httpx, signed with real worker keys) so that each
test shows exactly what a hostile worker or tenant sends and what comes back.
With direct queue and blob-store access (the design before the coordinator)
each of these was possible; the report lists which.
"""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from he_compute.coordinator import routes, status
from he_compute.formats.digests import digest_of
from he_compute.transport.queue import routed_device
from he_compute.transport.remote import RemoteBlobs, RemoteConsumer, RemoteProducer, Session, enroll
from he_compute.transport.remote.wire import API, sign_request
from he_compute.worker.identity import WorkerIdentity
from coordinator_support import CoordinatorProc

PYTHON = sys.executable
DUMMY = {"job_id": "j0123456789abcdef0123", "digest": "sha256:" + "0" * 64}


@pytest.fixture(scope="module")
def coord(tmp_path_factory, tls):  # noqa: F811
    c = CoordinatorProc(tmp_path_factory.mktemp("attacks") / "data", tls, args=("--max-result-mb", "1")).start()
    yield c
    c.stop()


def _hec(coord, *args):
    return subprocess.run([PYTHON, "-m", "he_compute", "coordinator", *args, "--data", str(coord.data)],
                          capture_output=True, text=True, timeout=120)


def _tenant(coord, token=None):
    s = Session(coord.url, token=token or coord.token(), ca=str(coord.tls[0]))
    return RemoteProducer(s), RemoteBlobs(s)


def _worker(coord, tmp_path, name, *, enrol=True):
    me = WorkerIdentity.load_or_create(tmp_path / name)
    s = Session(coord.url, signer=me, ca=str(coord.tls[0]))
    if enrol:
        enroll(s, me, coord.token("enroll.token"))
    return me, s


def _signed(coord, me, method, path, body=b"", **kw):
    """One hand-signed request (returns the response, never raises on status)."""
    headers = sign_request(me, method, path, body)
    with httpx.Client(verify=str(coord.tls[0])) as c:
        return c.request(method, coord.url + path, content=body, headers={**headers, **kw.get("headers", {})})


def _job(coord, tmp_path, device, group=None):
    q, store = _tenant(coord)
    d = store.put(b"input for " + device.encode() + tmp_path.name.encode())
    return q, store, q.submit({"server": d, "keys": d, "inputs": [d]}, device=device, group=group), d


def _result(outputs, inputs):
    return {"outputs": outputs, "inputs": inputs, "receipt": {}, "stats": {}}


def test_completing_another_workers_lease_is_refused(coord, tmp_path):
    q, _, job_id, d = _job(coord, tmp_path, "complete")
    a, sa = _worker(coord, tmp_path, "a")
    b, sb = _worker(coord, tmp_path, "b")
    lease = RemoteConsumer(sa).claim("a", devices=["complete"])
    assert lease.job.id == job_id
    body = {"token": lease.token, "result": _result([d], [d]), "error": "sabotage"}  # even with A's own token
    for what in ("complete", "heartbeat", "fail", "release"):
        fields = {k: v for k, v in body.items() if k == "token" or (k, what) in {("result", "complete"), ("error", "fail")}}
        r = _signed(coord, b, "POST", f"{API}/worker/jobs/{job_id}/{what}", json.dumps(fields).encode())
        assert r.status_code == 403 and r.json()["code"] == "lease", (what, r.text)
    assert q.status(job_id).state.value == "running"
    wrong = RemoteConsumer(sa)
    lease_wrong_token = type(lease)(job=lease.job, token="0" * 32, worker=lease.worker)
    assert wrong.complete(lease_wrong_token, _result([d], [d])) is False  # the engine checks the token itself
    assert RemoteConsumer(sa).complete(lease, _result([d], [d])) is True
    assert q.status(job_id).state.value == "done"


def test_claiming_a_job_routed_elsewhere_is_refused(coord, tmp_path):
    a, sa = _worker(coord, tmp_path, "a")
    b, sb = _worker(coord, tmp_path, "b")
    route = routed_device("routed", a.worker_id)
    q, _, job_id, _ = _job(coord, tmp_path, device=route)
    r = _signed(coord, b, "POST", f"{API}/worker/claim", json.dumps({"devices": [route]}).encode())
    assert r.status_code == 403 and "routed to itself" in r.json()["error"]
    assert RemoteConsumer(sb).claim("b", devices=["routed"]) is None  # the plain device never reaches routed jobs
    assert q.status(job_id).state.value == "queued"
    lease = RemoteConsumer(sa).claim("a", devices=["routed", route])
    assert lease is not None and lease.job.id == job_id


def test_reading_another_tenants_blob_or_job_is_refused(coord, tmp_path):
    out = _hec(coord, "add-tenant", "mallory")
    assert out.returncode == 0, out.stderr
    q1, s1, job_id, d = _job(coord, tmp_path, "tenants")
    q2, s2 = _tenant(coord, token=out.stdout.strip())
    assert s2.exists(d) is False
    with pytest.raises(Exception, match="not in your namespace"):
        s2.get(d)
    for call in (lambda: q2.status(job_id), lambda: q2.cancel(job_id)):
        with pytest.raises(Exception, match="no job"):
            call()
    assert job_id not in [j.id for j in q2.jobs()]
    assert q1.status(job_id).state.value == "queued"
    # A worker reads only what its lease names.
    w, sw = _worker(coord, tmp_path, "w")
    secret = s1.put(b"tenant 1's model weights")
    lease = RemoteConsumer(sw).claim("w", devices=["tenants"])
    assert lease is not None and lease.job.id == job_id
    r = _signed(coord, w, "GET", f"{API}/worker/jobs/{lease.job.id}/blobs/{secret}")
    assert r.status_code == 403 and "not named by job" in r.json()["error"]
    r = _signed(coord, w, "GET", f"{API}/worker/jobs/{lease.job.id}/blobs/{lease.job.spec['inputs'][0]}")
    assert r.status_code == 200


def test_a_replayed_or_stale_request_is_refused(coord, tmp_path):
    me, _ = _worker(coord, tmp_path, "r")
    headers = sign_request(me, "GET", f"{API}/worker/hello")
    with httpx.Client(verify=str(coord.tls[0])) as c:
        assert c.get(coord.url + f"{API}/worker/hello", headers=headers).status_code == 200
        again = c.get(coord.url + f"{API}/worker/hello", headers=headers)
        assert again.status_code == 401 and "replayed" in again.json()["error"]
        stale = sign_request(me, "GET", f"{API}/worker/hello", now=1_000_000_000)
        r = c.get(coord.url + f"{API}/worker/hello", headers=stale)
        assert r.status_code == 401 and "stale" in r.json()["error"]


def test_an_unsigned_or_forged_request_is_refused(coord, tmp_path):
    a, _ = _worker(coord, tmp_path, "a")
    b, _ = _worker(coord, tmp_path, "b")
    body = json.dumps({"devices": ["cpu"]}).encode()
    with httpx.Client(verify=str(coord.tls[0])) as c:
        r = c.post(coord.url + f"{API}/worker/claim", content=body)
        assert r.status_code == 401 and "not signed" in r.json()["error"]
        forged = {**sign_request(b, "POST", f"{API}/worker/claim", body), "x-hec-worker": a.worker_id}
        assert c.post(coord.url + f"{API}/worker/claim", content=body, headers=forged).status_code == 401
        signed = sign_request(a, "POST", f"{API}/worker/claim", body)
        tampered = json.dumps({"devices": ["cuda"]}).encode()
        r = c.post(coord.url + f"{API}/worker/claim", content=tampered, headers=signed)
        assert r.status_code == 401
        r = c.get(coord.url + f"{API}/jobs", headers={"authorization": "Bearer hect_not-a-token"})
        assert r.status_code == 401


def test_a_worker_off_the_allow_list_is_refused(coord, tmp_path):
    stranger, s = _worker(coord, tmp_path, "stranger", enrol=False)
    r = _signed(coord, stranger, "GET", f"{API}/worker/hello")
    assert r.status_code == 403 and "not admitted" in r.json()["error"]
    with pytest.raises(Exception, match="no valid enrolment token"):
        enroll(s, stranger, "hece_guessed")
    with pytest.raises(Exception, match="no valid enrolment token"):
        enroll(s, stranger, coord.token())  # a tenant token does not enrol workers
    (tmp_path / "lab.allow").write_text(stranger.public_line("lab worker") + "\n")
    out = _hec(coord, "allow-worker", str(tmp_path / "lab.allow"), "--operator", "lab-b")
    assert out.returncode == 0, out.stderr
    assert RemoteConsumer(s).operator == "lab-b"
    out = _hec(coord, "revoke-worker", stranger.worker_id)
    assert out.returncode == 0, out.stderr
    r = _signed(coord, stranger, "GET", f"{API}/worker/hello")
    assert r.status_code == 403 and "revoked" in r.json()["error"]


def _nonces(coord, worker_id):
    import sqlite3

    with sqlite3.connect(coord.data / "coordinator.db") as db:
        return db.execute("SELECT COUNT(*) FROM kv WHERE key LIKE ?", (f"nonce:{worker_id}:%",)).fetchone()[0]


def test_a_revoked_worker_cannot_fill_the_nonce_store(coord, tmp_path):
    """The coordinator keeps admitted keys in memory (a worker id is its key's fingerprint) and reads a known key's
    record in the round trip that spends its nonce: a revoked key's correctly signed requests are still refused,
    and past the first they spend no nonce (a stranger with a revoked key cannot grow the store)."""
    # Its own enrolment token: revoking a worker burns the token that admitted it, and the module's other
    # tests still enrol with the coordinator's enroll.token.
    own = _hec(coord, "enroll-token", "--operator", "lab-revoked")
    assert own.returncode == 0, own.stderr
    me = WorkerIdentity.load_or_create(tmp_path / "revoked-nonces")
    enroll(Session(coord.url, signer=me, ca=str(coord.tls[0])), me, own.stdout.strip())
    assert _signed(coord, me, "GET", f"{API}/worker/hello").status_code == 200  # the process now knows its key
    assert _hec(coord, "revoke-worker", me.worker_id).returncode == 0
    before = _nonces(coord, me.worker_id)
    refused = [_signed(coord, me, "GET", f"{API}/worker/hello") for _ in range(5)]
    assert all(r.status_code == 403 and "revoked" in r.json()["error"] for r in refused)
    assert _nonces(coord, me.worker_id) - before <= 1


def test_an_oversize_or_mislabelled_upload_is_refused(coord, tmp_path):
    q, _, job_id, d = _job(coord, tmp_path, "upload")
    w, sw = _worker(coord, tmp_path, "u")
    lease = RemoteConsumer(sw).claim("u", devices=["upload"])
    assert lease is not None and lease.job.id == job_id
    big = b"\x00" * (1024 * 1024 + 1)  # the coordinator caps results at 1 MB here
    big_digest = digest_of(big)
    path = f"{API}/worker/jobs/{job_id}/outputs/{big_digest}"
    headers = sign_request(w, "PUT", path, body_sha256=big_digest.split(":")[1])
    with httpx.Client(verify=str(coord.tls[0])) as c:
        r = c.put(coord.url + path, content=big, headers=headers)
        assert r.status_code == 413, r.text
        small = b"honest result"
        liar = digest_of(b"something else")
        path = f"{API}/worker/jobs/{job_id}/outputs/{liar}"
        r = c.put(coord.url + path, content=small, headers=sign_request(w, "PUT", path, body_sha256=liar[7:]))
        assert r.status_code == 422 and r.json()["code"] == "integrity"
    _, s1 = _tenant(coord)
    assert not s1.exists(big_digest) and not s1.exists(liar)
    r = _signed(coord, w, "POST", f"{API}/worker/jobs/{job_id}/complete",
                json.dumps({"token": lease.token, "result": _result([liar], [d])}).encode())
    assert r.status_code == 422 and "never uploaded" in r.json()["error"]


def test_one_operator_never_gets_two_replicas_of_a_group(coord, tmp_path):
    q, store = _tenant(coord)
    d = store.put(b"replicated input")
    ids = [q.submit({"inputs": [d]}, device="replicas", group="g-replicas") for _ in range(2)]
    _, s1 = _worker(coord, tmp_path, "op1-a")  # both enrolled with the 'default' operator's token
    _, s2 = _worker(coord, tmp_path, "op1-b")
    first = RemoteConsumer(s1).claim("x", devices=["replicas"])
    assert first is not None and first.job.id in ids
    assert RemoteConsumer(s2).claim("y", devices=["replicas"], block_s=0.5) is None
    other, so = _worker(coord, tmp_path, "lab", enrol=False)
    (tmp_path / "o.allow").write_text(other.public_line() + "\n")
    assert _hec(coord, "allow-worker", str(tmp_path / "o.allow"), "--operator", "other-lab").returncode == 0
    third = RemoteConsumer(so).claim("z", devices=["replicas"])
    assert third is not None and third.job.id in ids and third.job.id != first.job.id


def test_a_tenant_over_its_quota_is_refused(coord, tmp_path):
    out = _hec(coord, "add-tenant", "small", "--max-jobs", "2")
    q, store = _tenant(coord, token=out.stdout.strip())
    for _ in range(2):
        q.submit({"inputs": []}, device="quota")
    with pytest.raises(Exception, match="quota"):
        q.submit({"inputs": []}, device="quota")


def test_every_route_rejects_an_unauthenticated_request(coord):
    all_routes = [r for router in (routes.clients, routes.workers, status.router) for r in router.routes]
    assert len(all_routes) >= 25
    with httpx.Client(verify=str(coord.tls[0])) as c:
        for route in all_routes:
            deps = [d.call.__name__ for d in route.dependant.dependencies]
            assert deps and deps[0] in {"tenant", "worker", "worker_upload", "enrolling", "operator", "login_form"}, \
                route.path
            for method in route.methods:
                r = c.request(method, coord.url + route.path.format(**DUMMY), content=b"{}")
                assert r.status_code == 401, (method, route.path, r.status_code, r.text[:200])


@pytest.mark.slow
def test_rate_limits_per_worker(tmp_path, tls):  # noqa: F811
    c = CoordinatorProc(tmp_path / "data", tls, args=("--worker-rate", "5/minute")).start()
    try:
        me, _ = _worker(c, tmp_path, "fast")  # the signed enrolment counts as the first of five
        codes = [_signed(c, me, "GET", f"{API}/worker/hello").status_code for _ in range(6)]
        assert codes == [200] * 4 + [429, 429]
    finally:
        c.stop()
