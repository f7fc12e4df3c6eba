"""A hostile worker key against the coordinator: does a tenant still get answers in time?

One enrolled worker key keeps ``HOLD`` claims open at once (long polls of 10 s for a device nobody submits
to), re-sending each as soon as it is answered, paced to stay under its rate limit (the default 200 requests
per second): as many long polls as it may.  Meanwhile a tenant asks ``GET /v1/tenant`` and ``GET /v1/jobs``
ten times a second.  Reported: the tenant's p50 / p99 / max latency, and what the hostile key got (answers
that waited, immediate empty answers, 429s).  Two settings: the default cap (4 waiting claims per key), and
no cap at all (waiting claims still hold no thread: they sleep on the event loop).  Issue 19 measured the
tenant at 17-28 s when 300-700 such polls held the coordinator's 200 threads.

``python -m bench coordinator_hostile`` writes bench/results/coordinator_hostile.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .bench_coordinator import _port, _tls, _wait
from .common import table, write

HOLD, DURATION_S, RATE = 600, 30.0, 190.0  # open polls, seconds of load, hostile requests per second (limit 200)
PY = sys.executable


def _start(d: Path, **settings) -> tuple[subprocess.Popen, str]:
    data = d / "data"
    data.mkdir(parents=True)
    (data / "coordinator.json").write_text(json.dumps({"data": str(data), **settings}))
    port = _port()
    proc = subprocess.Popen([PY, "-m", "he_compute", "coordinator", "--listen", f"127.0.0.1:{port}", "--data",
                             str(data), "--tls-cert", str(d.parent / "cert.pem"), "--tls-key", str(d.parent / "key.pem")],
                            stdout=subprocess.DEVNULL, stderr=open(d / "coordinator.log", "ab"))
    url = f"https://127.0.0.1:{port}"

    def up() -> bool:
        import httpx

        try:
            httpx.get(url + "/v1/tenant", verify=str(d.parent / "ca.pem"), timeout=2)
            return True
        except httpx.HTTPError:
            return False

    _wait(up, 60, "coordinator")
    return proc, url


async def _hostile(url: str, ca: str, me, stop: float, tally: dict[str, int]) -> None:
    import httpx

    from he_compute.transport.remote.wire import API, sign_request

    body = json.dumps({"devices": ["nobody_submits"], "block_s": 10}).encode()
    path = f"{API}/worker/claim"
    gap = HOLD / RATE  # each of HOLD loops sends at most one request per gap: RATE per second in all

    async def loop(client: httpx.AsyncClient, i: int) -> None:
        await asyncio.sleep(i / RATE)  # ramp up at the rate limit
        while time.monotonic() < stop:
            t0 = time.monotonic()
            try:
                r = await client.post(url + path, content=body, headers=sign_request(me, "POST", path, body))
                took = time.monotonic() - t0
                key = "429" if r.status_code == 429 else ("waited" if took > 1.0 else "immediate")
                tally[key] = tally.get(key, 0) + 1
            except httpx.HTTPError:
                tally["error"] = tally.get("error", 0) + 1
            await asyncio.sleep(max(0.0, gap - (time.monotonic() - t0)))

    limits = httpx.Limits(max_connections=HOLD + 10, max_keepalive_connections=HOLD + 10)
    async with httpx.AsyncClient(verify=ca, limits=limits, timeout=30) as client:
        await asyncio.gather(*(loop(client, i) for i in range(HOLD)))


def _tenant(url: str, ca: str, token: str, stop: float, out: list[float]) -> None:
    import httpx

    with httpx.Client(verify=ca, headers={"authorization": f"Bearer {token}"}, timeout=60) as c:
        while time.monotonic() < stop:
            for path in ("/v1/tenant", "/v1/jobs?limit=10"):
                t0 = time.perf_counter()
                c.get(url + path).raise_for_status()
                out.append(time.perf_counter() - t0)
            time.sleep(0.2)


def scenario(d: Path, label: str, **settings) -> list[object]:
    from he_compute.transport.remote import Session, enroll
    from he_compute.worker.identity import WorkerIdentity

    proc, url = _start(d, **settings)
    ca = str(d.parent / "ca.pem")
    try:
        me = WorkerIdentity.load_or_create(d / "hostile")
        enroll(Session(url, signer=me, ca=ca), me, (d / "data" / "enroll.token").read_text().strip())
        token = (d / "data" / "client.token").read_text().strip()
        calm: list[float] = []
        _tenant(url, ca, token, time.monotonic() + 3, calm)  # the same requests without the hostile key
        stop = time.monotonic() + DURATION_S
        lat: list[float] = []
        tally: dict[str, int] = {}
        t = threading.Thread(target=_tenant, args=(url, ca, token, stop, lat))
        t.start()
        asyncio.run(_hostile(url, ca, me, stop, tally))
        t.join()
    finally:
        proc.terminate()
        proc.wait(30)
    ms = np.array(lat) * 1000
    return [label, f"{np.percentile(np.array(calm) * 1000, 50):.0f}", f"{np.percentile(ms, 50):.0f}",
            f"{np.percentile(ms, 99):.0f}", f"{ms.max():.0f}", len(lat), tally.get("waited", 0),
            tally.get("immediate", 0), tally.get("429", 0), tally.get("error", 0)]


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="hec-hostile-"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _tls(root)
    for name in ("capped", "uncapped"):
        (root / name).mkdir()
    rows = [scenario(root / "capped", "default cap: 4 waiting claims per key"),
            scenario(root / "uncapped", "no cap (waits on the event loop)", long_polls_per_worker=10**6,
                     long_polls_per_operator=10**6)]
    text = "\n".join([
        "# A hostile worker key holding long polls, and a tenant's latency",
        "",
        f"One key keeps {HOLD} claims (10 s long polls) going for {DURATION_S:.0f} s at {RATE:.0f} requests/s "
        "(limit 200/s); a tenant sends GET /v1/tenant and GET /v1/jobs five times a second each.  One coordinator "
        f"process (SQLite, TLS) on {os.cpu_count()} cores shared with the load generator.",
        "",
        table(["setting", "tenant p50 ms alone", "tenant p50 ms", "tenant p99 ms", "tenant max ms", "tenant requests",
               "hostile: waited", "hostile: answered at once", "hostile: 429", "hostile: errors"], rows),
        "",
        "Target: tenant p99 under 1000 ms.  Issue 19 measured 17-28 s for GET /v1/tenant when such polls held "
        "the thread pool (before waiting claims moved to the event loop and were capped per key).",
    ])
    write("coordinator_hostile", text)


if __name__ == "__main__":
    main()
