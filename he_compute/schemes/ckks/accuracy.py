"""Predicted output error of a plan, and the activation degrees that meet a user's ``max_error``.

Two predictions, the smaller one is used:

* a worst-case bound, propagated feature by feature through the plan, valid for
  every input whose activations stay inside the fitted ranges (calibration range
  plus margin) -- rigorous, but it multiplies every layer's ``|W|`` row sums, so
  it grows fast with depth;
* ``CALIBRATION_FACTOR`` times the largest error of the polynomial plan against
  the exact model on the calibration data (computed in the clear), plus the
  CKKS noise propagated as independent random errors -- what the data actually
  meet, with head room for unseen samples.

The worst-case propagation rules:

* a linear op maps an error vector ``e`` to ``|W| e`` (exact worst case);
* a polynomial adds its minimax fit error and scales ``e`` by its largest slope;
* ``x*x`` maps ``e`` to ``2 |x|max e + e**2``;
* every level adds CKKS rounding noise, ``NOISE`` in the units of the scale.

Degrees trade depth for accuracy: each step up (3, 7, 15, 31, 63) costs one level
and roughly halves a ReLU fit's error, so the compiler raises the degree of the
activation layer that contributes most until the bound meets the target.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ...errors import UnsupportedModelError
from .plan import LINEAR_OPS, affine_matrix, feature_groups

# Rounding and encryption noise per level relative to the scale, for the smallest scale the parameter
# choice allows (2**-26, params.MIN_AUTO_SCALE_BITS) and the largest ring (sqrt(32768) ~ 181), 16x over.
NOISE = 16 * 181 * 2.0**-26
# A composite ReLU is deep enough that the chain holding it has N=32768; the compiler refuses a composite
# plan whose scale would fall below this, so its stages' noise is predicted at this scale (see composite.fit).
COMPOSITE_SCALE_BITS = 30
COMPOSITE_NOISE = 16 * 181 * 2.0**-COMPOSITE_SCALE_BITS
CANDIDATES = (3, 7, 15, 31, 63)
CALIBRATION_FACTOR = 1.5


def predict(layers: list[dict[str, Any]], weights: dict[str, np.ndarray], fits: dict[int, dict[str, Any]],
            peaks: dict[int, np.ndarray], fit_errors: bool = True) -> float:
    """Worst-case absolute error of the plan's outputs (``fits[i]``: the chosen fit of poly layer ``i``).

    With ``fit_errors=False`` only the CKKS noise is propagated; it is random
    and independent across features, so it grows through a layer as the root of
    the sum of squares (``sqrt(W**2 e**2)``), not as ``|W| e``.
    """
    e = np.full(int(np.prod(layers[0]["in_shape"])), NOISE)
    for i, layer in enumerate(layers):
        op = layer["op"]
        if op in LINEAR_OPS:
            matrix, _ = affine_matrix(layer, weights)
            e = (np.abs(matrix) @ e if fit_errors else np.sqrt(matrix**2 @ e**2)) + NOISE
        elif op == "poly":
            groups = feature_groups(layer)
            # A composite's own rounding noise (``noise``, amplified through its stages) is in its errors too.
            own = fits[i]["errors"][groups] if fit_errors else fits[i].get("noise", 0.0)
            e = fits[i]["slopes"][groups] * e + own + NOISE
        elif op == "square":
            e = 2.0 * peaks[i] * e + e * e + NOISE
    return float(e.max())


def estimate(layers: list[dict[str, Any]], weights: dict[str, np.ndarray], fits: dict[int, dict[str, Any]],
             peaks: dict[int, np.ndarray], calibration_error: Any) -> dict[str, float]:
    """Both predictions for one choice of fits, and the one used (``predicted``, the smaller)."""
    bound = predict(layers, weights, fits, peaks)
    observed = calibration_error(fits)
    empirical = CALIBRATION_FACTOR * observed + predict(layers, weights, fits, peaks, fit_errors=False)
    return {"predicted": min(bound, empirical), "worst_case_bound": bound, "calibration": observed}


class Ladder(NamedTuple):
    """The rungs ``fit_at`` understands, cheapest first, and what they are called in a refusal."""

    rungs: list[Any]
    name: str

    @classmethod
    def degrees(cls, max_degree: int) -> Ladder:
        """One polynomial per activation, of the candidate degrees up to ``max_degree``."""
        rungs = [d for d in CANDIDATES if d <= max_degree]
        return cls(rungs, f"activation degrees up to {rungs[-1] if rungs else max_degree}")


def choose_degrees(layers: list[dict[str, Any]], weights: dict[str, np.ndarray], fit_at: Any,
                   peaks: dict[int, np.ndarray], max_error: float, forced: int | None, calibration_error: Any,
                   ladder: Ladder) -> tuple[dict[int, dict[str, Any]], dict[str, float]]:
    """Pick a rung per poly layer (cheapest that meets ``max_error``); return the fits and the predictions.

    ``fit_at(i, rung)`` fits poly layer ``i`` at a rung of ``ladder`` (a degree, or a composite ReLU's
    resolution; cached by the caller); ``calibration_error(fits)`` is the plan's error on the calibration data
    with those fits.  With ``forced`` every layer gets that rung and the error is only reported.
    """
    poly = [i for i, layer in enumerate(layers) if layer["op"] == "poly"]
    candidates = list(ladder.rungs)
    level = {i: (candidates.index(forced) if forced in candidates else 0) for i in poly}
    if forced is not None and forced not in candidates:
        fits = {i: fit_at(i, forced) for i in poly}
        return fits, estimate(layers, weights, fits, peaks, calibration_error)
    while True:
        fits = {i: fit_at(i, candidates[level[i]]) for i in poly}
        result = estimate(layers, weights, fits, peaks, calibration_error)
        bound = result["predicted"]
        if bound <= max_error or forced is not None or not poly:
            return fits, result
        # Raise the layer whose next degree lowers the bound most (each raise costs one level).
        best, best_bound = None, bound
        for i in poly:
            if level[i] + 1 < len(candidates):
                trial = dict(fits)
                trial[i] = fit_at(i, candidates[level[i] + 1])
                b = estimate(layers, weights, trial, peaks, calibration_error)["predicted"]
                if b < best_bound:
                    best, best_bound = i, b
        if best is None:
            raise UnsupportedModelError(
                f"max_error {max_error:g} cannot be met: the best reachable bound is {bound:.3g} with "
                f"{ladder.name}; loosen max_error or use square activations"
            )
        level[best] += 1
