"""The coordinator under load, beside the direct-Redis path, measured in the same run on this machine.

1. **Load**: 10,000 small jobs through 2 coordinator processes (one Redis, TLS) and 8 worker processes that
   claim and complete (no FHE), then the same 10,000 jobs with 8 workers on Redis directly.  Reported:
   jobs/s, p50/p99 claim latency (claims that returned a job), jobs lost, jobs completed twice.
2. **CKKS batch job** end to end (upload, evaluate on one ``hec worker``, download, verify) through the
   coordinator and directly: the coordinator's added share of the wall time.
3. **Chaos**: 2,000 jobs; a coordinator, a worker and Redis (AOF, fsync always) are SIGKILLed mid-run; every
   job must end done exactly once.

``python -m bench coordinator`` writes bench/results/coordinator.md.  ``python -m bench.bench_coordinator load
[N]`` runs only the load comparison (1) with N jobs (default 10,000) and prints its table: a quick profile run.
``python -m bench.bench_coordinator worker ...`` is one light worker (used by the benchmark itself).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .common import table, write

N_JOBS, N_WORKERS, CHAOS_JOBS = 10_000, 8, 2_000
PY = sys.executable


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(pred, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Redis:
    """redis-server on loopback with AOF (fsync always) and a password."""

    def __init__(self, d: Path):
        self.d, self.port, self.proc = d, _port(), None
        self.url = f"redis://:bench-secret@127.0.0.1:{self.port}/0"

    def start(self):
        self.proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--dir", str(self.d), "--save", "", "--appendonly", "yes", "--appendfsync",
                                      "always", "--requirepass", "bench-secret"], stdout=subprocess.DEVNULL)
        import redis

        def up():
            try:
                return redis.Redis.from_url(self.url).ping()
            except redis.ConnectionError:
                return False

        _wait(up, 20, "redis")
        return self


def _tls(d: Path):
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    with open(d / "cert.pem", "wb") as fh:
        for pem in cert.cert_chain_pems:
            fh.write(pem.bytes())
    return d / "ca.pem"


def _coordinator(d: Path, redis_url: str, blobs: str, name: str) -> tuple[subprocess.Popen, str]:
    port = _port()
    proc = subprocess.Popen([PY, "-m", "he_compute", "coordinator", "--listen", f"127.0.0.1:{port}", "--data",
                             str(d / name), "--queue", redis_url, "--blobs", blobs, "--tls-cert", str(d / "cert.pem"),
                             "--tls-key", str(d / "key.pem"), "--worker-rate", "100000/second", "--lease", "5"],
                            stdout=subprocess.DEVNULL, stderr=open(d / f"{name}.log", "ab"))
    import httpx

    def up():
        try:
            return httpx.get(f"https://127.0.0.1:{port}/v1/tenant", verify=str(d / "ca.pem"), timeout=2) is not None
        except httpx.HTTPError:
            return False

    _wait(up, 60, "coordinator")
    return proc, f"https://127.0.0.1:{port}"


def light_worker(mode: str, target: str, out: str, state: str, enroll: str | None) -> None:
    """Claim and complete until the stop file appears; one JSON line per claim to ``out``."""
    if mode == "coord":
        from he_compute.transport.remote import open_worker
        from he_compute.worker.identity import WorkerIdentity

        q, _ = open_worker(target, WorkerIdentity.load_or_create(state), token_file=enroll)
    else:
        from he_compute.transport.queue import connect

        q = connect(target, lease_s=5)
    stop = Path(out + ".stop")
    with open(out, "a", buffering=1) as fh:
        while not stop.exists():
            t0 = time.perf_counter()
            try:
                lease = q.claim("w", devices=["bench"], block_s=0.2)
            except Exception:  # noqa: BLE001 - a coordinator or Redis being killed: keep trying
                time.sleep(0.2)
                continue
            if lease is None:
                continue
            dt = time.perf_counter() - t0
            inputs = lease.job.spec["inputs"]
            try:
                ok = q.complete(lease, {"outputs": inputs, "inputs": inputs, "receipt": {}})
            except Exception:  # noqa: BLE001 - the lease expires and the job goes to another worker
                continue
            fh.write(json.dumps({"job": lease.job.id, "claim_s": dt, "ok": bool(ok)}) + "\n")


def _start_workers(mode, targets, d: Path, tag: str, enroll: str | None) -> list[tuple[subprocess.Popen, Path]]:
    out = []
    for i in range(N_WORKERS):
        path = d / f"{tag}-{i}.jsonl"
        env = {**os.environ, "HEC_CA_FILE": str(d / "ca.pem")}
        p = subprocess.Popen([PY, "-m", "bench.bench_coordinator", "worker", mode, targets[i % len(targets)],
                              str(path), str(d / f"{tag}-state-{i}"), enroll or ""], env=env,
                             cwd=Path(__file__).parent.parent, stderr=open(d / f"{tag}-workers.log", "ab"))
        out.append((p, path))
    return out


def _settle(workers, n: int, quiet_s: float = 60.0) -> None:
    """Wait until ``n`` jobs are done, or nothing has completed for ``quiet_s`` (the rest ended otherwise)."""
    last, since = -1, time.monotonic()
    while (now := _completed(workers)) < n:
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > quiet_s:
            return


def _completed(workers) -> int:
    """Distinct jobs the workers' logs say were accepted (cheap: no request to the system under test)."""
    time.sleep(0.5)
    done = set()
    for _, path in workers:
        if path.exists():
            done.update(json.loads(x)["job"] for x in path.read_text().splitlines() if x.endswith("}") and
                        '"ok": true' in x)
    return len(done)


def _collect(workers, d: Path, tag: str):
    for _, path in workers:
        Path(str(path) + ".stop").touch()
    for p, _ in workers:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
    lines = [json.loads(x) for _, path in workers if path.exists() for x in path.read_text().splitlines() if x]
    return lines


def _submit(q_factory, n: int, threads: int = 4) -> list[str]:
    ids: list[str] = []
    lock = threading.Lock()

    def go(k):
        q, d = q_factory()
        mine = [q.submit({"inputs": [d]}, device="bench") for _ in range(k)]
        with lock:
            ids.extend(mine)

    ts = [threading.Thread(target=go, args=(n // threads + (i < n % threads),)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return ids


def _row(name, lines, ids, seconds, done=None):
    """One table row; ``done`` is the set of jobs the queue says are done (default: what workers logged)."""
    ok = [x["job"] for x in lines if x["ok"]]
    lat = np.array([x["claim_s"] for x in lines]) * 1000
    lost = len(set(ids) - (set(ok) if done is None else done))
    twice = len(ok) - len(set(ok))
    return [name, f"{len(set(ok)) / seconds:.0f}", f"{np.percentile(lat, 50):.1f}", f"{np.percentile(lat, 99):.1f}",
            lost, twice]


def _load(d: Path, redis: Redis, kill=None, n=N_JOBS):
    from he_compute.transport.remote import open_tenant

    blobs = f"file://{d / 'blobs'}"
    (c1, u1), (c2, u2) = _coordinator(d, redis.url, blobs, "c1"), _coordinator(d, redis.url, blobs, "c2")
    tag = "chaos" if kill else "coord"

    def tenant():
        q, store = open_tenant(f"{u1},{u2}", token=(d / "c1" / "client.token").read_text().strip(),
                               ca_file=str(d / "ca.pem"))
        return q, store.put(b"bench input")

    ids = _submit(tenant, n)
    q, _ = tenant()
    t0 = time.perf_counter()
    workers = _start_workers("coord", [u1, u2], d, tag, str(d / "c1" / "enroll.token"))
    if kill:
        kill(c1, workers, q)
    _settle(workers, n)
    seconds = time.perf_counter() - t0
    lines = _collect(workers, d, tag)
    states: dict[str, int] = {}
    final = q.jobs(limit=n + 1)
    for j in final:
        states[j.state.value] = states.get(j.state.value, 0) + 1
    done = {j.id for j in final if j.state.value == "done"}
    for c in (c1, c2):
        if c.poll() is None:
            c.terminate()
            c.wait(30)
    return _row(f"coordinator x2 ({tag})", lines, ids, seconds, done), states


def _direct(d: Path, redis: Redis, n: int = N_JOBS):
    from he_compute.transport import blobs, queue

    def direct():
        store = blobs.connect(f"file://{d / 'blobs-direct'}")
        return queue.connect(redis.url, lease_s=5), store.put(b"bench input")

    ids = _submit(direct, n)
    q, _ = direct()
    t0 = time.perf_counter()
    workers = _start_workers("direct", [redis.url], d, "direct", None)
    _settle(workers, n)
    seconds = time.perf_counter() - t0
    return _row("Redis directly", _collect(workers, d, "direct"), ids, seconds)


def _chaos_kill(d: Path, redis: Redis):
    def kill(c1, workers, q):
        _wait(lambda: _completed(workers) > CHAOS_JOBS // 4, 300, "a quarter done")
        c1.send_signal(signal.SIGKILL)
        workers[0][0].send_signal(signal.SIGKILL)
        redis.proc.send_signal(signal.SIGKILL)
        redis.proc.wait()
        redis.start()
    return kill


HEADERS = ["path", "jobs/s", "claim p50 ms", "claim p99 ms", "lost", "completed twice"]


def _load_rows(d: Path, n: int = N_JOBS) -> tuple[list, list]:
    """The coordinator row and the direct-Redis row, measured one after the other over one fresh Redis."""
    redis = Redis(d / "r1")
    (d / "r1").mkdir()
    redis.start()
    try:
        coord_row, _ = _load(d, redis, n=n)
        direct_row = _direct(d, redis, n)
    finally:
        redis.proc.kill()
    return coord_row, direct_row


def load_only(n: int) -> str:
    """Only the load comparison, with ``n`` jobs: its table (with the load average before it ran)."""
    d = Path(tempfile.mkdtemp(prefix="hec-bench-coord-"))
    _tls(d)
    load = os.getloadavg()
    coord_row, direct_row = _load_rows(d, n)
    after = os.getloadavg()
    return (f"{n} jobs, {N_WORKERS} light workers, TLS; load average before {load[0]:.2f}, after {after[0]:.2f}\n\n"
            + table(HEADERS, [coord_row, direct_row]))


def main() -> None:
    d = Path(tempfile.mkdtemp(prefix="hec-bench-coord-"))
    _tls(d)
    load = os.getloadavg()
    coord_row, direct_row = _load_rows(d)
    chaos_dir = d / "chaos"
    chaos_dir.mkdir()
    shutil.copy(d / "ca.pem", chaos_dir)
    shutil.copy(d / "cert.pem", chaos_dir)
    shutil.copy(d / "key.pem", chaos_dir)
    r2 = Redis(chaos_dir / "r")
    (chaos_dir / "r").mkdir()
    r2.start()
    try:
        chaos_row, states = _load(chaos_dir, r2, kill=_chaos_kill(chaos_dir, r2), n=CHAOS_JOBS)
    finally:
        r2.proc.kill()
    headers = HEADERS
    text = (f"# Coordinator load ({N_JOBS} jobs, {N_WORKERS} light workers, TLS; load average before "
            f"{load[0]:.2f})\n\n" + table(headers, [coord_row, direct_row]) +
            f"\n\n## Chaos ({CHAOS_JOBS} jobs; SIGKILL a coordinator, a worker and Redis mid-run)\n\n" +
            table(headers, [chaos_row]) + f"\n\nfinal job states after the chaos run: {states}\n" + _ckks(d))
    write("coordinator", text)


def _ckks(d: Path) -> str:
    from bench._coordinator_ckks import compare

    return compare(d)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "ckks":  # only the CKKS comparison
        _d = Path(tempfile.mkdtemp(prefix="hec-bench-ckks-"))
        _tls(_d)
        print(_ckks(_d))
    elif len(sys.argv) > 1 and sys.argv[1] == "load":  # only the load comparison, N jobs
        print(load_only(int(sys.argv[2]) if len(sys.argv) > 2 else N_JOBS))
    elif len(sys.argv) > 1 and sys.argv[1] == "worker":
        light_worker(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6] or None)
    else:
        main()
