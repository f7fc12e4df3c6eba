"""What the evaluation sandbox costs per job, warm: a locked-down child per model vs evaluating in process.

For a TFHE decision tree (one sample per job) and a CKKS batch (one ciphertext chunk of 4096 samples per
job), the same payloads are evaluated by :class:`~he_compute.worker.executor.InProcess` and by
:class:`~he_compute.worker.sandbox.Sandbox` after both have loaded the model and keys (the child's start-up
and the circuit compilation are paid once per model and reported apart).  Interleaved rounds, medians.
Writes ``bench/results/sandbox.md`` and ``sandbox.png``.

Run: ``python -m bench sandbox``.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import table, write

ROUNDS = 5
TFHE_SAMPLES = 6
THREADS = 1  # per job, both sides: the worker's default (one single-threaded job per core, worker/host.split_cores)


def _task_and_fetch(bundle, client, enc):
    import he_compute
    from he_compute.formats.ciphertexts import chunk_name
    from he_compute.formats.digests import digest_of
    from he_compute.formats.task import Task

    blobs = {}

    def put(data: bytes) -> str:
        blobs[digest_of(data)] = data
        return digest_of(data)

    evk = he_compute.read_evaluation_keys(client.evaluation_keys_path)
    payloads = [enc.sections[chunk_name(i)] for i in range(len(enc.sections))]
    task = Task(bundle.scheme, bundle.model_id, put(bundle.server_part().to_bytes()), put(evk.to_bytes()),
                evk.meta["key_id"], tuple(put(p) for p in payloads), tuple(int(c) for c in enc.meta["chunks"]))
    return task, blobs.__getitem__, payloads


def _cpu_s(ex) -> float:
    """CPU seconds used so far by this process and, for the sandbox, by its current child: unlike wall time,
    what a job costs in CPU does not grow when other work shares the cores (utime + stime, all threads)."""
    own = time.process_time()
    proc = getattr(getattr(ex, "_current", None), "proc", None)  # the sandbox's child; InProcess has none
    if proc is None:
        return own
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return own + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(name: str, bundle, client, enc) -> dict:
    from he_compute.worker.executor import InProcess
    from he_compute.worker.sandbox import Limits, Sandbox

    task, fetch, payloads = _task_and_fetch(bundle, client, enc)
    runners = {"in process": InProcess(), "sandbox": Sandbox(Limits(threads=THREADS))}
    first = {}
    for label, ex in runners.items():
        t = time.perf_counter()
        ex.load(task, fetch)
        ex.evaluate(payloads[0])
        first[label] = time.perf_counter() - t
    per_job: dict[str, list[float]] = {label: [] for label in runners}
    cpu_job: dict[str, list[float]] = {label: [] for label in runners}
    for _ in range(ROUNDS):
        for label, ex in runners.items():  # interleaved, so drift in machine load hits both alike
            for p in payloads:
                t, c = time.perf_counter(), _cpu_s(ex)
                ex.load(task, fetch)   # a warm job still asks for its model and keys
                ex.evaluate(p)
                per_job[label].append(time.perf_counter() - t)
                cpu_job[label].append(_cpu_s(ex) - c)
    for ex in runners.values():
        ex.close()
    med = {label: statistics.median(v) for label, v in per_job.items()}
    cpu = {label: statistics.median(v) for label, v in cpu_job.items()}
    return {"name": name, "first": first, "median": med, "overhead": med["sandbox"] / med["in process"] - 1,
            "cpu": cpu, "cpu_overhead": cpu["sandbox"] / cpu["in process"] - 1, "payload": len(payloads[0])}


def main() -> None:
    os.environ["OMP_NUM_THREADS"] = str(THREADS)  # before Concrete's runtime loads, as the worker does
    import numpy as np
    from concrete.ml.sklearn import DecisionTreeClassifier
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    import he_compute

    X, y = load_breast_cancer(return_X_y=True)
    X_train, X_test, y_train, _ = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
    root = Path(tempfile.mkdtemp(prefix="hec-bench-sandbox-"))
    rows = []

    tree = DecisionTreeClassifier(max_depth=4, n_bits=6, random_state=0).fit(X_train, y_train)
    tb = he_compute.compile(tree, X_train, scheme="tfhe")
    tc = he_compute.Client.keygen(tb, root / "tfhe-keys")
    rows.append(_measure("TFHE decision tree, 1 sample per job", tb, tc, tc.encrypt(X_test[:TFHE_SAMPLES])))

    scaler = StandardScaler().fit(X_train)
    lr = LogisticRegression(max_iter=500).fit(scaler.transform(X_train), y_train)
    cb = he_compute.compile(lr, scaler.transform(X_train), scheme="ckks", packing="batch")
    cc = he_compute.Client.keygen(cb, root / "ckks-keys")
    batch = np.resize(scaler.transform(X_test), (4096, X.shape[1]))
    rows.append(_measure("CKKS logistic regression, 4096 samples per job", cb, cc, cc.encrypt(batch)))

    text = "\n".join([
        "# Sandbox cost per job (warm)", "",
        f"Load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())} ({os.cpu_count()} cores). "
        "Median seconds per job over interleaved rounds, model and keys already loaded on both sides, "
        f"{THREADS} thread per job on both sides (the worker's default); the sandbox adds the pipe round trip "
        "(payload in, result out) and nothing else per job. Wall seconds grow with whatever else shares the "
        "cores; CPU seconds (this process, plus the sandbox's child: user + system, every thread) do not, so "
        "they are the figure to read on a busy machine.", "",
        table(["workload", "payload", "wall: in process (s)", "wall: sandbox (s)", "wall overhead",
               "CPU: in process (s)", "CPU: sandbox (s)", "CPU overhead", "first job in process (s)",
               "first job sandbox (s)"],
              [[r["name"], f"{r['payload'] / 1e3:.0f} KB", f"{r['median']['in process']:.4f}",
               f"{r['median']['sandbox']:.4f}", f"{r['overhead']:+.1%}", f"{r['cpu']['in process']:.4f}",
               f"{r['cpu']['sandbox']:.4f}", f"{r['cpu_overhead']:+.1%}", f"{r['first']['in process']:.2f}",
               f"{r['first']['sandbox']:.2f}"] for r in rows]),
        "", "Goal: under 5% on the TFHE tree. The first job of a model pays the child's start-up (imports, the "
        "circuit check in its own process, compilation) once; later jobs of that model reuse the child.",
    ])
    write("sandbox", text)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3))
        names = [r["name"].split(",")[0] for r in rows]
        xs = np.arange(len(rows))
        ax.bar(xs - 0.2, [r["median"]["in process"] for r in rows], 0.4, label="in process")
        ax.bar(xs + 0.2, [r["median"]["sandbox"] for r in rows], 0.4, label="sandbox")
        ax.set_xticks(xs, names)
        ax.set_ylabel("seconds per job (warm)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(Path(__file__).parent / "results" / "sandbox.png", dpi=120)
    except ImportError:
        print("(matplotlib not installed: no plot)")


if __name__ == "__main__":
    main()
