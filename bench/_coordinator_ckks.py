"""A CKKS batch job end to end through a coordinator vs on Redis directly (part of ``bench_coordinator``).

Logistic regression and a 30-16-2 ReLU MLP on breast-cancer data, batch packing, 8 full ciphertexts; one
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
    """Run both paths on two models (cheap and heavier evaluation per ciphertext byte); the markdown section."""
    import he_compute
    from he_compute.client.run import RunOptions, run
    from he_compute.transport.remote import open_tenant

    from .bench_ckks import _data, _models
    from .bench_coordinator import Redis, _coordinator

    cancer, digits = _data()
    models = [m for m in _models(cancer, digits) if m[0] in ("logreg (cancer)", "mlp 30-16-2 relu (cancer)")]
    (d / "ckks-r").mkdir()
    redis = Redis(d / "ckks-r").start()
    blobs = f"file://{d / 'ckks-blobs'}"
    direct = _worker(["--queue", redis.url, "--blobs", blobs], d / "ckks-direct.log")
    c, url = _coordinator(d, redis.url.replace("/0", "/1"), f"file://{d / 'ckks-coord-blobs'}", "ckks-coord")
    os.environ["HEC_CHECKPOINTS"] = str(d / "ckks-checkpoints.json")
    remote = _worker(["--coordinator", url, "--state", str(d / "ckks-w"), "--token-file",
                      str(d / "ckks-coord" / "enroll.token"), "--ca-file", str(d / "ca.pem")], d / "ckks-coord.log")
    q, store = open_tenant(url, token=(d / "ckks-coord" / "client.token").read_text().strip(),
                           ca_file=str(d / "ca.pem"))
    rows, notes = [], []
    try:
        for name, model, data in models:
            bundle = he_compute.compile(model, data[0], scheme="ckks", packing="batch")
            slots = bundle.manifest["ckks"]["slots"]
            Xb = np.concatenate([data[1]] * int(np.ceil(8 * slots / len(data[1]))))[: 8 * slots]
            client = he_compute.Client.keygen(bundle, d / f"ckks-keys-{len(rows)}")
            enc = client.encrypt(Xb)
            evk = he_compute.read_evaluation_keys(client.evaluation_keys_path)
            part, outs = bundle.server_part(), {}
            paths = {"direct": dict(queue=redis.url, blobs=blobs), "coord": dict(queue=q, blobs=store)}
            times: dict[str, list[float]] = {k: [] for k in paths}
            for _ in range(2):  # interleaved, so that a change in the machine's load hits both paths alike
                for k, v in paths.items():
                    times[k].append(_timed(lambda k=k, v=v: outs.__setitem__(
                        k, run(enc, part, evk, options=RunOptions(timeout=900, show_progress=False), **v))))
            same = np.allclose(client.decrypt(outs["direct"].result), client.decrypt(outs["coord"].result), atol=1e-9)
            mb = sum(len(v) for v in enc.sections.values()) / 2**20
            added = [100 * (b / a - 1) for a, b in zip(times["direct"], times["coord"])]
            rows.append([name, f"{len(Xb)}", f"{mb:.0f} MiB", f"{times['direct'][0]:.2f} / {times['direct'][1]:.2f}",
                         f"{times['coord'][0]:.2f} / {times['coord'][1]:.2f}", f"{added[0]:+.0f}% / {added[1]:+.0f}%"])
            notes.append(f"{name}: decrypted results identical on both paths: {same}")
    finally:
        for w in (direct, remote):
            w.terminate()
            w.wait(60)
        c.terminate()
        c.wait(30)
        redis.proc.kill()
    return ("\n## CKKS batch job end to end (8 ciphertexts of samples, one worker; cold / warm run)\n\n"
            + table(["model", "samples", "ciphertexts", "Redis directly s", "coordinator (TLS) s", "added"], rows)
            + "\n\n" + "\n".join(notes) + "\n")
