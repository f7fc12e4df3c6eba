"""The blob gate (issue 23, no double relay): a worker's lease blobs come from ``hec coordinator gate`` on URLs the
coordinator signs, so the coordinator process carries none of their bytes; a URL works for one blob of one live
lease until it expires, and every other use is refused.  Real coordinator and gate processes over TLS."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time

import httpx
import pytest

from he_compute.transport.remote import LeaseBlobs, RemoteBlobs, RemoteConsumer, RemoteProducer, Session, enroll
from he_compute.transport.remote.wire import API, sign_request
from he_compute.worker.identity import WorkerIdentity
from coordinator_support import CoordinatorProc
from queue_support import free_port, wait_for

LEASE_S = 3.0  # the gate URL's lifetime too (at most one lease period)


@pytest.fixture(scope="module")
def gated(tmp_path_factory, tls):  # noqa: F811
    root = tmp_path_factory.mktemp("gate")
    port = free_port()
    gate_url = f"https://127.0.0.1:{port}"
    coord = CoordinatorProc(root / "data", tls, args=("--gate", gate_url, "--lease", str(LEASE_S))).start()
    gate = subprocess.Popen([sys.executable, "-m", "he_compute", "coordinator", "gate", "--listen", f"127.0.0.1:{port}",
                             "--data", str(coord.data), "--tls-cert", str(tls[1]), "--tls-key", str(tls[2])],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(root / "gate.log", "ab"))

    def up() -> bool:
        assert gate.poll() is None, (root / "gate.log").read_text()[-2000:]
        try:
            httpx.get(f"{gate_url}{API}/gate/x", verify=str(tls[0]), timeout=2)
            return True
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=60, what="the blob gate")
    yield coord, gate_url
    gate.terminate()
    gate.wait(30)
    coord.stop()


def _setup(coord, tmp_path, device, data=None):
    s = Session(coord.url, token=coord.token(), ca=str(coord.tls[0]))
    q, store = RemoteProducer(s), RemoteBlobs(s)
    data = data or b"ciphertext bytes " * 5000 + tmp_path.name.encode()
    d = store.put(data)
    other = store.put(b"another tenant blob, not in this job " + tmp_path.name.encode())
    job_id = q.submit({"server": d, "keys": d, "inputs": [d]}, device=device)
    me = WorkerIdentity.load_or_create(tmp_path / "w")
    ws = Session(coord.url, signer=me, ca=str(coord.tls[0]))
    enroll(ws, me, coord.token("enroll.token"))
    consumer = RemoteConsumer(ws)
    lease = consumer.claim("w", devices=[device])
    assert lease is not None and lease.job.id == job_id
    return q, data, d, other, me, consumer, lease


def _location(coord, me, job_id, digest):
    """What the coordinator answers a worker's signed read: a redirect to the gate (no blob bytes)."""
    path = f"{API}/worker/jobs/{job_id}/blobs/{digest}"
    with httpx.Client(verify=str(coord.tls[0])) as h:
        r = h.get(coord.url + path, headers=sign_request(me, "GET", path, b""))
    assert r.status_code == 303 and len(r.content) < 200, (r.status_code, r.text[:200])
    return r.headers["location"]


def _get(coord, url):
    with httpx.Client(verify=str(coord.tls[0])) as h:
        return h.get(url)


def test_a_worker_reads_its_lease_blob_from_the_gate_and_the_coordinator_sends_no_bytes(gated, tmp_path):
    coord, gate_url = gated
    q, data, d, _, me, consumer, lease = _setup(coord, tmp_path, "gated")
    url = _location(coord, me, lease.job.id, d)
    assert url.startswith(f"{gate_url}{API}/gate/{d}?")
    sent = consumer.gate_urls[lease.job.id]  # the claim's answer carried a read URL for each blob of the job
    assert set(sent) == {d} and _get(coord, sent[d]).content == data
    assert LeaseBlobs(consumer).get(d) == data  # followed to the gate, checked against its sha256
    result = b"encrypted result " * 100 + tmp_path.name.encode()
    out = LeaseBlobs(consumer).put(result)  # to the gate too: the coordinator only signs the URL
    assert consumer.complete(lease, {"outputs": [out], "inputs": [d], "receipt": {}, "stats": {}})
    assert RemoteBlobs(Session(coord.url, token=coord.token(), ca=str(coord.tls[0]))).get(out) == result


def _put_url(coord, me, job_id, digest, size):
    path = f"{API}/worker/jobs/{job_id}/outputs/{digest}/upload"
    body = json.dumps({"size": size}).encode()
    with httpx.Client(verify=str(coord.tls[0])) as h:
        r = h.post(coord.url + path, content=body, headers=sign_request(me, "POST", path, body))
    assert r.status_code == 200, r.text
    return r.json()["gate"]


def test_a_gate_upload_url_takes_only_its_bytes_for_its_live_lease(gated, tmp_path):
    coord, _ = gated
    q, data, d, _, me, consumer, lease = _setup(coord, tmp_path, "gated_put")
    result = b"the worker's encrypted result " + tmp_path.name.encode()
    out = "sha256:" + hashlib.sha256(result).hexdigest()
    url = _put_url(coord, me, lease.job.id, out, len(result))
    with httpx.Client(verify=str(coord.tls[0])) as h:
        other = "sha256:" + hashlib.sha256(b"x").hexdigest()
        assert h.put(url.replace(out, other), content=b"x").status_code == 401  # another blob
        bigger = url.replace(f"size={len(result)}", f"size={len(result) * 100}")
        assert h.put(bigger, content=result * 100).status_code == 401  # a larger size than was signed
        assert h.put(url, content=result + b"more").status_code == 413  # more bytes than the URL takes
        assert h.get(url).status_code == 401  # an upload URL reads nothing
        wrong = h.put(url, content=bytes(len(result)))  # bytes that do not hash to the digest
        assert wrong.status_code == 422, wrong.text
        assert h.put(url, content=result).status_code == 200
        assert consumer.complete(lease, {"outputs": [out], "inputs": [d], "receipt": {}, "stats": {}})
        after = h.put(url, content=result)  # the lease is over
        assert after.status_code == 403, after.text


def test_a_gate_url_for_another_blob_or_with_a_moved_expiry_is_refused(gated, tmp_path):
    coord, _ = gated
    q, data, d, other, me, consumer, lease = _setup(coord, tmp_path, "gated_forge")
    url = _location(coord, me, lease.job.id, d)
    assert _get(coord, url).content == data
    swapped = _get(coord, url.replace(d, other))  # the tenant's other blob, not named by the job
    assert swapped.status_code == 401 and swapped.json()["code"] == "gate", swapped.text
    exp = int(url.split("exp=")[1].split("&")[0])
    later = _get(coord, url.replace(f"exp={exp}", f"exp={exp + 3600}"))
    assert later.status_code == 401 and later.json()["code"] == "gate"
    with httpx.Client(verify=str(coord.tls[0])) as h:  # a read URL uploads nothing
        assert h.put(url, content=data).status_code == 401
    other_worker = _get(coord, url.replace(f"worker={me.worker_id}", "worker=" + "0" * 64))
    assert other_worker.status_code == 401
    consumer.release(lease)


def test_a_gate_url_reused_after_its_lease_ended_is_refused(gated, tmp_path):
    coord, _ = gated
    q, data, d, _, me, consumer, lease = _setup(coord, tmp_path, "gated_after")
    url = _location(coord, me, lease.job.id, d)
    assert _get(coord, url).status_code == 200
    assert consumer.complete(lease, {"outputs": [d], "inputs": [d], "receipt": {}, "stats": {}})
    after = _get(coord, url)  # still before its expiry, but the lease is over
    assert after.status_code == 403 and "no longer leased" in after.json()["error"], after.text


def test_a_gate_url_past_its_expiry_is_refused_even_while_the_lease_lives(gated, tmp_path):
    coord, _ = gated
    q, data, d, _, me, consumer, lease = _setup(coord, tmp_path, "gated_expiry")
    url = _location(coord, me, lease.job.id, d)
    exp = int(url.split("exp=")[1].split("&")[0])
    assert exp <= time.time() + LEASE_S + 1  # never longer than one lease period
    while time.time() <= exp + 0.5:
        assert consumer.heartbeat(lease)  # the lease stays alive
        time.sleep(0.5)
    late = _get(coord, url)
    assert late.status_code == 401 and "expired" in late.json()["error"], late.text
    assert q.status(lease.job.id).state.value == "running"
    assert LeaseBlobs(consumer).get(d) == data  # a fresh URL from the coordinator works
    consumer.release(lease)


def test_without_a_gate_the_coordinator_streams_the_blob_itself(tmp_path, tls):  # noqa: F811
    coord = CoordinatorProc(tmp_path / "data", tls).start()
    try:
        q, data, d, _, me, consumer, lease = _setup(coord, tmp_path, "ungated")
        path = f"{API}/worker/jobs/{lease.job.id}/blobs/{d}"
        with httpx.Client(verify=str(coord.tls[0])) as h:
            r = h.get(coord.url + path, headers=sign_request(me, "GET", path, b""))
        assert r.status_code == 200 and r.content == data
    finally:
        coord.stop()
