"""CKKS estimates: homomorphic operations counted from the plan, times this machine's per-operation costs.

The count follows what the CKKS server does for each plan step (:mod:`he_compute.schemes.ckks.server`):
batch packing turns a linear layer into, per output, one ciphertext-by-scalar product (with its rescale)
per non-zero weight, the additions between them and a bias addition; an activation polynomial of degree
d costs d-1 ciphertext products for its powers plus its scalar terms; single packing's vector-matrix
product costs about one rotation and product per matrix row; reading the input ciphertexts and writing
the results are counted too (they dominate small models).  Each operation is timed at the top level
(:mod:`.calibrate`) and scaled by the primes its ciphertext still has (SEAL's costs grow with them).
This counter is the estimator's own; the CKKS engine keeps its own op counter, to be unified later.

The expected error is the engine's predicted bound where the manifest has one; otherwise the polynomial
approximation error measured at compile time on the calibration data (:func:`approximation_error`),
plus CKKS rounding noise scaled to the outputs.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

EXACT = ("relu", "sigmoid", "tanh", "gelu")
"""Activations whose exact form the approximation error is measured against."""


def count_ops(steps: list[tuple[str, Any]], width: int, primes: int) -> Counter[str]:
    """Operations of one chunk of ``width`` input ciphertexts (1 for single packing), each weighted by the
    share of ``primes`` its ciphertext still has."""
    ops: Counter[str] = Counter()
    level = 0

    def add(op: str, n: float) -> None:
        ops[op] += n * max(primes - level, 1) / primes

    for kind, arg in steps:
        if kind == "sum":
            rows, _bias = arg
            for idx, _ in rows:
                add("mul_scalar", max(len(idx), 1))
                add("add", max(len(idx) - 1, 0))
                add("add_scalar", 1)
            width, level = len(rows), level + 1
        elif kind == "mm":
            add("mm_row", len(arg))
            level += 1
        elif kind == "square":
            add("mul_ct", width)
            level += 1
        elif kind == "poly":
            degree = len(arg) - 1
            add("mul_ct", width * max(degree - 1, 0))
            add("mul_scalar", width * sum(1 for c in arg[1:] if c != 0.0))
            add("add", width * degree)
            add("add_scalar", width)
            level += 1 + int(np.ceil(np.log2(max(degree, 1))))
    return ops


def approximation_error(bundle: Any, X: np.ndarray) -> dict[str, float]:
    """Largest difference, on ``X``, between the outputs CKKS computes and those of the exact model (before the
    client's final Softmax/Sigmoid), and the outputs' peak.

    "What CKKS computes" is the plan in the clear with every plaintext constant (weights, polynomial
    coefficients) rounded to the encoding's resolution, 2**-scale_bits: a high-degree term fitted over a
    wide range has a coefficient below that resolution, and the engine then drops it.
    """
    from ...schemes._onnx_ml import preprocess
    from ...schemes.ckks import approx
    from ...schemes.ckks.plan import check_sections, run_layer

    plan, weights = check_sections(bundle.server)
    step = 2.0 ** -int(bundle.manifest["ckks"]["scale_bits"])
    encoded = {name: np.round(w / step) * step for name, w in weights.items()}
    x = np.asarray(X, dtype=np.float64).reshape(len(X), *plan["input_shape"])
    poly = exact = preprocess(x, bundle.manifest)
    for layer in plan["layers"]:
        if layer["op"] == "poly":
            poly = run_layer({**layer, "coeffs": [float(np.round(c / step) * step) for c in layer["coeffs"]]}, poly,
                             encoded)
        else:
            poly = run_layer(layer, poly, encoded)
        if layer["op"] == "poly" and layer.get("activation") in EXACT:
            exact = approx.evaluate((layer["activation"], approx.X), exact)
        else:
            exact = run_layer(layer, exact, weights)
    return {"approximation_error": float(np.max(np.abs(poly - exact))), "output_peak": float(np.max(np.abs(exact)))}


def _expected_error(manifest: dict[str, Any], noise: float, depth: int) -> float | None:
    ckks = manifest["ckks"]
    if "predicted_max_error" in ckks:  # the CKKS engine with error targets predicts its own bound
        return float(ckks["predicted_max_error"])
    measured = manifest.get("estimate", {})
    if "approximation_error" not in measured:
        return None
    return float(measured["approximation_error"]) + noise * max(float(measured["output_peak"]), 1.0) * (depth + 1)


def estimate(bundle: Any, costs: dict[str, float]) -> dict[str, Any]:
    """The figures of :class:`~he_compute.client.estimate.Estimate` for a CKKS bundle."""
    from ...schemes.ckks.server import CKKSServer

    m, ckks = bundle.manifest, bundle.manifest["ckks"]
    server = CKKSServer(m, bundle.server)
    primes = len(ckks["coeff_mod_bit_sizes"]) - 1  # the last prime is the special one, used for key switching
    depth = int(ckks["multiplicative_depth"])
    batch = ckks["packing"] == "batch"
    n_in = server.n_in if batch else 1
    n_out = int(server.plan["output_shape"][0]) if batch else 1  # before the client's post-processing
    ops = count_ops(server.steps, n_in, primes)
    ops["load"], ops["dump"] = n_in, n_out * max(primes - depth, 1) / primes
    seconds = sum(n * costs[op] for op, n in ops.items())
    # A ciphertext's size follows the bits of the primes it still has: the result keeps the first prime only
    # once the plan's rescales have dropped one middle prime each.
    bits = [int(b) for b in ckks["coeff_mod_bit_sizes"][:-1]]
    ct_in = costs["ciphertext_bytes"]
    ct_out = ct_in * sum(bits[: max(primes - depth, 1)]) / sum(bits)
    return {
        "unit": "batch" if batch else "sample", "samples_per_unit": int(ckks["slots"]) if batch else 1,
        "seconds_per_unit": seconds, "evaluation_key_bytes": int(costs["evaluation_key_bytes"]),
        "input_bytes_per_unit": ct_in * n_in,
        "output_bytes_per_unit": ct_out * n_out,
        "expected_error": _expected_error(m, costs["noise"], depth), "p_error": None,
        "basis": "counted " + ", ".join(f"{n:.0f} {op}" for op, n in sorted(ops.items())) + " (level-weighted), "
                 "times per-operation costs measured here on one core",
    }
