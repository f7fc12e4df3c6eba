"""Queue benchmarks: per-core scaling of workers, and queue overhead against Concrete ML's FHEModelServer.

(a) Per-core scaling.  Each worker is pinned to its own cores (``sched_setaffinity``)
    with ``OMP_NUM_THREADS`` = its thread count; throughput (samples/s) on warm
    workers for 1 worker x 1 thread (one core), the worker's automatic choice
    (one single-threaded job per core) and the alternative (one job using every
    core).  Target: two one-core workers give >= 1.8x the throughput of one.
(b) End-to-end per-sample time through the embedded queue (``runner.run`` with a
    warm worker: upload, submit, claim, evaluate, store, collect) against calling
    Concrete ML's ``FHEModelServer.run`` directly on the same deployment and the
    same ciphertexts, with the same threads.  Target: within 10%.  It also shows
    that a repeated run uploads no keys and deserializes none (cache hits).

Model: Concrete ML DecisionTreeClassifier (max_depth 4, 6 bits) on breast cancer,
whose samples take seconds each, so that timings measure FHE work.

Run: ``python bench/bench_queue.py [--samples N]``; writes markdown to stdout and
``bench/results/queue.md`` plus ``bench/results/queue.png``.  About 6 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def _setup(tmp: Path, n: int):
    from concrete.ml.deployment import FHEModelDev
    from concrete.ml.sklearn import DecisionTreeClassifier
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    import he_compute

    X, y = load_breast_cancer(return_X_y=True)
    X_train, X_test, y_train, _ = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
    model = DecisionTreeClassifier(max_depth=4, n_bits=6, random_state=0).fit(X_train, y_train)
    model.compile(X_train)
    FHEModelDev(str(tmp / "deploy"), model).save(via_mlir=True)
    bundle = he_compute.import_concrete(tmp / "deploy")
    client = he_compute.Client.keygen(bundle, tmp / "keys")
    enc = client.encrypt(X_test[:n])
    return model, bundle, client, enc, X_test[:n]


def _wait_done(q, ids, timeout=1800):
    from he_compute.transport.queue import JobState

    deadline = time.monotonic() + timeout
    while True:
        states = [q.status(i).state for i in ids]
        if all(s is JobState.DONE for s in states):
            return
        if any(s in (JobState.FAILED, JobState.CANCELLED) for s in states) or time.monotonic() > deadline:
            raise RuntimeError(f"benchmark jobs did not finish: {states}")
        time.sleep(0.05)


def _throughput(tmp: Path, name: str, enc, bundle, client, workers: int, threads: int) -> float:
    """Samples per second on warm pinned workers (start-up and first-job loading excluded)."""
    from he_compute.client import run as runner
    from he_compute.client.run.local import start as spawn
    from he_compute.commands import WorkerOptions
    from he_compute.client.run.local import stop as stop_all
    from he_compute.formats import evalkeys
    from he_compute.transport import blobs, queue

    qurl, burl = f"sqlite://{tmp / name / 'queue.db'}", f"file://{tmp / name / 'blobs'}"
    q, store = queue.connect(qurl), blobs.connect(burl)
    evk = evalkeys.read(client.evaluation_keys_path)
    procs = spawn(qurl, burl, workers, WorkerOptions(device="cpu", threads=threads), pin=True, log=open(tmp / f"{name}.log", "ab"))
    try:
        # Warm-up: one single-sample job per worker, until every worker has loaded the model and keys.
        warmed: set[str] = set()
        while len(warmed) < workers:
            rep = runner.run(_subset(enc, [0] * workers), bundle.server_part(), evk, queue=q, blobs=store,
                             options=runner.RunOptions(timeout=600, samples_per_job=1, show_progress=False))
            warmed |= {s["worker"] for s in rep.worker_stats}
        t = time.perf_counter()
        rep = runner.run(enc, bundle.server_part(), evk, queue=q, blobs=store,
                         options=runner.RunOptions(timeout=1800, samples_per_job=1, show_progress=False))
        return enc.meta["n_samples"] / (time.perf_counter() - t)
    finally:
        stop_all(procs)


def _subset(enc, rows):
    from he_compute.formats.ciphertexts import chunk_name
    from he_compute.formats.container import Container

    sections = {chunk_name(i): enc.sections[chunk_name(r)] for i, r in enumerate(rows)}
    meta = dict(enc.meta, n_samples=len(rows), chunks=[1] * len(rows))
    return Container("ciphertexts", enc.scheme, meta, sections)


def _direct(tmp: Path, enc, client, threads: int) -> tuple[float, float]:
    """Per-sample seconds of FHEModelServer.run in a fresh process with ``threads`` OpenMP threads.

    Returns (keys passed serialized, as Concrete ML's docs do; keys deserialized once beforehand).
    """
    import subprocess

    script = f"""
import sys, time
from concrete import fhe
from concrete.ml.deployment import FHEModelServer
from he_compute.formats import container, evalkeys
from he_compute.formats.ciphertexts import chunk_name
enc = container.read({str(tmp / 'x.enc')!r})
evk = evalkeys.read({str(client.evaluation_keys_path)!r}).sections["keys"]
server = FHEModelServer({str(tmp / 'deploy')!r}); server.load()
n = enc.meta["n_samples"]
server.run(enc.sections[chunk_name(0)], evk)  # warm-up
t = time.perf_counter()
for i in range(n):
    server.run(enc.sections[chunk_name(i)], evk)
ser = (time.perf_counter() - t) / n
keys = fhe.EvaluationKeys.deserialize(evk)
t = time.perf_counter()
for i in range(n):
    server.run(enc.sections[chunk_name(i)], keys)
print(ser, (time.perf_counter() - t) / n)
"""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    ser, pre = map(float, out.stdout.split()[-2:])
    return ser, pre


def _raw_scaling(tmp: Path, enc, client, processes: int) -> float:
    """The hardware ceiling: samples/s of ``processes`` independent FHEModelServer.run loops, one pinned core
    and one OpenMP thread each, no queue at all."""
    import subprocess

    script = f"""
import os, sys, time
core = int(sys.argv[1]); os.sched_setaffinity(0, {{core}})
from concrete import fhe
from concrete.ml.deployment import FHEModelServer
from he_compute.formats import container, evalkeys
from he_compute.formats.ciphertexts import chunk_name
enc = container.read({str(tmp / 'x.enc')!r})
keys = fhe.EvaluationKeys.deserialize(evalkeys.read({str(client.evaluation_keys_path)!r}).sections["keys"])
server = FHEModelServer({str(tmp / 'deploy')!r}); server.load()
server.run(enc.sections[chunk_name(0)], keys)  # warm-up
print("ready", flush=True)
sys.stdin.readline()
t = time.perf_counter()
for i in range(enc.meta["n_samples"]):
    server.run(enc.sections[chunk_name(i)], keys)
print(time.perf_counter() - t, flush=True)
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i % os.cpu_count())], env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
             for i in range(processes)]
    for p in procs:  # start the timed loops together, once every process is warm
        while p.stdout.readline().strip() != "ready":
            pass
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    elapsed = [float(p.stdout.readline()) for p in procs]
    for p in procs:
        p.wait()
    return processes * enc.meta["n_samples"] / max(elapsed)


def _queue_per_sample(tmp: Path, enc, bundle, client, threads: int) -> tuple[float, dict, dict]:
    """Per-sample seconds of runner.run through the embedded queue on one warm worker; plus cache evidence."""
    from he_compute.client import run as runner
    from he_compute.client.run.local import start as spawn
    from he_compute.commands import WorkerOptions
    from he_compute.client.run.local import stop as stop_all
    from he_compute.formats import evalkeys
    from he_compute.transport import blobs, queue

    qurl, burl = f"sqlite://{tmp / 'e2e' / 'queue.db'}", f"file://{tmp / 'e2e' / 'blobs'}"
    q, store = queue.connect(qurl), blobs.connect(burl)
    evk = evalkeys.read(client.evaluation_keys_path)
    procs = spawn(qurl, burl, 1, WorkerOptions(device="cpu", threads=threads), pin=True, log=open(tmp / "e2e.log", "ab"))
    try:
        first = runner.run(_subset(enc, [0]), bundle.server_part(), evk, queue=q, blobs=store,
                           options=runner.RunOptions(timeout=600, show_progress=False))
        t = time.perf_counter()
        rep = runner.run(enc, bundle.server_part(), evk, queue=q, blobs=store,
                         options=runner.RunOptions(timeout=1800, samples_per_job=1, show_progress=False))
        per = (time.perf_counter() - t) / enc.meta["n_samples"]
        first_info = {"uploaded": first.uploaded, "keys": [s["keys"] for s in first.worker_stats]}
        again_info = {"uploaded": rep.uploaded, "reused": rep.reused, "keys": sorted({s["keys"] for s in rep.worker_stats}),
                      "server": sorted({s["server"] for s in rep.worker_stats}), "result": rep.result}
        return per, first_info, again_info
    finally:
        stop_all(procs)


def _plot(configs: dict[str, float], e2e: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.bar(list(configs), list(configs.values()), color=["#999", "#2a7", "#27a"][: len(configs)])
    a.set_ylabel("samples / s (warm workers)")
    a.set_title("(a) jobs at once x threads per job")
    b.bar(list(e2e), list(e2e.values()), color=["#27a", "#999", "#2a7"][: len(e2e)])
    b.set_ylabel("seconds / sample")
    b.set_title("(b) queue vs FHEModelServer.run")
    for ax in (a, b):
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    """Run both benchmarks; print markdown and write it to bench/results/queue.md (+ queue.png)."""
    p = argparse.ArgumentParser(description="he_compute queue benchmarks")
    p.add_argument("--samples", type=int, default=6, help="encrypted samples per measurement")
    a = p.parse_args(argv)
    from he_compute.worker.host import split_cores, usable_cores

    cores = usable_cores()
    load0 = os.getloadavg()
    lines = ["# Queue benchmarks\n", f"Machine: {cores} usable core(s), {os.uname().machine}; model: Concrete ML "
             f"DecisionTreeClassifier (depth 4, 6 bits), breast cancer; {a.samples} samples per measurement, "
             "one sample per job, warm workers.\n"]
    with tempfile.TemporaryDirectory(prefix="hec-bench-") as d:
        tmp = Path(d)
        t = time.perf_counter()
        model, bundle, client, enc, X = _setup(tmp, a.samples)
        enc.save(tmp / "x.enc")
        lines.append(f"Setup (train, compile, keygen, encrypt): {time.perf_counter() - t:.1f}s\n")

        auto_jobs, auto_threads = split_cores(cores)
        configs = {"1 job x 1 thread (1 core)": (1, 1)}
        configs[f"{auto_jobs} jobs x {auto_threads} thread (auto)"] = (auto_jobs, auto_threads)
        if cores > 1:
            configs[f"1 job x {cores} threads"] = (1, cores)
        through = {}
        for i, (label, (jobs, threads)) in enumerate(configs.items()):
            through[label] = _throughput(tmp, f"a{i}", enc, bundle, client, jobs, threads)
        base = through["1 job x 1 thread (1 core)"]
        raw1 = _raw_scaling(tmp, enc, client, 1)
        raw_n = _raw_scaling(tmp, enc, client, cores) if cores > 1 else raw1
        lines += ["## (a) Per-core scaling\n", "| configuration | samples/s | vs one core |", "|---|---:|---:|"]
        lines += [f"| {k} | {v:.3f} | {v / base:.2f}x |" for k, v in through.items()]
        lines += [f"| no queue: 1 FHEModelServer.run process, 1 pinned core | {raw1:.3f} | {raw1 / base:.2f}x |",
                  f"| no queue: {cores} FHEModelServer.run processes, 1 pinned core each | {raw_n:.3f} | "
                  f"{raw_n / base:.2f}x |"]
        lines.append(f"\nThe machine's own ceiling for {cores} one-core processes is {raw_n / raw1:.2f}x one "
                     f"(no queue at all); the queue's {cores} one-core workers reach "
                     f"{through[f'{auto_jobs} jobs x {auto_threads} thread (auto)'] / base:.2f}x.")
        best = max(through, key=through.get)
        lines.append(f"\nThe worker's automatic choice is `{auto_jobs} jobs x {auto_threads} thread` "
                     f"(`split_cores({cores})`); the fastest measured here: `{best}`.  Target for two one-core workers: "
                     f">= 1.8x one.\n")

        ser, pre = _direct(tmp, enc, client, cores)
        per, first, again = _queue_per_sample(tmp, enc, bundle, client, cores)
        agree = np.allclose(client.decrypt(again.pop("result")), model.predict_proba(X, fhe="disable"), atol=1e-9)
        lines += ["## (b) Queue overhead against FHEModelServer.run\n",
                  f"Both with {cores} OpenMP thread(s) on the same deployment and ciphertexts.\n",
                  "| path | s/sample | vs FHEModelServer.run (keys deserialized once) |", "|---|---:|---:|",
                  f"| FHEModelServer.run, keys passed serialized (deserialized every call) | {ser:.3f} | {ser / pre:.2f}x |",
                  f"| FHEModelServer.run, keys deserialized once | {pre:.3f} | 1.00x |",
                  f"| he_compute embedded queue, end to end (runner.run, warm worker) | {per:.3f} | {per / pre:.2f}x |",
                  "", f"Target: queue within 10% of direct: {'met' if per <= 1.10 * pre else 'NOT met'} "
                  f"({(per / pre - 1) * 100:+.1f}%).\n",
                  f"First run: uploaded {first['uploaded']}, worker keys cache {first['keys']}.  Repeated run: uploaded "
                  f"{again['uploaded'] or 'nothing'}, reused {again['reused']}, worker keys cache {again['keys']}, "
                  f"evaluator cache {again['server']}: no key upload and no key deserialization.\n"]
        lines.append(f"Decrypted queue results equal the clear quantized model: {'yes' if agree else 'NO'}.\n")
        RESULTS.mkdir(parents=True, exist_ok=True)
        _plot({k.replace(" (", "\n("): v for k, v in through.items()},
              {"queue": per, "FHEModelServer\n(keys once)": pre, "FHEModelServer\n(keys each call)": ser},
              RESULTS / "queue.png")
    load = os.getloadavg()
    lines.append(f"Load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {cores} core(s) "
                 f"(at start: {load0[0]:.1f}); above {cores} means other processes shared the cores and the "
                 "scaling figures understate what idle cores give.\n")
    lines.append("![queue benchmarks](queue.png)\n")
    text = "\n".join(lines)
    print(text)
    (RESULTS / "queue.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
