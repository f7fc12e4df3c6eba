"""Benchmark the CKKS backend against Concrete ML (TFHE) on the issue's tasks.

Reports, per model: CKKS batch throughput (samples/s, end to end: encrypt +
evaluate + decrypt, one full ciphertext of samples), CKKS single-packing
latency for one sample, Concrete ML's per-sample latency through he_compute's
TFHE path (a few samples), and key / ciphertext sizes.  Writes a markdown
table to stdout and ``bench/results/ckks.md`` and a plot ``bench/results/ckks.png``.

Run: python bench/bench_ckks.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

import he_compute  # noqa: E402
from bench.common import standardized_cancer  # noqa: E402
from bench.common import train_classifier as train  # noqa: E402

# Concrete ML runs one sample per circuit: a few are enough for a per-sample latency (the MLP takes ~30 s each).
N_TFHE_SAMPLES = {0: 3, 1: 1}


def _data():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    cancer = standardized_cancer()
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).reshape(-1, 1, 8, 8)
    return cancer, tuple(train_test_split(X, y, test_size=0.2, random_state=0, stratify=y))


def _models(cancer, digits):
    import torch
    from sklearn.linear_model import LogisticRegression

    class Square(torch.nn.Module):
        def forward(self, x):
            return x * x

    X_tr, _, y_tr, _ = cancer
    torch.manual_seed(0)
    mlp_sq = train(torch.nn.Sequential(torch.nn.Linear(30, 16), Square(), torch.nn.Linear(16, 2)), X_tr, y_tr, 40)
    torch.manual_seed(0)
    mlp_relu = train(torch.nn.Sequential(torch.nn.Linear(30, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)), X_tr, y_tr, 40)
    torch.manual_seed(0)
    conv = train(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, stride=2, padding=1), torch.nn.BatchNorm2d(4), Square(),
                                     torch.nn.Flatten(), torch.nn.Linear(64, 10)), digits[0], digits[2], 60, 2e-2)
    return [
        ("logreg (cancer)", LogisticRegression(max_iter=1000).fit(X_tr, y_tr), cancer),
        ("mlp 30-16-2 square (cancer)", mlp_sq, cancer),
        ("mlp 30-16-2 relu (cancer)", mlp_relu, cancer),
        ("conv 8x8 square (digits)", conv, digits),
    ]


def _predict(model, X):
    if hasattr(model, "predict_proba"):
        return model.predict_proba(X)
    import torch

    with torch.no_grad():
        return model(torch.tensor(X, dtype=torch.float32)).numpy()


def _run(bundle, X, keys_dir):
    """Encrypt, evaluate, decrypt; return (outputs, seconds, evaluation-key bytes, ciphertext bytes)."""
    t0 = time.perf_counter()
    client = he_compute.Client.keygen(bundle, keys_dir)
    keygen = time.perf_counter() - t0
    evaluator = he_compute.Evaluator(bundle.server_part())
    keys = evaluator.load_keys(he_compute.read_evaluation_keys(client.evaluation_keys_path))
    t0 = time.perf_counter()
    enc = client.encrypt(X)
    res = evaluator.evaluate(enc, keys)
    out = client.decrypt(res)
    elapsed = time.perf_counter() - t0
    return out, elapsed, keygen, client.evaluation_keys_path.stat().st_size, sum(len(v) for v in enc.sections.values())


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def _tfhe_latency(name, model, data, tmp, n):
    """Concrete ML's per-sample latency through he_compute's TFHE path (None if it cannot compile)."""
    X_tr, X_te = data[0], data[1]
    try:
        bundle = he_compute.compile(model, X_tr, scheme="tfhe")
        client = he_compute.Client.keygen(bundle, tmp / f"tfhe-{abs(hash(name))}")
        evaluator = he_compute.Evaluator(bundle.server_part())
        keys = evaluator.load_keys(he_compute.read_evaluation_keys(client.evaluation_keys_path))
        t0 = time.perf_counter()
        client.decrypt(evaluator.evaluate(client.encrypt(X_te[:n]), keys))
        return (time.perf_counter() - t0) / n
    except Exception as exc:  # a benchmark row should not sink the whole report
        print(f"  tfhe {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


def main() -> None:
    """Run the benchmark and write the table and plot."""
    cancer, digits = _data()
    rows = []
    with tempfile.TemporaryDirectory(prefix="hec-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for i, (name, model, data) in enumerate(_models(cancer, digits)):
            X_tr, X_te, _, _ = data
            print(f"- {name}", file=sys.stderr)
            bundle = he_compute.compile(model, X_tr, scheme="ckks", packing="batch")
            ck = bundle.manifest["ckks"]
            reps = int(np.ceil(ck["slots"] / len(X_te)))
            X_full = np.concatenate([X_te] * reps)[: ck["slots"]]  # one full ciphertext of samples
            out, secs, _, evk, ctb = _run(bundle, X_full, tmp / f"b{i}")
            clear = _predict(model, X_te)
            agree = float(np.mean(out[: len(X_te)].argmax(1) == clear.argmax(1)))
            err = float(np.max(np.abs(out[: len(X_te)] - clear)))
            single = he_compute.compile(model, X_tr, scheme="ckks", packing="single")
            _, lat, _, evk_s, ctb_s = _run(single, X_te[:1], tmp / f"s{i}")
            tfhe = _tfhe_latency(name, model, data, tmp, N_TFHE_SAMPLES[i]) if i in N_TFHE_SAMPLES else None
            rows.append({
                "model": name, "N": ck["poly_modulus_degree"], "depth": ck["multiplicative_depth"],
                "agree": agree, "err": err, "throughput": len(X_full) / secs, "batch_n": len(X_full),
                "latency": lat, "tfhe": tfhe, "evk_batch": evk, "evk_single": evk_s,
                "ct_batch": ctb / len(X_full), "ct_single": ctb_s,
            })
    lines = [
        "| model | N | depth | agreement | max abs err | batch throughput (samples/s) | single latency (s) "
        "| Concrete ML latency (s/sample) | eval keys batch / single | ciphertext per sample batch / single |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tfhe = f"{r['tfhe']:.2f}" if r["tfhe"] is not None else "n/a"
        lines.append(
            f"| {r['model']} | {r['N']} | {r['depth']} | {r['agree']:.1%} | {r['err']:.2g} | "
            f"{r['throughput']:.0f} ({r['batch_n']} samples) | {r['latency']:.2f} | {tfhe} | "
            f"{_mib(r['evk_batch'])} / {_mib(r['evk_single'])} | {_mib(r['ct_batch'])} / {_mib(r['ct_single'])} |"
        )
    table = "\n".join(lines)
    print(table)
    out_dir = ROOT / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "ckks.md").write_text("# CKKS benchmark (python bench/bench_ckks.py)\n\n" + table + "\n")
    _plot(rows, out_dir / "ckks.png")


def _plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["model"] for r in rows]
    x = np.arange(len(rows))
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    a.bar(x, [1.0 / r["throughput"] for r in rows], 0.25, label="CKKS batch (amortized)")
    a.bar(x + 0.25, [r["latency"] for r in rows], 0.25, label="CKKS single (1 sample)")
    a.bar(x + 0.5, [r["tfhe"] or 0 for r in rows], 0.25, label="Concrete ML TFHE")
    a.set_yscale("log")
    a.set_ylabel("seconds per sample")
    a.set_xticks(x + 0.25, names, rotation=20, ha="right", fontsize=8)
    a.legend(fontsize=8)
    b.bar(x, [r["throughput"] for r in rows])
    b.set_ylabel("CKKS batch throughput (samples/s)")
    b.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
