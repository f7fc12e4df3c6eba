"""A frozen copy of the CKKS engine before issue 13, for side-by-side benchmarks only.

The evaluation loop (``_run_batch`` / ``poly_eval``), the least-squares
activation fit and the parameter choice are copied from he_compute at commit
84706ea (``schemes/ckks/server.py``, ``approx.py``, ``params.py``), trimmed to a
two-layer MLP or a linear model.  It runs on TenSEAL's high-level CKKSVector,
one scalar product and one rescale at a time, as the old worker did.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

MAX_COEFF_BITS_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}


def old_fit(samples: np.ndarray, degrees=(2, 4, 8), margin=0.2, tolerance=0.01) -> list[float]:
    """The old ReLU fit: least squares over the global range of all neurons, the cheapest degree within 1%."""
    values = samples.reshape(-1)
    lo, hi = float(values.min()), float(values.max())
    span = max(hi - lo, 1e-6)
    lo, hi = lo - margin * span, hi + margin * span
    grid = np.linspace(lo, hi, 2001)
    data = values if values.size <= 20000 else np.random.default_rng(0).choice(values, 20000, replace=False)
    xs = np.concatenate([data, grid])
    w = np.concatenate([np.full(data.size, 1.0 / data.size), np.full(grid.size, 1.0 / grid.size)])
    ys = np.maximum(xs, 0.0)
    y_span = max(float(ys.max() - ys.min()), 1e-6)
    coeffs: np.ndarray = np.zeros(1)
    for deg in degrees:
        r = max(abs(lo), abs(hi))
        coeffs = np.polynomial.polynomial.polyfit(xs / r, ys, deg, w=np.sqrt(w)) / r ** np.arange(deg + 1)
        err = float(np.max(np.abs(np.polynomial.polynomial.polyval(data, coeffs) - np.maximum(data, 0.0))))
        if err <= tolerance * y_span:
            break
    return [float(c) for c in coeffs]


def old_params(depth: int) -> dict[str, Any]:
    """The old parameter choice: 20 integer bits, scale >= 30 bits, N from 4096 up."""
    for n in (4096, 8192, 16384, 32768):
        scale = min(40, (MAX_COEFF_BITS_128[n] - 40) // (depth + 2))
        if scale >= 30 or n == 32768:
            outer = min(60, scale + 20)
            return {"n": n, "chain": [outer] + [scale] * depth + [outer], "scale": scale}
    raise AssertionError


def poly_eval(x: Any, coeffs: list[float]) -> Any:
    """Old: power basis, product tree, one rescale per scalar product."""
    degree = len(coeffs) - 1
    powers: dict[int, Any] = {1: x}
    for k in range(2, degree + 1):
        high = 1 << (k.bit_length() - 1)
        powers[k] = powers[k // 2].square() if high == k else powers[high] * powers[k - high]
    acc = None
    for k in range(1, degree + 1):
        if coeffs[k] != 0.0:
            term = powers[k] * float(coeffs[k])
            acc = term if acc is None else acc + term
    acc = acc if acc is not None else x * 0.0
    return acc + float(coeffs[0])


def run_batch(steps: list[tuple[str, Any]], x: list[Any]) -> list[Any]:
    """Old ``_run_batch``: one ciphertext times one scalar at a time, each product rescaled on its own."""
    for kind, arg in steps:
        if kind == "sum":
            rows, bias = arg
            y = []
            for (idx, ws), b in zip(rows, bias):
                acc = None
                for j, w in zip(idx, ws):
                    term = x[j] * w
                    acc = term if acc is None else acc.add_(term)
                y.append((acc if acc is not None else x[0] * 0.0) + b)
            x = y
        elif kind == "square":
            x = [v.square() for v in x]
        elif kind == "poly":
            x = [poly_eval(v, arg) for v in x]
    return x


def steps_for(layers: list[tuple]) -> tuple[list[tuple[str, Any]], int]:
    """Old steps and depth from ``[("linear", W, b), ("relu", coeffs), ("square",)]``."""
    steps, depth = [], 0
    for layer in layers:
        if layer[0] == "linear":
            w, b = layer[1], layer[2]
            rows = [(np.flatnonzero(r).tolist(), r[r != 0].tolist()) for r in w]
            steps.append(("sum", (rows, b.tolist())))
            depth += 1
        elif layer[0] == "relu":
            steps.append(("poly", layer[1]))
            depth += 1 + math.ceil(math.log2(len(layer[1]) - 1))
        else:
            steps.append(("square", None))
            depth += 1
    return steps, depth


def run(layers: list[tuple], X: np.ndarray) -> tuple[np.ndarray, float, dict[str, Any]]:
    """Encrypt ``X`` (one chunk, features across ciphertexts), evaluate the old way, decrypt: (outputs, eval s, params)."""
    import tenseal as ts

    steps, depth = steps_for(layers)
    p = old_params(depth)
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, p["n"], coeff_mod_bit_sizes=p["chain"])
    ctx.global_scale = 2.0 ** p["scale"]
    ctx.generate_relin_keys()
    public = ts.context_from(ctx.serialize(save_secret_key=False))
    blobs = [ts.ckks_vector(ctx, X[:, j].tolist()).serialize() for j in range(X.shape[1])]
    t0 = time.perf_counter()  # what the old worker did per chunk: deserialize, evaluate, serialize
    out = [v.serialize() for v in run_batch(steps, [ts.ckks_vector_from(public, b) for b in blobs])]
    elapsed = time.perf_counter() - t0
    out = [ts.ckks_vector_from(ctx, b) for b in out]
    y = np.stack([np.asarray(v.decrypt())[: X.shape[0]] for v in out], axis=1)
    return y, elapsed, {**p, "depth": depth}
