"""Everyday use, measured: lasting workers, and the pre-flight estimate next to what evaluation really costs.

1. ``EncryptedModel(local_workers=2)`` on a Concrete ML random forest (wine): the first ``predict`` (workers
   start, import Concrete, compile the circuit, load the keys) against later ones on the same model (evaluation
   only), and against a new model per call, which is what every call cost before the workers lasted.
2. For each benchmarked model: ``hec plan``'s estimate (time per sample or per batch on one core, evaluation
   keys, bytes per sample, CKKS expected error) next to the measurement.  The expected error is the largest
   over the calibration data; it is measured on the samples evaluated (all of them in batch packing, 4 in
   single packing, so there it can only be lower).  This process runs with
   ``OMP_NUM_THREADS=1`` (set by ``python -m bench everyday`` below) so that both are for one core.

Run: ``python -m bench everyday``; writes bench/results/everyday.md.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before Concrete loads: measure one core, as the estimate is

import numpy as np  # noqa: E402

from .common import mb, table, timer, write  # noqa: E402

SAMPLES = 2


def _wine():
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split

    X, y = load_wine(return_X_y=True)
    return train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)


def _forest(X_tr, y_tr, trees: int = 10, depth: int = 4, bits: int = 5):
    from concrete.ml.sklearn import RandomForestClassifier

    return RandomForestClassifier(n_estimators=trees, max_depth=depth, n_bits=bits, random_state=0).fit(X_tr, y_tr)


def warm_workers(root: Path) -> str:
    """First call, warm calls, and a new model per call, with two local workers."""
    import he_compute

    X_tr, X_te, y_tr, _ = _wine()
    # A small forest, so that what a call pays besides evaluation (worker start, circuit compilation) shows.
    bundle = he_compute.compile(_forest(X_tr, y_tr, trees=5, depth=3, bits=4), X_tr, scheme="tfhe")
    he_compute.Client.keygen(bundle, root / "keys", register=False)
    queue = f"sqlite://{root}/hec/queue.db"
    rows = []
    with he_compute.EncryptedModel(bundle, keys=root / "keys", queue=queue, local_workers=2) as model:
        for call in ("first call", "second call", "third call"):
            with timer() as t:
                model.predict(X_te[:SAMPLES])
            rows.append([call + " (same model)", f"{t[0]:.1f} s"])
    with timer() as t:
        with he_compute.EncryptedModel(bundle, keys=root / "keys", queue=queue, local_workers=2) as fresh:
            fresh.predict(X_te[:SAMPLES])
    rows.append(["a new model per call (every call, before)", f"{t[0]:.1f} s"])
    return table([f"random forest (5 trees, depth 3, 4 bits), predict {SAMPLES} samples, 2 local workers",
                  "wall time"], rows)


def _measure(bundle, X, root: Path, name: str) -> list[object]:
    """Estimate next to measurement for one bundle: one-core evaluation in this process."""
    import he_compute
    from he_compute.client.estimate import estimate

    est = estimate(bundle)
    client = he_compute.Client.keygen(bundle, root / name, register=False)
    evaluator = he_compute.Evaluator(bundle.server_part())
    keys = evaluator.load_keys(he_compute.read_evaluation_keys(client.evaluation_keys_path))
    enc = client.encrypt(X)
    evaluator.evaluate(client.encrypt(X[:1]), keys)  # warm-up: first-run allocations
    with timer() as t:
        result = evaluator.evaluate(enc, keys)
    units = len(enc.sections)
    chunk_in, chunk_out = len(enc.sections["chunk/000000"]), len(result.sections["chunk/000000"])
    error = "-"
    if est.expected_error is not None:
        error = f"{est.expected_error:.3g}"
    return [name, est.unit, f"{est.seconds_per_unit:.3g} s", f"{t[0] / units:.3g} s",
            f"{mb(est.evaluation_key_bytes)} / {mb(client.evaluation_keys_path.stat().st_size)}",
            f"{mb(int(est.input_bytes_per_unit))} / {mb(chunk_in)}", f"{mb(int(est.output_bytes_per_unit))} / {mb(chunk_out)}",
            error, client.decrypt(result)]


def estimates(root: Path) -> str:
    """The estimate of each benchmarked model next to its measurement."""
    import torch
    from concrete.ml.sklearn import DecisionTreeClassifier, LogisticRegression
    from sklearn.linear_model import LogisticRegression as SkLogistic

    import he_compute

    from .bench_tfhe import _data, _mlp

    X_tr, X_te, y_tr, _ = _data()
    wine_tr, wine_te, wine_y, _ = _wine()
    net = _mlp(X_tr, y_tr)
    cases = [
        ("TFHE logistic regression", he_compute.compile(LogisticRegression(n_bits=8).fit(X_tr, y_tr), X_tr), X_te[:2]),
        ("TFHE decision tree (depth 4)",
         he_compute.compile(DecisionTreeClassifier(max_depth=4, n_bits=6, random_state=0).fit(X_tr, y_tr), X_tr),
         X_te[:2]),
        ("TFHE random forest (wine)", he_compute.compile(_forest(wine_tr, wine_y), wine_tr), wine_te[:2]),
        ("CKKS logistic regression", he_compute.compile(SkLogistic().fit(X_tr, y_tr), X_tr, scheme="ckks"), X_tr),
        ("CKKS 30-16-2 ReLU MLP, batch", he_compute.compile(net, X_tr, scheme="ckks", packing="batch"), X_tr),
        ("CKKS 30-16-2 ReLU MLP, single", he_compute.compile(net, X_tr, scheme="ckks", packing="single"), X_tr[:4]),
    ]
    rows = []
    for name, bundle, X in cases:
        row = _measure(bundle, X, root, name.replace(" ", "_").replace(",", ""))
        out = row.pop()
        if "MLP" in name:
            clear = net(torch.tensor(X, dtype=torch.float32)).detach().numpy()
            row[-1] = f"{row[-1]} / {np.abs(out - clear).max():.3g}"
        rows.append(row)
    return table(["model", "unit", "time per unit: estimated", "measured", "evaluation keys: est. / real",
                  "input per unit: est. / real", "output per unit: est. / real", "expected error / measured"], rows)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="hec-bench-everyday-") as tmp:
        root = Path(tmp)
        os.environ.setdefault("HEC_HOME", str(root / "home"))  # measure this machine afresh, keep ~/.hec clean
        warm = warm_workers(root)
        est = estimates(root)
    write("everyday", "# Everyday use\n\n## Workers that last as long as the EncryptedModel\n\n" + warm +
          "\n\n## Pre-flight estimate (hec plan / hec info) next to measurement, one core\n\n" + est)


if __name__ == "__main__":
    main()
