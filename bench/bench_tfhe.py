"""TFHE (Concrete ML) through he_compute: per-sample cost, key sizes and accuracy per model type.

Baseline, side by side: Concrete ML's own deployment API (``FHEModelServer.run``)
on the same ciphertexts and keys.  Also the sweep behind the torch/ONNX
quantization defaults (``n_bits``, ``rounding_threshold_bits``).

Run: ``python -m bench tfhe`` (or ``make bench``); writes bench/results/tfhe.md and tfhe_defaults.png.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .common import RESULTS, mb, standardized_cancer, table, timer, train_classifier, write

N_SAMPLES = int(os.environ.get("HEC_BENCH_SAMPLES", "3"))




def _mlp(X_tr, y_tr):
    """The issue's 30→16→2 ReLU MLP, trained briefly in torch."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(30, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    return train_classifier(net, X_tr, y_tr, 200, lr=0.01)


def _models(X_tr, y_tr):
    import torch
    from concrete.ml.sklearn import DecisionTreeClassifier, LogisticRegression, NeuralNetClassifier

    torch.manual_seed(0)
    nn = NeuralNetClassifier(module__n_layers=2, module__n_hidden_neurons_multiplier=1, module__n_w_bits=4,
                             module__n_a_bits=4, module__n_accum_bits=12, max_epochs=40, lr=0.01, verbose=0)
    return [
        ("LogisticRegression", LogisticRegression(n_bits=8).fit(X_tr, y_tr)),
        ("DecisionTree(depth 4)", DecisionTreeClassifier(max_depth=4, n_bits=6, random_state=0).fit(X_tr, y_tr)),
        ("NeuralNetClassifier (QAT 4-bit)", nn.fit(X_tr.astype(np.float32), y_tr)),
        ("torch MLP 30-16-2 ReLU (defaults)", _mlp(X_tr, y_tr)),
    ]


def _concrete_direct(bundle_dir: Path, enc_payloads: list[bytes], evaluation: bytes) -> float:
    """Seconds per sample for Concrete ML's FHEModelServer.run on the same ciphertexts."""
    from concrete.ml.deployment import FHEModelServer

    server = FHEModelServer(str(bundle_dir))
    with timer() as t:
        for payload in enc_payloads:
            server.run(payload, evaluation)
    return t[0] / len(enc_payloads)


def _one_model(name, model, X_tr, X_te, y_te, workdir: Path):
    import he_compute
    from concrete.ml.deployment import FHEModelDev
    from concrete.ml.torch.compile import compile_torch_model

    is_torch = not hasattr(model, "predict_proba")
    with timer() as t_compile:
        bundle = he_compute.compile(model, X_tr, scheme="tfhe")
    with timer() as t_keygen:
        client = he_compute.Client.keygen(bundle, workdir / "keys")
    X = X_te[:N_SAMPLES]
    with timer() as t_enc:
        enc = client.encrypt(X)
    evaluator = he_compute.Evaluator(bundle.server_part())
    evk = he_compute.read_evaluation_keys(client.evaluation_keys_path)
    keys = evaluator.load_keys(evk)
    with timer() as t_eval:
        res = evaluator.evaluate(enc, keys)
    with timer() as t_dec:
        out = client.decrypt(res)
    # Clear references: float model and Concrete's clear quantized model on the whole test set.
    if is_torch:
        import torch

        from he_compute.schemes.tfhe.compiler import DEFAULT_N_BITS, DEFAULT_ROUNDING_THRESHOLD_BITS

        qm = compile_torch_model(model, X_tr, n_bits=DEFAULT_N_BITS, rounding_threshold_bits=DEFAULT_ROUNDING_THRESHOLD_BITS)
        clear_q = qm.forward(X_te, fhe="disable")
        with torch.no_grad():
            float_pred = model(torch.tensor(X_te, dtype=torch.float32)).argmax(1).numpy()
        deploy_model = qm
    else:
        clear_q = model.predict_proba(X_te, fhe="disable")
        float_pred = None  # Concrete ML fits its trees/NNs on quantized inputs: no float twin to compare with
        deploy_model = model
    # Concrete ML baseline on the same ciphertexts and evaluation keys.
    deploy_dir = workdir / "concrete"
    if not is_torch:
        FHEModelDev(str(deploy_dir), deploy_model).save(via_mlir=True)
        direct = _concrete_direct(deploy_dir, list(enc.sections.values()), evk.sections["keys"])
    else:
        direct = float("nan")
    agree = float(np.mean(out.argmax(1) == clear_q[:N_SAMPLES].argmax(1)))
    max_err = float(np.max(np.abs(out - clear_q[:N_SAMPLES])))
    return [
        name,
        f"{t_compile[0]:.1f}",
        f"{t_keygen[0]:.1f}",
        f"{1000 * t_enc[0] / N_SAMPLES:.1f}",
        f"{t_eval[0] / N_SAMPLES:.2f}",
        "n/a" if np.isnan(direct) else f"{direct:.2f}",
        f"{1000 * t_dec[0] / N_SAMPLES:.1f}",
        mb(len(evk.sections["keys"])),
        "n/a" if float_pred is None else f"{np.mean(float_pred == y_te):.3f}",
        f"{np.mean(clear_q.argmax(1) == y_te):.3f}",
        f"{agree:.0%} (max err {max_err:.1e})",
    ]


def _defaults_sweep(X_tr, X_te, y_te, net) -> tuple[str, list]:
    """Accuracy (simulated, whole test set) and FHE latency (1 sample) per quantization choice."""
    from concrete.ml.torch.compile import compile_torch_model

    rows, points = [], []
    for n_bits, rounding in [(6, None), (6, 6), (5, 5), (4, 4)]:
        qm = compile_torch_model(net, X_tr, n_bits=n_bits, rounding_threshold_bits=rounding)
        acc = float(np.mean(qm.forward(X_te, fhe="simulate").argmax(1) == y_te))
        qm.fhe_circuit.keygen()
        with timer() as t:
            qm.forward(X_te[:1], fhe="execute")
        bits = qm.fhe_circuit.graph.maximum_integer_bit_width()
        rows.append([n_bits, rounding or "off", bits, f"{acc:.3f}", f"{t[0]:.1f}"])
        points.append((f"n_bits={n_bits}, round={rounding or 'off'}", t[0], acc))
    return table(["n_bits", "rounding bits", "max PBS bit width", "accuracy (simulated)", "FHE s/sample"], rows), points


def _plot(points, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, secs, acc in points:
        ax.scatter(secs, acc, s=60)
        ax.annotate(label, (secs, acc), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("FHE latency per sample (s, 2 cores)")
    ax.set_ylabel("test accuracy (simulated FHE)")
    ax.set_title("torch MLP 30-16-2: quantization choice vs cost")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    X_tr, X_te, y_tr, y_te = standardized_cancer()
    rows = []
    models = _models(X_tr, y_tr)
    for name, model in models:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(_one_model(name, model, X_tr, X_te, y_te, Path(tmp)))
    headers = ["model", "compile s", "keygen s", "encrypt ms/sample", "eval s/sample (he_compute)",
               "eval s/sample (Concrete FHEModelServer.run, serialized keys as in its docs)", "decrypt ms/sample", "eval keys",
               "acc float (torch)", "acc clear quantized", f"encrypted = clear ({N_SAMPLES} samples)"]
    sweep, points = _defaults_sweep(X_tr, X_te, y_te, models[-1][1])
    RESULTS.mkdir(parents=True, exist_ok=True)
    _plot(points, RESULTS / "tfhe_defaults.png")
    write("tfhe", "\n\n".join([
        "### TFHE per model (breast cancer, 2 cores)",
        table(headers, rows),
        "### torch/ONNX quantization defaults (30-16-2 ReLU MLP)",
        sweep,
        "![defaults](tfhe_defaults.png)",
    ]))


if __name__ == "__main__":
    main()
