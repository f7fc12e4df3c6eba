"""The cost of verification: throughput with replicas 1, 2, 3 and with canaries at 5%.

Real sklearn breast-cancer data, Concrete ML LogisticRegression (TFHE), the
embedded SQLite queue and three honest in-process workers (threads running the
real :class:`he_compute.worker.loop.Worker`, each with its sandbox), each under its own
operator on the allow-list; one sample per job.  Every run uses this round's
mechanisms: votes per operator, answers compared by meaning when digests differ,
2% decoy re-runs with replicas or canaries, canaries uploaded in one shuffled
batch.  The relative column divides by the plain run measured in the same
process; the last round's ratios (byte comparison, no decoys) are quoted beside
them.  Writes ``bench/results/verify.md`` and ``verify.png``.

Run: ``python -m bench verify`` (a few minutes on 2 cores).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

N_SAMPLES = 120
ROUNDS = 2
LOAD = os.getloadavg()
CONFIGS = [("replicas 1 (plain run)", {}), ("replicas 1 + receipts + allow-list", {"allow": True}),
           ("replicas 2", {"replicas": 2, "allow": True}), ("replicas 3", {"replicas": 3, "allow": True}),
           ("canaries 5%", {"canaries": 0.05})]
LAST_ROUND = {"replicas 1 (plain run)": "1.00x", "replicas 2": "0.81x", "canaries 5%": "no measurable cost"}
"""Throughput relative to the plain run in the previous round (byte comparison, no decoys, no sandbox), as its
README recorded it; '-' where it recorded nothing."""


def main() -> None:
    from concrete.ml.sklearn import LogisticRegression
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    import he_compute
    from he_compute.client import run as runner
    from he_compute.client.run import KnownAnswers
    from he_compute.transport import blobs, queue
    from he_compute.worker.loop import Worker

    X, y = load_breast_cancer(return_X_y=True)
    X_train, X_test, y_train, _ = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
    model = LogisticRegression(n_bits=8).fit(X_train, y_train)
    root = Path(tempfile.mkdtemp(prefix="hec-bench-verify-"))
    bundle = he_compute.compile(model, X_train, scheme="tfhe")
    client = he_compute.Client.keygen(bundle, root / "keys")
    evk = he_compute.read_evaluation_keys(client.evaluation_keys_path)
    Xq = X_test[:N_SAMPLES]
    n = len(Xq)  # the test split may hold fewer than N_SAMPLES
    clear = model.predict_proba(Xq, fhe="disable")
    known = KnownAnswers(client, X_train[:100], model.predict_proba(X_train[:100], fhe="disable"))
    rows = []
    q_url, b_url = f"sqlite://{root}/queue.db", f"file://{root}/blobs"
    workers = [Worker(queue.connect(q_url), blobs.connect(b_url), name=f"w{i}", log=lambda m: None)
               for i in range(3)]
    allow = _allow(workers)
    threads = [threading.Thread(target=w.run, kwargs={"poll_s": 0.02}, daemon=True) for w in workers]
    for t in threads:
        t.start()
    try:
        # Warm up: every worker's sandbox compiles the circuit and loads the keys once, before any timing.
        for _ in range(5):
            if all(w.stats["jobs"] for w in workers):
                break
            runner.run(client.encrypt(Xq[:6]), bundle.server_part(), evk, queue=q_url, blobs=b_url,
                       options=runner.RunOptions(timeout=600, samples_per_job=1, show_progress=False),
                       policy=runner.Policy(allowed=allow))
        for label, opts in CONFIGS * ROUNDS:
            enc = client.encrypt(Xq)
            kwargs = dict(opts)
            if kwargs.pop("allow", False):  # receipts checked against an allow-list naming each worker's operator
                kwargs["allowed"] = allow
            if kwargs.get("canaries"):
                kwargs["known_answers"] = known
            start = time.perf_counter()
            report = runner.run(enc, bundle.server_part(), evk, queue=q_url, blobs=b_url,
                                options=runner.RunOptions(timeout=600, samples_per_job=1, resume=False,
                                                          show_progress=False),
                                policy=runner.Policy(**kwargs))
            elapsed = time.perf_counter() - start
            assert np.allclose(client.decrypt(report.result), clear, atol=1e-9)
            v = report.verification
            rows.append((label, elapsed, n / elapsed, v.get("submitted", n), v.get("decoys_sent", 0)))
    finally:
        for w in workers:
            w.stop()
        for t in threads:
            t.join(30)
    best = {}
    for row in rows:  # the faster of the rounds: other jobs share these two cores
        if row[0] not in best or row[1] < best[row[0]][1]:
            best[row[0]] = row
    rows = [best[label] for label, _ in CONFIGS]
    base = rows[0][2]
    lines = ["# Verification cost", "",
             f"{n} breast-cancer samples (the test split), Concrete ML LogisticRegression (TFHE), embedded queue, 3 "
             f"in-process workers, one sample per job; results checked equal to the clear quantized model; the faster "
             f"of {ROUNDS} rounds of every configuration, rounds interleaved; load average at start "
             f"{LOAD[0]:.2f} {LOAD[1]:.2f} {LOAD[2]:.2f} (2 cores).", "",
             "| configuration | seconds | samples/s | relative throughput | last round | jobs run | decoys |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {label} | {sec:.2f} | {tp:.1f} | {tp / base:.2f}x | {LAST_ROUND.get(label, '-')} | {jobs} | {dec} |"
              for label, sec, tp, jobs, dec in rows]
    lines += ["", "Cost of a configuration = 1 / relative throughput. Three workers share two cores, so a second "
              "replica costs less than twice the time when the plain run leaves a core idle."]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "verify.md").write_text(text)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.barh([r[0] for r in rows][::-1], [r[2] for r in rows][::-1])
        ax.set_xlabel("samples / second")
        ax.set_title("Throughput with verification")
        fig.tight_layout()
        fig.savefig(out / "verify.png", dpi=120)
    except ImportError:
        print("(matplotlib not installed: no plot)")


def _allow(workers):
    from he_compute.client.run import AllowList

    allow = AllowList()
    for i, w in enumerate(workers):
        allow.add(w.identity.public_raw, operator=f"op{i}")
    return allow


if __name__ == "__main__":
    main()
