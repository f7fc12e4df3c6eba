"""A CKKS batch job end to end through a coordinator vs on Redis directly (part of ``bench_coordinator``).

Logistic regression on standardized breast-cancer data, batch packing, 8 full ciphertexts of samples; one
``hec worker`` process on each path, a cold run (the worker loads the keys) then a warm one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .common import table

PY = sys.executable


def _worker(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([PY, "-m", "he_compute", "worker", "--concurrency", "1", "--threads", "1", "--device",
                             "cpu", *args], env=env, stdout=subprocess.DEVNULL, stderr=open(log, "ab"))


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def compare(d: Path) -> str:
    """Run both paths and return the markdown section."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    import he_compute
    from he_compute.client.run import run
    from he_compute.transport.remote import open_tenant

    from .bench_coordinator import Redis, _coordinator

    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    model = LogisticRegression(max_iter=1000).fit(X, y)
    bundle = he_compute.compile(model, X, scheme="ckks", packing="batch")
    slots = bundle.manifest["ckks"]["slots"]
    Xb = np.concatenate([X] * int(np.ceil(8 * slots / len(X))))[: 8 * slots]
    client = he_compute.Client.keygen(bundle, d / "ckks-keys")
    enc = client.encrypt(Xb)
    evk = he_compute.read_evaluation_keys(client.evaluation_keys_path)
    part = bundle.server_part()
    (d / "ckks-r").mkdir()
    redis = Redis(d / "ckks-r").start()
    rows, outs = [], {}
    try:
        blobs = f"file://{d / 'ckks-blobs'}"
        w = _worker(["--queue", redis.url, "--blobs", blobs], d / "ckks-direct.log")
        times = [_timed(lambda: outs.__setitem__("direct", run(enc, part, evk, queue=redis.url, blobs=blobs,
                                                                 show_progress=False, timeout=600)))
                 for _ in range(2)]
        w.terminate()
        w.wait(60)
        rows.append(["Redis directly", f"{times[0]:.2f}", f"{times[1]:.2f}"])
        c, url = _coordinator(d, redis.url.replace("/0", "/1"), f"file://{d / 'ckks-coord-blobs'}", "ckks-coord")
        os.environ["HEC_CHECKPOINTS"] = str(d / "ckks-checkpoints.json")
        w = _worker(["--coordinator", url, "--state", str(d / "ckks-w"), "--token-file",
                     str(d / "ckks-coord" / "enroll.token"), "--ca-file", str(d / "ca.pem")], d / "ckks-coord.log")
        q, store = open_tenant(url, token=(d / "ckks-coord" / "client.token").read_text().strip(),
                               ca_file=str(d / "ca.pem"))
        times2 = [_timed(lambda: outs.__setitem__("coord", run(enc, part, evk, queue=q, blobs=store,
                                                                show_progress=False, timeout=600)))
                  for _ in range(2)]
        w.terminate()
        w.wait(60)
        c.terminate()
        c.wait(30)
        rows.append(["through the coordinator (TLS)", f"{times2[0]:.2f}", f"{times2[1]:.2f}"])
    finally:
        redis.proc.kill()
    same = np.allclose(client.decrypt(outs["direct"].result), client.decrypt(outs["coord"].result), atol=1e-9)
    added = [100 * (b / a - 1) for a, b in zip(times, times2)]
    return (f"\n## CKKS batch job end to end ({len(Xb)} samples, {len(enc.sections)} ciphertexts, one worker)\n\n"
            + table(["path", "cold run s", "warm run s"], rows)
            + f"\n\ncoordinator adds {added[0]:+.1f}% (cold), {added[1]:+.1f}% (warm); results identical: {same}\n")
