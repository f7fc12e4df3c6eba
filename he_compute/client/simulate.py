"""Accuracy before encrypting: a keyless simulated run, and the compiled model measured against the float model.

:func:`simulate` returns what an encrypted run of a bundle would decrypt to (TFHE: Concrete's simulation of
the bundle's circuit, as Concrete ML's ``fhe="simulate"``; CKKS: the plan's polynomials in the clear), from
the bundle alone: no keys, no worker.  :func:`compare` puts those outputs next to the float model's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import schemes
from ..formats.bundle import Bundle
from ..schemes._onnx_ml import preprocess
from .data import validate_input


def simulate(bundle: Bundle, X: Any) -> np.ndarray:
    """``(n_samples, n_outputs)``: what encrypting ``X``, evaluating and decrypting would give, without keys.

    It matches the encrypted run exactly for TFHE (up to its bootstrap error rate, 2^-40 by default) and
    within CKKS noise for CKKS (a few percent of the approximation error it shows); inputs are clipped or saturated exactly as encryption does, with the same
    warning.
    """
    arr = preprocess(validate_input(X, bundle.manifest["input_shape"]), bundle.manifest)
    return schemes.client(bundle.scheme).simulate(bundle.manifest, bundle.client, bundle.server, arr)


def compare(simulated: np.ndarray, reference: np.ndarray, task: str | None) -> dict[str, float]:
    """The compiled model's outputs against the float model's: ``max_error`` and, for a classifier,
    ``agreement`` (the fraction of rows whose largest output is the same class)."""
    sim, ref = np.asarray(simulated, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    ref = ref.reshape(len(ref), -1)
    if sim.shape[1] == 2 and ref.shape[1] == 1 and task == "classifier":  # one probability column: P(class 1)
        ref = np.concatenate([1 - ref, ref], axis=1)
    report = {"rows": float(len(sim)), "max_error": float(np.abs(sim - ref).max()) if sim.shape == ref.shape else float("nan")}
    if task == "classifier":
        pick = (lambda a: a.argmax(axis=1)) if sim.shape[1] > 1 else (lambda a: (a[:, 0] > 0.5).astype(int))
        report["agreement"] = float(np.mean(pick(sim) == pick(ref))) if sim.shape == ref.shape else float("nan")
    return report
