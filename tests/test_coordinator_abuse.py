"""Issue 19, findings 7, 8 and 9, tried against a real coordinator on loopback: one worker key holding open long
polls, rate limits across coordinator processes, a pre-authentication slowloris, tokens that cannot be revoked,
flagged counts any tenant can inflate, and ``/v1/operators`` naming every operator to every tenant."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time

import httpx
import pytest

from he_compute.transport.remote import RemoteConsumer, Session, enroll
from he_compute.transport.remote.wire import API
from he_compute.worker.identity import WorkerIdentity
from coordinator_support import CoordinatorProc
from tests.test_coordinator_attacks import _hec, _signed, _tenant, _worker


def _configured(data, **settings):
    """A data directory whose coordinator.json sets ``settings`` before the first start."""
    data.mkdir(parents=True)
    (data / "coordinator.json").write_text(json.dumps({"data": str(data), **settings}))
    return data


@pytest.fixture(scope="module")
def coord(tmp_path_factory, tls):  # noqa: F811
    data = _configured(tmp_path_factory.mktemp("abuse") / "data", long_polls_per_worker=4, header_timeout_s=2.0,
                      body_timeout_s=2.0, min_body_rate=1024, request_timeout_s=9.0)
    c = CoordinatorProc(data, tls).start()
    yield c
    c.stop()


def test_one_worker_key_cannot_hold_more_long_polls_than_its_cap(coord, tmp_path):
    me, _ = _worker(coord, tmp_path, "poller")
    took: list[float] = []
    body = json.dumps({"devices": ["nothing_here"], "block_s": 4}).encode()

    def poll():
        t0 = time.monotonic()
        r = _signed(coord, me, "POST", f"{API}/worker/claim", body)
        assert r.status_code == 200 and r.json()["lease"] is None, r.text
        took.append(time.monotonic() - t0)

    threads = [threading.Thread(target=poll) for _ in range(12)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    q, _ = _tenant(coord)
    t0 = time.monotonic()
    q.tenant()
    assert time.monotonic() - t0 < 1.0
    for t in threads:
        t.join(30)
    quick = [s for s in took if s < 2.0]
    assert len(took) == 12 and len(quick) >= 8, f"held: {sorted(took)}"  # 4 may wait; the rest answer at once


def test_a_long_poll_still_wakes_when_a_job_arrives(coord, tmp_path):
    _, sw = _worker(coord, tmp_path, "waiter")
    q, store = _tenant(coord)
    d = store.put(b"late job")
    got = []
    t = threading.Thread(target=lambda: got.append(RemoteConsumer(sw).claim("w", devices=["late"], block_s=5)))
    t.start()
    time.sleep(1.0)
    job_id = q.submit({"inputs": [d]}, device="late")
    t.join(15)
    assert got and got[0] is not None and got[0].job.id == job_id


def test_slowloris_connections_are_closed_before_they_send_headers(coord):
    ctx = ssl.create_default_context(cafile=str(coord.tls[0]))
    socks = []
    for _ in range(30):
        raw = socket.create_connection(("127.0.0.1", coord.port), timeout=5)
        socks.append(ctx.wrap_socket(raw, server_hostname="127.0.0.1"))
    start = time.monotonic()
    request = b"GET /v1/tenant HTTP/1.1\r\nHost: x\r\n"
    closed = set()
    i = 0
    while time.monotonic() - start < 8 and len(closed) < len(socks):  # one header byte per second per socket
        for n, s in enumerate(socks):
            if n in closed:
                continue
            try:
                s.sendall(request[i % len(request): i % len(request) + 1])
                s.settimeout(0.01)
                if s.recv(1) == b"":
                    closed.add(n)
            except (TimeoutError, ssl.SSLWantReadError, socket.timeout):
                pass
            except OSError:
                closed.add(n)
        i += 1
        time.sleep(1.0)
    elapsed = time.monotonic() - start
    for s in socks:
        s.close()
    assert len(closed) == len(socks), f"{len(socks) - len(closed)} slow connections still open after {elapsed:.0f}s"
    q, _ = _tenant(coord)
    assert q.tenant()["tenant"] == "default"  # honest requests still served


def _trickle(coord, n, per_second, seconds, length=1_000_000):
    """``n`` pre-authentication worker claims whose bodies arrive ``per_second`` bytes a second for up to ``seconds``;
    returns, per connection, what the coordinator answered before closing it (``None``: still open at the end)."""
    ctx = ssl.create_default_context(cafile=str(coord.tls[0]))
    socks = [ctx.wrap_socket(socket.create_connection(("127.0.0.1", coord.port), timeout=5),
                             server_hostname="127.0.0.1") for _ in range(n)]
    head = (f"POST {API}/worker/claim HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            f"content-length: {length}\r\n\r\n").encode()
    answers: dict[int, bytes] = {}
    for s in socks:
        s.sendall(head)
    start = time.monotonic()
    while time.monotonic() - start < seconds and len(answers) < n:
        for i, s in enumerate(socks):
            if i in answers:
                continue
            try:
                s.sendall(b"x" * per_second)
                s.settimeout(0.01)
                got = s.recv(4096)
                while got and not got.endswith(b"}"):  # the whole one-line answer, then the close
                    got += s.recv(4096)
                answers[i] = got
            except (TimeoutError, ssl.SSLWantReadError, socket.timeout):
                pass
            except OSError:
                answers[i] = b""
        time.sleep(1.0)
    for s in socks:
        s.close()
    return [answers.get(i) for i in range(n)], time.monotonic() - start


def test_a_body_trickled_one_byte_a_second_is_answered_408_and_closed(coord):
    answers, elapsed = _trickle(coord, 20, 1, 12)
    assert None not in answers, f"{answers.count(None)} trickling bodies still open after {elapsed:.0f}s"
    assert elapsed < 8, elapsed  # a 2 s window at 1 KiB/s: the first window below the rate ends it
    first = answers[0].split(b"\r\n")
    assert first[0] == b"HTTP/1.1 408 Request Timeout", answers[0]
    body = json.loads(answers[0].split(b"\r\n\r\n", 1)[1])
    assert body["code"] == "timeout" and "1024 bytes a second" in body["error"]
    q, _ = _tenant(coord)
    assert q.tenant()["tenant"] == "default"  # honest requests still served


def test_a_body_sent_just_fast_enough_still_ends_at_the_request_deadline(coord):
    answers, elapsed = _trickle(coord, 3, 4096, 20)  # over the body rate, for ever: only the total bound ends it
    assert None not in answers, f"{answers.count(None)} endless bodies still open after {elapsed:.0f}s"
    assert 8 <= elapsed < 13, elapsed
    assert answers[0].startswith(b"HTTP/1.1 408 "), answers[0]
    assert "within 9 s" in json.loads(answers[0].split(b"\r\n\r\n", 1)[1])["error"]


def test_an_honest_upload_slower_than_the_window_is_not_cut(coord):
    q, store = _tenant(coord)
    data = bytes(range(256)) * 20_000  # 5 MB streamed in chunks: a body that keeps coming is never cut
    assert store.get(store.put(data)) == data


def test_rerunning_add_tenant_revokes_the_old_token(coord):
    old = _hec(coord, "add-tenant", "rotating").stdout.strip()
    assert _tenant(coord, token=old)[0].tenant()["tenant"] == "rotating"
    new = _hec(coord, "add-tenant", "rotating").stdout.strip()
    assert _tenant(coord, token=new)[0].tenant()["tenant"] == "rotating"
    with pytest.raises(Exception, match="no valid tenant token"):
        _tenant(coord, token=old)[0].tenant()


def _enrol(coord, tmp_path, name, token):
    me = WorkerIdentity.load_or_create(tmp_path / name)
    enroll(Session(coord.url, signer=me, ca=str(coord.tls[0])), me, token)
    return me


def test_enrolment_tokens_are_bounded_in_uses_and_time_and_die_with_a_revoked_worker(coord, tmp_path):
    two = _hec(coord, "enroll-token", "--operator", "lab-c", "--uses", "2")
    assert two.returncode == 0, two.stderr
    token = two.stdout.strip()
    _enrol(coord, tmp_path, "c1", token)
    _enrol(coord, tmp_path, "c2", token)
    with pytest.raises(Exception, match="no valid enrolment token"):
        _enrol(coord, tmp_path, "c3", token)
    brief = _hec(coord, "enroll-token", "--operator", "lab-d", "--valid-hours", "0.0005").stdout.strip()  # 1.8 s
    time.sleep(2.5)
    with pytest.raises(Exception, match="no valid enrolment token"):
        _enrol(coord, tmp_path, "d1", brief)
    many = _hec(coord, "enroll-token", "--operator", "lab-e", "--uses", "50").stdout.strip()
    first = _enrol(coord, tmp_path, "e1", many)
    assert _hec(coord, "revoke-worker", first.worker_id).returncode == 0
    with pytest.raises(Exception, match="no valid enrolment token"):  # the leaked token is burnt with its worker
        _enrol(coord, tmp_path, "e2", many)


def test_a_tenant_cannot_inflate_a_workers_flagged_count(coord, tmp_path):
    victim, sv = _worker(coord, tmp_path, "honest")
    q, store = _tenant(coord)
    d = store.put(b"flag input")
    job_id = q.submit({"inputs": [d]}, device="flags")
    lease = RemoteConsumer(sv).claim("h", devices=["flags"])
    assert RemoteConsumer(sv).complete(lease, {"outputs": [d], "inputs": [d], "receipt": {}})
    bystander, _ = _worker(coord, tmp_path, "bystander")
    for _ in range(5):
        q.report_flag(job_id, victim.worker_id)  # five reports about one job
        q.report_flag(job_id, bystander.worker_id)  # a worker that never touched the job
    other = _hec(coord, "add-tenant", "flagger").stdout.strip()
    with pytest.raises(Exception, match="no job"):
        _tenant(coord, token=other)[0].report_flag(job_id, victim.worker_id)
    with httpx.Client(verify=str(coord.tls[0])) as c:
        status = c.get(f"{coord.url}/v1/operator/status",
                       headers={"authorization": f"Bearer {coord.token('operator.token')}"}).json()
    flagged = {w["worker"]: w["flagged"] for w in status["workers"]}
    assert flagged[victim.worker_id] == 1 and flagged[bystander.worker_id] == 0


def test_operators_names_only_operators_that_ran_the_tenants_jobs(coord, tmp_path):
    a, sa = _worker(coord, tmp_path, "op-a")
    b, _ = _worker(coord, tmp_path, "op-b")
    q, store = _tenant(coord, token=_hec(coord, "add-tenant", "viewer").stdout.strip())
    seen = q.operators()
    assert seen[a.worker_id] == seen[b.worker_id]  # one operator: one vote, as replicas need
    assert not {"default", "lab-c", "lab-e"} & set(seen.values())  # names are the coordinator's business
    peer = _tenant(coord, token=_hec(coord, "add-tenant", "peer").stdout.strip())[0].operators()
    assert peer[a.worker_id] != seen[a.worker_id]  # labels differ per tenant: they cannot be compared across
    d = store.put(b"viewer input")
    q.submit({"inputs": [d]}, device="viewer")
    lease = RemoteConsumer(sa).claim("a", devices=["viewer"])
    assert RemoteConsumer(sa).complete(lease, {"outputs": [d], "inputs": [d], "receipt": {}})
    after = q.operators()  # an operator that ran its job: the tenant may know its name
    assert after[a.worker_id] == after[b.worker_id] == "default"


def test_rate_limits_hold_across_coordinator_processes(redis_url, tmp_path, tls):  # noqa: F811
    blobs = f"file://{tmp_path / 'blobs'}"
    a = CoordinatorProc(tmp_path / "a", tls, queue=redis_url, blobs=blobs, args=("--worker-rate", "6/minute")).start()
    b = CoordinatorProc(tmp_path / "b", tls, queue=redis_url, blobs=blobs, args=("--worker-rate", "6/minute")).start()
    try:
        me = _enrol(a, tmp_path, "fast", a.token("enroll.token"))  # the signed enrolment is the first of six
        codes = [_signed(c, me, "GET", f"{API}/worker/hello").status_code for c in (a, b) * 4]
        assert codes == [200] * 5 + [429] * 3, codes
    finally:
        a.stop()
        b.stop()


def test_long_poll_caps_hold_across_coordinator_processes(redis_url, tmp_path, tls):  # noqa: F811
    blobs = f"file://{tmp_path / 'blobs'}"
    a = CoordinatorProc(_configured(tmp_path / "a", long_polls_per_worker=4), tls, queue=redis_url, blobs=blobs).start()
    b = CoordinatorProc(_configured(tmp_path / "b", long_polls_per_worker=4), tls, queue=redis_url, blobs=blobs).start()
    try:
        me = _enrol(a, tmp_path, "two-door poller", a.token("enroll.token"))
        took: list[float] = []
        answers: list[str] = []
        body = json.dumps({"devices": ["nothing_there"], "block_s": 4}).encode()

        def poll(c):
            t0 = time.monotonic()
            r = _signed(c, me, "POST", f"{API}/worker/claim", body)
            answers.append(f"{r.status_code} {r.text[:200]}")
            if r.status_code == 200 and r.json()["lease"] is None:
                took.append(time.monotonic() - t0)

        threads = [threading.Thread(target=poll, args=((a, b)[i % 2],)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        held = [s for s in took if s >= 2.0]
        assert len(took) == 12, answers
        assert len(held) <= 4, f"one key held {len(held)} long polls through two coordinators"
    finally:
        a.stop()
        b.stop()
