"""Predicted output error of a plan, and the activation degrees that meet a user's ``max_error``.

The bound is propagated feature by feature through the plan, for inputs whose
activations stay inside the fitted ranges (calibration range plus margin):

* a linear op maps an error vector ``e`` to ``|W| e`` (exact worst case);
* a polynomial adds its minimax fit error and scales ``e`` by its largest slope;
* ``x*x`` maps ``e`` to ``2 |x|max e + e**2``;
* every level adds CKKS rounding noise, ``NOISE`` in the units of the scale.

Degrees trade depth for accuracy: each step up (3, 7, 15, 31, 63) costs one level
and roughly halves a ReLU fit's error, so the compiler raises the degree of the
activation layer that contributes most until the bound meets the target.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import UnsupportedModelError
from .plan import LINEAR_OPS, affine_matrix, feature_groups

# Rounding and encryption noise per level relative to the scale, for the smallest scale the parameter
# choice allows (2**-28) and the largest ring (sqrt(32768) ~ 181), with a 16x safety factor.
NOISE = 16 * 181 * 2.0**-28
CANDIDATES = (3, 7, 15, 31, 63)


def predict(layers: list[dict[str, Any]], weights: dict[str, np.ndarray], fits: dict[int, dict[str, Any]],
            peaks: dict[int, np.ndarray]) -> float:
    """Worst-case absolute error of the plan's outputs (``fits[i]``: the chosen fit of poly layer ``i``)."""
    e = np.full(int(np.prod(layers[0]["in_shape"])), NOISE)
    for i, layer in enumerate(layers):
        op = layer["op"]
        if op in LINEAR_OPS:
            matrix, _ = affine_matrix(layer, weights)
            e = np.abs(matrix) @ e + NOISE
        elif op == "poly":
            groups = feature_groups(layer)
            e = fits[i]["slopes"][groups] * e + fits[i]["errors"][groups] + NOISE
        elif op == "square":
            e = 2.0 * peaks[i] * e + e * e + NOISE
    return float(e.max())


def choose_degrees(layers: list[dict[str, Any]], weights: dict[str, np.ndarray], fit_at: Any,
                   peaks: dict[int, np.ndarray], max_error: float, forced: int | None,
                   max_degree: int) -> tuple[dict[int, dict[str, Any]], float]:
    """Pick a degree per poly layer (cheapest that meets ``max_error``); return the fits and the predicted error.

    ``fit_at(i, degree)`` fits poly layer ``i`` at a degree (cached by the caller).
    With ``forced`` every layer gets that degree and the bound is only reported.
    """
    poly = [i for i, layer in enumerate(layers) if layer["op"] == "poly"]
    candidates = [d for d in CANDIDATES if d <= max_degree]
    level = {i: (candidates.index(forced) if forced in candidates else 0) for i in poly}
    if forced is not None and forced not in candidates:
        fits = {i: fit_at(i, forced) for i in poly}
        return fits, predict(layers, weights, fits, peaks)
    while True:
        fits = {i: fit_at(i, candidates[level[i]]) for i in poly}
        bound = predict(layers, weights, fits, peaks)
        if bound <= max_error or forced is not None or not poly:
            return fits, bound
        # Raise the layer whose next degree lowers the bound most (each raise costs one level).
        best, best_bound = None, bound
        for i in poly:
            if level[i] + 1 < len(candidates):
                trial = dict(fits)
                trial[i] = fit_at(i, candidates[level[i] + 1])
                b = predict(layers, weights, trial, peaks)
                if b < best_bound:
                    best, best_bound = i, b
        if best is None:
            raise UnsupportedModelError(
                f"max_error {max_error:g} cannot be met: the best reachable bound is {bound:.3g} with activation "
                f"degrees up to {candidates[-1]}; loosen max_error or use square activations"
            )
        level[best] += 1
