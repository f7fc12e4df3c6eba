"""The compile knobs' trade-offs, measured: what ``hec compile --help`` and the README quote.

* TFHE ``p_error`` (probability that one programmable bootstrap is wrong) on a depth-4 decision tree
  (breast cancer): Concrete's circuit complexity, encrypted evaluation time per sample, and accuracy over the
  whole test set in Concrete's simulation (which draws bootstrap errors at that rate).
* CKKS ``packing`` and ``activation_degree`` on a 30-16-2 ReLU MLP: evaluation time per request of 1 and of
  32 samples, and the largest output error against the clear model.

Concrete's complexity is the machine-independent column: wall times on a shared machine are noisy.

The n_bits / rounding sweep for torch/ONNX models is in ``bench_tfhe.py``.

Run: ``python -m bench knobs``; writes bench/results/knobs.md.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .bench_tfhe import _data, _mlp
from .common import table, timer, write

P_ERRORS = (None, 1e-6, 1e-3, 1e-2, 5e-2)
MANY = 32
"""Samples of the CKKS 'many' request (single packing evaluates them one by one)."""


def _tfhe_p_error(X_tr, X_te, y_tr, y_te, root: Path) -> str:
    import he_compute
    from concrete.ml.sklearn import DecisionTreeClassifier

    rows, base = [], 1.0
    for p in P_ERRORS:
        model = DecisionTreeClassifier(max_depth=4, n_bits=6, random_state=0).fit(X_tr, y_tr)
        bundle = he_compute.compile(model, X_tr, scheme="tfhe", **({"p_error": p} if p is not None else {}))
        accuracy = float((model.predict(X_te, fhe="simulate") == y_te).mean())
        client = he_compute.Client.keygen(bundle, root / f"keys-{p}", register=False)
        evaluator = he_compute.Evaluator(bundle.server_part())
        keys = evaluator.load_keys(he_compute.read_evaluation_keys(client.evaluation_keys_path))
        enc = client.encrypt(X_te[:2])
        evaluator.evaluate(enc, keys)  # warm-up
        with timer() as t:
            evaluator.evaluate(enc, keys)
        stats = bundle.manifest.get("tfhe", {})
        complexity = bundle.manifest["circuit"]["complexity"]
        base = base if p is not None else complexity
        rows.append([f"{p:g}" if p is not None else "default (2^-40)", f"{stats.get('p_error', 0):.2g}",
                     f"{complexity:.3g} ({complexity / base:.2f}x)", f"{t[0] / 2:.2f} s", f"{accuracy:.3f}"])
    return table(["--p-error", "p_error used", "Concrete complexity (vs default)", "evaluate / sample",
                  "accuracy (simulated, 114 samples)"], rows)


def _ckks(X_tr, X_te, y_tr, root: Path) -> str:
    import torch

    import he_compute

    net = _mlp(X_tr, y_tr)  # the 30-16-2 ReLU MLP of bench_tfhe
    clear = net(torch.tensor(X_te[:MANY], dtype=torch.float32)).detach().numpy()
    rows = []
    for packing in ("batch", "single"):
        for degree in (2, 4, 8):
            bundle = he_compute.compile(net, X_tr, scheme="ckks", packing=packing, activation_degree=degree)
            client = he_compute.Client.keygen(bundle, root / f"ckks-{packing}-{degree}", register=False)
            evaluator = he_compute.Evaluator(bundle.server_part())
            keys = evaluator.load_keys(he_compute.read_evaluation_keys(client.evaluation_keys_path))
            one, many = client.encrypt(X_te[:1]), client.encrypt(X_te[:MANY])
            with timer() as t1:
                evaluator.evaluate(one, keys)
            with timer() as tn:
                out = client.decrypt(evaluator.evaluate(many, keys))
            err = float(np.max(np.abs(out - clear)))
            rows.append([packing, degree, f"{t1[0]:.2f} s", f"{tn[0]:.2f} s", f"{err:.3g}"])
    return table(["--packing", "--activation-degree", "evaluate 1 sample", f"evaluate {MANY} samples",
                  "max |logit error|"], rows)


def main() -> None:
    X_tr, X_te, y_tr, y_te = _data()
    with tempfile.TemporaryDirectory(prefix="hec-bench-knobs-") as tmp:
        root = Path(tmp)
        tfhe = _tfhe_p_error(X_tr, X_te, y_tr, y_te, root)
        ckks = _ckks(X_tr, X_te, y_tr, root)
    write("knobs", "# Compile knobs, measured\n\n## TFHE --p-error (decision tree, depth 4, 6 bits)\n\n"
          f"{tfhe}\n\n## CKKS --packing and --activation-degree (30-16-2 ReLU MLP)\n\n{ckks}")


if __name__ == "__main__":
    main()
