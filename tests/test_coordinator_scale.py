"""The coordinator at scale: two coordinator processes over one Redis (ACL user, default user off), blobs in
S3 by presigned URL (moto), and a reduced chaos run: SIGKILL a coordinator, a worker and Redis (AOF on)
during an encrypted run, which still completes with the clear model's result."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading

import httpx
import numpy as np
import pytest

from he_compute.client.run import RunOptions, run
from he_compute.formats.evalkeys import read as read_evaluation_keys
from he_compute.transport.remote import RemoteBlobs, RemoteConsumer, RemoteProducer, Session, enroll
from he_compute.transport.remote.wire import API, sign_request
from he_compute.worker.identity import WorkerIdentity
from coordinator_support import CoordinatorProc, stop_all, worker_proc
from queue_support import free_port, wait_for

PASSWORD = "coordinator-only-secret"


class AclRedis:
    """redis-server with AOF (fsync always), a password on the default user and a narrower user for the coordinators.

    The default user keeps ``+@all`` behind a password nobody is given: Redis 7.0 replays the AOF as the default
    user, and with that user off (or narrowed) it refuses every MULTI/EXEC on restart and silently drops jobs.
    """

    def __init__(self, directory):
        self.dir, self.port = directory, free_port()
        self.url = f"redis://coord:{PASSWORD}@127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.dir), "--save", "", "--appendonly", "yes", "--appendfsync", "always",
             "--user", "default", "on", ">admin-only-secret-nobody-gets", "~*", "&*", "+@all", "--user", "coord", "on", f">{PASSWORD}", "~*", "&*", "+@all", "-@dangerous"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        wait_for(lambda: self._ping(redis), timeout=20, what="redis")
        return self

    def _ping(self, redis):
        try:
            return redis.Redis.from_url(self.url).ping()
        except redis.ConnectionError:
            return False

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def acl_redis(tmp_path):
    server = AclRedis(tmp_path).start()
    yield server
    if server.proc.poll() is None:
        server.kill()


def test_two_coordinators_share_one_redis_and_workers_never_get_its_credentials(acl_redis, tmp_path, tls):  # noqa: F811
    import redis

    blobs = f"file://{tmp_path / 'blobs'}"
    a = CoordinatorProc(tmp_path / "a", tls, queue=acl_redis.url, blobs=blobs).start()
    b = CoordinatorProc(tmp_path / "b", tls, queue=acl_redis.url, blobs=blobs).start()
    try:
        with pytest.raises(redis.RedisError):  # what a worker without the coordinator's password gets
            redis.Redis(port=acl_redis.port).ping()
        with pytest.raises(redis.RedisError, match="no permissions"):  # even the coordinator's user: no CONFIG SET
            redis.Redis.from_url(acl_redis.url).config_set("dir", str(tmp_path))
        token = a.token()  # a's first start made the records; b shares them through Redis
        q = RemoteProducer(Session([a.url, b.url], token=token, ca=str(tls[0])))
        store = RemoteBlobs(q.session)
        d = store.put(b"shared input")
        job_id = q.submit({"inputs": [d]}, device="scale")
        me = WorkerIdentity.load_or_create(tmp_path / "w")
        sb = Session(b.url, signer=me, ca=str(tls[0]))
        enroll(sb, me, a.token("enroll.token"))
        lease = RemoteConsumer(sb).claim("w", devices=["scale"])
        assert lease is not None and lease.job.id == job_id
        headers = sign_request(me, "GET", f"{API}/worker/hello")  # one signed request, replayed at the other
        with httpx.Client(verify=str(tls[0])) as c:
            assert c.get(b.url + f"{API}/worker/hello", headers=headers).status_code == 200
            assert c.get(a.url + f"{API}/worker/hello", headers=headers).status_code == 401
        assert RemoteConsumer(sb).complete(lease, {"outputs": [d], "inputs": [d], "receipt": {}})
        assert RemoteProducer(Session(b.url, token=token, ca=str(tls[0]))).status(job_id).state.value == "done"
    finally:
        a.stop()
        b.stop()


def test_s3_blobs_travel_by_presigned_urls_scoped_to_one_object(s3_endpoint, tmp_path, tls):  # noqa: F811
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="coordbucket")
    c = CoordinatorProc(tmp_path / "data", tls, blobs=f"s3://coordbucket/hec?endpoint_url={s3_endpoint}").start()
    try:
        session = Session(c.url, token=c.token(), ca=str(tls[0]))
        store, q = RemoteBlobs(session), RemoteProducer(session)
        data = b"evaluation keys, say" * 1000
        d = store.put(data)
        assert store.get(d) == data
        with httpx.Client(verify=str(tls[0])) as h:
            r = h.get(f"{c.url}{API}/blobs/{d}", headers={"authorization": f"Bearer {c.token()}"})
            assert r.status_code == 303 and r.headers["location"].startswith(s3_endpoint)
            assert d.split(":")[1] in r.headers["location"]  # that one object, nothing else
            # A staged upload whose bytes do not match the digest is refused at commit and never stored.
            liar = "sha256:" + "ab" * 32
            auth = {"authorization": f"Bearer {c.token()}"}
            ticket = h.post(f"{c.url}{API}/blobs/{liar}/upload", json={"size": 5}, headers=auth).json()
            assert httpx.put(ticket["url"], content=b"wrong", headers=ticket["headers"]).status_code == 200
            r = h.post(f"{c.url}{API}/blobs/{liar}/commit", json={"staging": ticket["staging"]}, headers=auth)
            assert r.status_code == 422 and not store.exists(liar)
        job_id = q.submit({"inputs": [d]}, device="s3")
        me = WorkerIdentity.load_or_create(tmp_path / "w")
        ws = Session(c.url, signer=me, ca=str(tls[0]))
        enroll(ws, me, c.token("enroll.token"))
        consumer = RemoteConsumer(ws)
        from he_compute.transport.remote import LeaseBlobs

        lease = consumer.claim("w", devices=["s3"])
        lb = LeaseBlobs(consumer)
        assert lb.get(d) == data
        out = lb.put(b"encrypted result")
        assert consumer.complete(lease, {"outputs": [out], "inputs": [d], "receipt": {}})
        assert store.get(out) == b"encrypted result" and q.status(job_id).state.value == "done"
    finally:
        c.stop()


def test_chaos_kill_a_coordinator_a_worker_and_redis_during_an_encrypted_run(acl_redis, compiled, cancer, tmp_path,
                                                                           tls, monkeypatch):  # noqa: F811
    c = compiled("linear")
    X = cancer[1][10:18]
    blobs = f"file://{tmp_path / 'blobs'}"
    args = ("--lease", "3")
    a = CoordinatorProc(tmp_path / "a", tls, queue=acl_redis.url, blobs=blobs, args=args).start()
    b = CoordinatorProc(tmp_path / "b", tls, queue=acl_redis.url, blobs=blobs, args=args).start()
    both = f"{a.url},{b.url}"
    workers = [worker_proc(a, tmp_path / f"w{i}", token_file=a.data / "enroll.token", log=tmp_path / "workers.log",
                           fault="sleep=0.5", extra=("--coordinator", both)) for i in range(3)]
    monkeypatch.setenv("HEC_CHECKPOINTS", str(tmp_path / "checkpoints.json"))
    q = RemoteProducer(Session([a.url, b.url], token=a.token(), ca=str(tls[0])))
    store = RemoteBlobs(q.session)
    enc = c.client.encrypt(X)
    out: dict = {}

    def go():
        try:
            out["report"] = run(enc, c.bundle.server_part(), read_evaluation_keys(c.client.evaluation_keys_path),
                                queue=q, blobs=store,
                                options=RunOptions(timeout=300, samples_per_job=1, show_progress=False))
        except BaseException as exc:  # noqa: BLE001 - reported below
            out["error"] = exc

    t = threading.Thread(target=go)
    t.start()
    try:
        done = lambda: sum(j.state.value == "done" for j in q.jobs())  # noqa: E731
        wait_for(lambda: done() >= 1, timeout=240, what="a first job done")
        a.kill()                                   # SIGKILL one coordinator: everyone fails over to the other
        workers[0].send_signal(signal.SIGKILL)     # SIGKILL a worker: its lease runs out, another takes the job
        acl_redis.kill()                           # SIGKILL Redis (AOF, fsync always), then bring it back
        acl_redis.start()
        t.join(300)
        assert not t.is_alive() and "error" not in out, out.get("error")
        y = c.client.decrypt(out["report"].result)
        np.testing.assert_allclose(y, c.model.predict_proba(X, fhe="disable"), atol=1e-9)
        jobs = q.jobs()
        assert len(jobs) == len(X) and {j.state.value for j in jobs} == {"done"}  # nothing lost, nothing left over
    finally:
        stop_all(workers)
        a.kill()
        b.stop()
    log = json.loads((tmp_path / "checkpoints.json").read_text())
    assert list(log.values())[0]["size"] >= 2 * len(X)  # a submission and a receipt per job survived it all
