"""Issue 19, findings 5, 6 and 16, tried against a real coordinator on loopback: quotas that hold (deletes free
disk, the audit log counts and reads in pages, parallel uploads cannot race the check, a worker cannot fill a
tenant's quota with results it cannot see), job specs that may name only the tenant's own blobs, and the
coordinator end to end over each blob store (file, Redis, S3 through moto)."""

from __future__ import annotations

import json
import os
import threading

import httpx
import pytest

from he_compute.formats.audit import next_entry
from he_compute.formats.canonical import canonical
from he_compute.formats.digests import digest_of
from he_compute.transport.blobs.file import FileBlobStore
from he_compute.transport.remote import LeaseBlobs, RemoteConsumer
from he_compute.transport.remote.wire import API, sign_request
from coordinator_support import CoordinatorProc
from tests.test_coordinator_attacks import _hec, _tenant, _worker


MB = 1024 * 1024


@pytest.fixture(scope="module")
def coord(tmp_path_factory, tls):  # noqa: F811
    c = CoordinatorProc(tmp_path_factory.mktemp("quotas") / "data", tls, args=("--max-result-mb", "1")).start()
    yield c
    c.stop()


def _new_tenant(coord, name, max_gb="0.001"):
    out = _hec(coord, "add-tenant", name, "--max-gb", max_gb)
    assert out.returncode == 0, out.stderr
    return _tenant(coord, token=out.stdout.strip())


def _usage(q):
    return q.tenant()["bytes"]


def test_deleting_a_blob_frees_its_disk_unless_another_tenant_still_holds_it(coord):
    q, store = _new_tenant(coord, "deleter", "0.01")
    _, other = _new_tenant(coord, "sharer", "0.01")
    disk = FileBlobStore(coord.data / "blobs")
    mine, shared = store.put(os.urandom(2 * MB)), store.put(b"shared bytes" * 1000)
    assert other.put(b"shared bytes" * 1000) == shared
    assert disk.exists(mine) and _usage(q) == 2 * MB + 12000
    store.delete(mine)
    store.delete(shared)
    assert _usage(q) == 0
    assert not disk.exists(mine), "a deleted blob stayed on disk at zero usage"
    assert disk.exists(shared) and other.get(shared) == b"shared bytes" * 1000  # still the other tenant's


def _append(audit, size, t=1):
    def build(last):
        entry, head = next_entry(last, "submit", "j0123456789abcdef0123", {"pad": "x" * size}, t)
        return canonical(entry).decode(), head

    return audit.append(build)


def test_the_audit_log_counts_against_the_quota_and_reads_in_bounded_pages(coord):
    q, _ = _new_tenant(coord, "auditor", "0.0005")  # about 512 KB
    audit = q.audit_store()
    accepted = 0
    with pytest.raises(Exception, match="quota"):
        for _ in range(12):  # 12 x 100 KB against a 512 KB quota
            _append(audit, 100_000)
            accepted += 1
    assert accepted <= 5 and _usage(q) <= 0.0005 * 1024**3
    token = q.session.token if hasattr(q.session, "token") else None
    auth = {"authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(verify=str(coord.tls[0])) as c:
        page = c.get(f"{coord.url}{API}/audit", params={"start": 0, "limit": 2}, headers=auth).json()
    assert len(page["lines"]) == 2 and page["size"] == accepted
    assert len(audit.lines()) == accepted  # the client reads every page and checks the chain


def test_parallel_uploads_cannot_race_past_the_quota(coord):
    q, store = _new_tenant(coord, "racer", "0.001")  # 1 MiB
    blobs = [os.urandom(400_000) for _ in range(8)]
    done: list[str] = []
    barrier = threading.Barrier(len(blobs))

    def put(data):
        barrier.wait()
        try:
            done.append(store.put(data))
        except Exception:  # noqa: BLE001 - the quota refuses; counted below
            pass

    threads = [threading.Thread(target=put, args=(b,)) for b in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(done) <= 2, f"{len(done)} of 8 uploads of 400 KB accepted against a 1 MiB quota"
    assert _usage(q) <= 1024**3 * 0.001


def test_a_worker_cannot_fill_a_tenants_quota_with_results_it_cannot_see(coord, tmp_path):
    q, store = _new_tenant(coord, "victim", "0.004")  # 4 MiB
    d = store.put(b"one input")
    job_id = q.submit({"server": d, "keys": d, "inputs": [d]}, device="junk")
    w, sw = _worker(coord, tmp_path, "junker")
    lease = RemoteConsumer(sw).claim("junker", devices=["junk"])
    assert lease is not None and lease.job.id == job_id
    codes = []
    with httpx.Client(verify=str(coord.tls[0])) as c:
        for _ in range(4):  # one input: the job may produce one result blob of at most 1 MB per attempt
            junk = os.urandom(900_000)
            digest = digest_of(junk)
            path = f"{API}/worker/jobs/{job_id}/outputs/{digest}"
            codes.append(c.put(coord.url + path, content=junk,
                               headers=sign_request(w, "PUT", path, body_sha256=digest[7:])).status_code)
    assert codes[0] == 200 and codes[1:] == [413, 413, 413], codes
    assert _usage(q) <= 900_000 + 9
    listed = q.session.json("GET", f"{API}/blobs")["blobs"]  # the tenant sees what was charged to it, and by whom
    junk_rows = [b for b in listed if b.get("job") == job_id]
    assert len(junk_rows) == 1 and junk_rows[0]["size"] == 900_000
    store.delete(junk_rows[0]["digest"])
    assert _usage(q) == 9


def test_a_job_spec_may_name_only_the_tenants_own_blobs_and_is_no_existence_oracle(coord):
    _, owner_store = _new_tenant(coord, "owner", "0.01")
    secret = owner_store.put(b"the owner's model weights")
    q, store = _new_tenant(coord, "snoop", "0.01")
    own = store.put(b"snoop's own input")
    absent = digest_of(b"never uploaded by anyone")
    errors = []
    for target in (secret, absent):
        with pytest.raises(Exception) as info:
            q.submit({"server": own, "keys": own, "inputs": [target]}, device="snoop")
        errors.append(str(info.value).replace(target, "D").replace(target[:19], "D"))
    assert errors[0] == errors[1], errors  # another tenant's blob reads exactly like one that does not exist
    assert "not in your namespace" in errors[0]
    assert q.submit({"server": own, "keys": own, "inputs": [own]}, device="snoop")


@pytest.fixture(params=["file", "redis", "s3"])
def blob_url(request, tmp_path):
    if request.param == "file":
        return f"file://{tmp_path / 'blobs'}"
    if request.param == "redis":
        return request.getfixturevalue("redis_url")
    import boto3

    endpoint = request.getfixturevalue("s3_endpoint")
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="e2e19")
    return f"s3://e2e19/hec?endpoint_url={endpoint}"


def test_the_coordinator_works_end_to_end_with_each_blob_store(blob_url, tmp_path, tls):  # noqa: F811
    c = CoordinatorProc(tmp_path / "data", tls, blobs=blob_url).start()
    try:
        q, store = _tenant(c)
        data = os.urandom(5 * MB + 17)  # more than one Redis chunk, streamed through the coordinator
        d = store.put(data)
        assert store.get(d) == data and store.exists(d)
        job_id = q.submit({"server": d, "keys": d, "inputs": [d]}, device="e2e")
        _, ws = _worker(c, tmp_path, "e2e")
        consumer = RemoteConsumer(ws)
        lease = consumer.claim("e2e", devices=["e2e"])
        assert lease is not None and lease.job.id == job_id
        lb = LeaseBlobs(consumer)
        assert lb.get(d) == data
        out = lb.put(b"encrypted result " * 100)
        assert consumer.complete(lease, {"outputs": [out], "inputs": [d], "receipt": {}})
        assert q.status(job_id).state.value == "done" and store.get(out) == b"encrypted result " * 100
        before = q.tenant()["bytes"]
        store.delete(out)
        assert q.tenant()["bytes"] == before - 1700 and not store.exists(out)
    finally:
        c.stop()


def test_a_tenant_lists_its_blobs_in_bounded_pages(coord):
    """The listing is paginated and bounded: ``limit`` rows at most, from ``after``."""
    q, store = _new_tenant(coord, "lister", "0.01")
    digests = sorted(store.put(f"blob {i}".encode()) for i in range(5))
    page = q.session.json("GET", f"{API}/blobs", params={"limit": 2})
    assert [b["digest"] for b in page["blobs"]] == digests[:2]
    rest = q.session.json("GET", f"{API}/blobs", params={"after": digests[1], "limit": 10})
    assert [b["digest"] for b in rest["blobs"]] == digests[2:]
    assert json.dumps(rest)  # plain JSON rows
