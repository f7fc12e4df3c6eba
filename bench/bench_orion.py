"""he_compute beside Orion 1.0.2 on the same weights: the breast-cancer ReLU MLP 30-16-2 and a 3-conv ReLU CNN on
scikit-learn's 8x8 digits; max output error against the float model, argmax agreement, seconds per sample.

Orion (``orion-fhe``, PyTorch to CKKS on Lattigo, composite minimax ReLU, bootstraps placed for you) wants
another scipy and torchvision, so it runs in ``.venv-orion`` (``make orion-env``) as a child process
(``bench/_orion_child.py``) on weights this process trained and saved.  Orion evaluates one sample per
ciphertext (its examples' way); he_compute's CKKS engine packs one feature of 16,384 samples per ciphertext, so
the figures are per sample of a full batch there.  Both at 128-bit security (Orion: the HE standard's bound on
log QP for its ring, checked below; he_compute: its compiler's own check), one core.

Writes ``bench/results/orion.md``.  Run: ``make orion-env && python -m bench orion`` (the CNN too:
``python bench/bench_orion.py --cnn``, N=65536 with bootstrapping, far more memory).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from bench.bench_ckks_engine import clear, relu_mlp  # noqa: E402
from bench.common import standardized_cancer as cancer  # noqa: E402
from bench.common import table, train_classifier, write  # noqa: E402

ORION_PYTHON = ROOT.parent / ".venv-orion" / "bin" / "python"
HE_STANDARD_128 = {13: 218, 14: 438, 15: 881, 16: 1772}
"""Largest log2(QP) for 128-bit security with a uniform ternary secret (HomomorphicEncryption.org standard)."""


def orion_config(logn: int, levels: int, degrees_note: str) -> dict:
    """Orion's configuration: one 51-bit base prime, ``levels`` 40-bit primes, two 61-bit special primes, a dense
    secret (Hamming weight 2N/3, the uniform ternary secret the security table assumes); checked against it."""
    logq, logp = [51] + [40] * levels, [61, 61]
    assert sum(logq) + sum(logp) <= HE_STANDARD_128[logn], f"{degrees_note}: log QP over the 128-bit bound"
    return {"ckks_params": {"LogN": logn, "LogQ": logq, "LogP": logp, "LogScale": 40, "H": (2 << logn) // 3,
                            "RingType": "standard"},
            "orion": {"margin": 2, "embedding_method": "hybrid", "backend": "lattigo", "fuse_modules": True,
                      "debug": False, "io_mode": "none"}}


def run_orion(name: str, layers: list[dict], params: list, X, fit_X, ref, config: dict, outputs: int,
              tmp: Path) -> dict:
    """Orion on these weights in its own environment; its result, or why it did not run, in one line."""
    arrays = {"X": X.astype(np.float32), "fit_X": fit_X.astype(np.float32), "clear": ref}
    for k, (w, b) in enumerate(params):
        arrays[f"w{k}"], arrays[f"b{k}"] = w, b
    np.savez(tmp / f"{name}.npz", **arrays)
    (tmp / f"{name}.json").write_text(json.dumps({"layers": layers, "config": config, "outputs": outputs}))
    out = tmp / f"{name}-result.json"
    t = time.perf_counter()
    proc = subprocess.run([str(ORION_PYTHON), str(ROOT / "_orion_child.py"), str(tmp / f"{name}.npz"),
                           str(tmp / f"{name}.json"), str(out)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "GOMAXPROCS": "1"}, timeout=5400)
    if proc.returncode or not out.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {proc.returncode}: {tail[0][:200]}", "wall_s": time.perf_counter() - t}
    return {**json.loads(out.read_text()), "wall_s": time.perf_counter() - t}


def torch_params(net) -> list:
    """(weight, bias) of each Linear / Conv2d, in order."""
    import torch

    return [(m.weight.detach().numpy(), m.bias.detach().numpy()) for m in net.modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]


def he_compute_mlp(net, X_tr, X, ref, tmp: Path) -> dict:
    """he_compute's composite-ReLU point at max_error 0.03 on one full chunk (the test split tiled)."""
    from bench.bench_ckks_tradeoff import point

    p = point(net, X_tr, X, ref, 0.03, tmp, runs=1)
    return {"max_error": p["err"], "agreement": p["agree"], "seconds_per_sample": 1 / p["rate"],
            "note": f"N={p['N']}, depth {p['depth']}, one chain (no bootstrap), {p['degree']}"}


def digits_cnn():
    """A 3-conv ReLU CNN on the 8x8 digits (scaled to [0, 1]), trained here, seeded."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).reshape(-1, 1, 8, 8)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(32, 10))
    net = train_classifier(net, X_tr, y_tr, 150)
    layers = [{"kind": "conv", "in": 1, "out": 4, "kernel": 3, "stride": 1, "padding": 1},
              {"kind": "relu", "degrees": RELU_DEGREES}, {"kind": "conv", "in": 4, "out": 8, "kernel": 3,
                                                          "stride": 2, "padding": 1},
              {"kind": "relu", "degrees": RELU_DEGREES}, {"kind": "conv", "in": 8, "out": 8, "kernel": 3,
                                                          "stride": 2, "padding": 1},
              {"kind": "relu", "degrees": RELU_DEGREES}, {"kind": "flatten"},
              {"kind": "linear", "in": 32, "out": 10}]
    return net, layers, X_tr, X_te, y_te


RELU_DEGREES = [15, 15, 27]
"""Orion's default composite sign polynomial for ReLU (depth 14 with the final products)."""
MLP_SAMPLES = 10    # Orion: about 24 s per sample of this MLP at N=32768 on a busy 2-core machine (9.4 GB peak)
CNN_SAMPLES = 5


def he_compute_cnn(net, X_tr, X_te, tmp: Path) -> dict:
    """he_compute's CKKS engine on the CNN at its default error target: the whole test split in one chunk (a chunk
    costs the same whether it holds 360 samples or all its slots, so seconds per sample are per full chunk)."""
    from bench.bench_ckks_tradeoff import point

    p = point(net, X_tr, X_te, clear(net, X_te), None, tmp, runs=1)
    return {"max_error": p["err"], "agreement": p["agree"], "samples": len(X_te), "seconds_per_sample": 1 / p["rate"],
            "note": f"N={p['N']}, depth {p['depth']}, one chain (no bootstrap), ReLU polynomials of degree "
                    f"{p['degree']}, predicted bound {p['predicted']:.3g}"}


def main() -> None:
    if not ORION_PYTHON.exists():
        raise SystemExit("Error: Orion's environment is missing: run `make orion-env` first")
    load = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="hec-orion-") as d:
        tmp = Path(d)
        X_tr, X_te, y_tr, _ = cancer()
        net = relu_mlp(X_tr, y_tr)
        ref_te = clear(net, X_te)
        mlp_layers = [{"kind": "linear", "in": 30, "out": 16}, {"kind": "relu", "degrees": RELU_DEGREES},
                      {"kind": "linear", "in": 16, "out": 2}]
        o = run_orion("mlp", mlp_layers, torch_params(net), X_te[:MLP_SAMPLES], X_tr, ref_te[:MLP_SAMPLES],
                      orion_config(15, 17, "mlp"), 2, tmp)
        rows.append(("ReLU MLP 30-16-2 (breast cancer)", "Orion 1.0.2", o, "N=32768, 17 levels, no bootstrap"))
        X_big = np.resize(X_te, (16384, 30))
        ours = he_compute_mlp(net, X_tr, X_big, clear(net, X_big), tmp)
        rows.append(("ReLU MLP 30-16-2 (breast cancer)", "he_compute (SEAL engine)", ours, ours["note"]))

        cnn, cnn_layers, Xc_tr, Xc_te, _ = digits_cnn()
        ours = he_compute_cnn(cnn, Xc_tr[:512], Xc_te, tmp)
        rows.append(("3-conv ReLU CNN (digits 8x8)", "he_compute (SEAL engine)", ours, ours["note"]))
        if "--cnn" not in sys.argv:  # N=65536 with bootstraps: more memory than a shared 24 GB machine spares
            rows.append(("3-conv ReLU CNN (digits 8x8)", "Orion 1.0.2", {"error": "not run (pass --cnn)"}, ""))
            return _report(load, rows)
        ref_c = clear(cnn, Xc_te)
        o = run_orion("cnn", cnn_layers, torch_params(cnn), Xc_te[:CNN_SAMPLES], Xc_tr[:512], ref_c[:CNN_SAMPLES],
                      orion_config(16, 38, "cnn"), 10, tmp)
        rows.append(("3-conv ReLU CNN (digits 8x8)", "Orion 1.0.2", o, "N=65536, 38 levels"))
    _report(load, rows)


def _report(load, rows) -> None:
    def cells(r):
        model, who, res, note = r
        if "error" in res:
            return [model, who, "-", "-", "-", res["error"]]
        extra = f"; compile {res['compile_s']:.0f} s, peak {res['peak_rss_mb']:,.0f} MB" if "compile_s" in res else ""
        n = f" ({res['samples']} samples)" if "samples" in res else ""
        return [model, who, f"{res['max_error']:.3g}", f"{res['agreement']:.2%}{n}",
                f"{res['seconds_per_sample']:.4g}", note + extra]

    text = ["# he_compute beside Orion 1.0.2, same weights (python -m bench orion)", "",
            f"Load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} cores); one thread "
            "each. Orion: one sample per ciphertext, encode + encrypt + evaluate + decrypt, median over the "
            "samples; he_compute: evaluation of one chunk (MLP: 16,384 samples, the test split tiled; CNN: the "
            "360-sample test split in a chunk of 16,384 slots, which costs the same full or not) divided by its "
            "slots, one run. Max error and agreement against the float model, on every sample evaluated.", "",
            table(["model", "system", "max error", "argmax agreement", "seconds per sample", "parameters"],
                  [cells(r) for r in rows])]
    write("orion", "\n".join(text))


if __name__ == "__main__":
    main()
