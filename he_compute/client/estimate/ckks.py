"""CKKS estimates: the engine's own operation counts, times this machine's per-operation costs.

The counts come from :func:`he_compute.schemes.ckks.opcount.op_counts`, which runs the very kernels a
worker runs on stand-in ciphertexts, level by level (reading the inputs and writing the results
included: they dominate small models).  Each operation was timed at each level with the bundle's
parameters (:func:`~he_compute.schemes.ckks.opcount.measure`, in :mod:`.calibrate`'s one-thread child).

The expected error is the compiler's predicted bound (``manifest["ckks"]["predicted_max_error"]``), which
``tests/test_ckks_engine.py`` checks against the observed error.
"""

from __future__ import annotations

from typing import Any


def estimate(bundle: Any, costs: dict[str, float]) -> dict[str, Any]:
    """The figures of :class:`~he_compute.client.estimate.Estimate` for a CKKS bundle."""
    from ...schemes.ckks.opcount import op_counts, seconds
    from ...schemes.ckks.plan import check_sections

    ckks = bundle.manifest["ckks"]
    plan, weights = check_sections(bundle.server)
    slots = int(ckks["poly_modulus_degree"]) // 2
    chain = [int(b) for b in ckks["coeff_mod_bit_sizes"]]
    counts = op_counts(plan, weights, ckks["packing"], int(ckks.get("block", 0)), slots, chain)
    n_in, n_out = counts["counts"].get("load", 0), counts["counts"].get("dump", 0)
    depth = len(chain) - 2 if len(chain) > 1 else 0  # the level results come back at
    batch = ckks["packing"] == "batch"
    keys = (costs.get("relin_bytes", 0.0) if ckks.get("relin_keys", True) else 0.0) + \
        costs.get("galois_bytes_per_step", 0.0) * len(ckks.get("galois_steps", []))
    return {
        "unit": "batch" if batch else "ciphertext", "samples_per_unit": int(ckks["samples_per_ciphertext"]),
        "seconds_per_unit": seconds(counts, costs), "evaluation_key_bytes": int(keys),
        "input_bytes_per_unit": costs["input_bytes"] * n_in,
        "output_bytes_per_unit": costs.get(f"bytes@{depth}", costs["bytes@0"]) * n_out,
        "expected_error": float(ckks["predicted_max_error"]), "p_error": None,
        "basis": "counted " + ", ".join(f"{n:.0f} {op}" for op, n in sorted(counts["counts"].items()))
                 + " (the engine kernels), times per-operation costs measured here on one core",
    }
