"""Composite ReLU: ``relu(u) = u (1 + sign u) / 2`` with ``sign`` a composition of low-degree odd polynomials.

One minimax polynomial of degree ``d`` approximates ReLU on [-1, 1] to about
``0.14 / d``: each halving of the error doubles the degree and costs a level, so
errors below about 2e-3 of a neuron's range are out of one chain's reach.  A
sign function approximated by composing odd polynomials (Lee et al., "Minimax
approximation of sign function by composite polynomial") converges instead
doubly exponentially once its input is away from zero: each stage maps
``[a, 1]`` (the previous stage's positive image) closer to 1, so a few
degree-15 stages resolve inputs down to ``eps = 2**-12`` of the range.  Then
``u q(u)`` with ``q = (1 + sign) / 2`` is ReLU to within ``eps`` near the kink
and ``delta / 2`` elsewhere.

Each stage is fitted here by a linear programme (SciPy's HiGHS): the odd
Chebyshev series of degree ``d`` minimising ``max |p - 1|`` on ``[a, 1]`` while
staying within ``[-e, 1 + e]`` on ``[0, a]`` (so inputs near zero stay bounded
for the next stage), then divided by its peak so the next stage's input stays
in [-1, 1], where Chebyshev sums are well conditioned.  Designs are cached per
process (a dozen linear programmes, about a second in all).

In a plan the op is plain data, for any engine to evaluate stage by stage::

    {"op": "relu_composite", "stages": [[c0, c1, ...], ...], "out_scale": [s_g, ...]}

``stages``: Chebyshev coefficients on [-1, 1], shared by every feature, the
last one giving ``q``; ``out_scale``: one factor per group of features (one
group, one per feature or one per channel, as for ``poly``).  The layer computes
``y = out_scale[g] * x * q(p_(K-1)(... p_1(x)))``: its depth is the stages'
depths plus one for the product with ``x``.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

from ...errors import FormatError
from . import limits as _limits

OP = "relu_composite"
# Inputs are scaled by this factor over each neuron's calibration peak |x|: calibration values reach 1/1.6 of
# the fitted interval, and unseen ones up to 1.6x the calibration peak stay where the stages are fitted.
HEADROOM = 1.6
# The ladder the compiler climbs: resolution eps = 2**-bits of the scaled range, finest last.
EPS_BITS = tuple(range(5, 15))
STAGE_DEGREES = (3, 7, 15)  # 2**k - 1: the largest degree each depth holds
MAX_COEFF = 1e6  # a designed stage's coefficients are O(1); a stranger's larger ones are refused


def _odd_fit(a: float, d: int) -> tuple[np.ndarray, float]:
    """Odd Chebyshev series ``p`` of degree ``d``: minimise ``max |p - 1|`` on [a, 1], bounded on [0, a]."""
    from numpy.polynomial import chebyshev as C
    from scipy.optimize import linprog

    ks = np.arange(1, d + 1, 2)
    n = 400
    inner = np.unique(np.r_[np.geomspace(a, 1.0, n), np.linspace(a, 1.0, n),
                            a + (1 - a) * (1 - np.cos(np.pi * np.arange(n) / (n - 1))) / 2])
    small = np.linspace(0.0, a, 40)
    A, S = C.chebvander(inner, d)[:, ks], C.chebvander(small, d)[:, ks]
    one_i, one_s = np.ones((inner.size, 1)), np.ones((small.size, 1))
    res = linprog(np.r_[np.zeros(ks.size), 1.0],
                  A_ub=np.block([[A, -one_i], [-A, -one_i], [S, -one_s], [-S, -one_s]]),
                  b_ub=np.r_[np.ones(inner.size), -np.ones(inner.size), np.ones(small.size), np.zeros(small.size)],
                  bounds=[(None, None)] * ks.size + [(0, None)], method="highs")
    c = np.zeros(d + 1)
    c[ks] = res.x[: ks.size] if res.status == 0 else C.chebfit(inner, np.ones(inner.size), d)[ks]
    return c, float(res.x[-1]) if res.status == 0 else 1.0


def _grid(eps: float) -> np.ndarray:
    pos = np.unique(np.r_[np.linspace(0.0, 1.0, 4001), np.geomspace(eps / 64, 1.0, 4001)])
    return np.r_[-pos[::-1], pos[1:]]


def _chain(stages: list[np.ndarray], u: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """``q(u)`` and each stage's input along the way."""
    from numpy.polynomial import chebyshev as C

    inputs, v = [], u
    for c in stages:
        inputs.append(v)
        v = C.chebval(v, c)
    return v, inputs


@lru_cache(maxsize=32)
def design(bits: int) -> dict[str, Any]:
    """The composite for resolution ``eps = 2**-bits``: stages, degrees, depth and its measured ReLU error.

    Stages of degree 15 until one of degree 3, 7 or 15 brings ``delta`` (the
    sign error at ``|u| >= eps``) below ``eps``; the cheapest finishing degree wins.
    ``error``: ``max |u q(u) - relu(u)|`` on a dense grid of [-1, 1]; ``slope``:
    the largest ``|d(u q)/du|`` (how input errors grow); ``noise_gain``: the
    largest ``|u| sum_k |dq/dv_k|`` (how rounding noise in each stage's input
    reaches the output).
    """
    from numpy.polynomial import chebyshev as C

    eps = 2.0**-bits
    a, raw = eps, []
    for _ in range(_limits.Limits().max_stages):
        for d in STAGE_DEGREES:
            c, e = _odd_fit(a, d)
            if e <= eps or d == STAGE_DEGREES[-1]:
                break
        raw.append((c, e))
        if e <= eps:
            break
        # The image of [a, 1], measured densely: between the fit's nodes the polynomial dips a little lower.
        inner = C.chebval(np.r_[np.geomspace(a, 1.0, 4001), np.linspace(a, 1.0, 20001)], c)
        peak = float(np.abs(C.chebval(np.linspace(0.0, 1.0, 20001), c)).max())
        raw[-1] = (c / peak, e)
        a = max(float(inner.min()) / peak, eps)
    stages = [c for c, _ in raw]
    stages[-1] = stages[-1] / 2
    stages[-1][0] += 0.5  # the last stage gives q = (1 + sign) / 2
    u = _grid(eps)
    q, inputs = _chain(stages, u)
    relu = u * q
    error = float(np.max(np.abs(relu - np.maximum(u, 0.0))))
    slope = float(np.max(np.abs(np.gradient(relu, u))))
    gains, dq = np.zeros_like(u), np.ones_like(u)
    for c, v in zip(reversed(stages), reversed(inputs)):
        dq = dq * C.chebval(v, C.chebder(c))
        gains += np.abs(dq)
    degrees = [len(c) - 1 for c in stages]
    return {"bits": bits, "stages": [c.tolist() for c in stages], "degrees": degrees, "error": error,
            "slope": slope, "noise_gain": float(np.max(np.abs(u) * gains)) + 1.0, "depth": depth_of_stages(degrees)}


def depth_of_stages(degrees: list[int]) -> int:
    """Levels of a composite: each stage's Chebyshev evaluation, plus the product with ``x``."""
    return sum(max(1, math.ceil(math.log2(d + 1))) for d in degrees) + 1


def fit(half: np.ndarray, bits: int, fold: bool, noise: float) -> dict[str, Any]:
    """A composite fit for one layer whose group ``g`` was scaled by ``1 / half[g]`` (the previous layer's fold).

    Errors and slopes are per group, in the layer's output units (``half`` when
    not folded into the next layer), with ``noise`` (CKKS rounding per level)
    amplified through the stages.
    """
    d = design(bits)
    scale = np.ones_like(half) if fold else half
    return {"stages": d["stages"], "degrees": d["degrees"], "depth": d["depth"], "bits": bits,
            "errors": (d["error"] + noise * d["noise_gain"]) * scale, "slopes": d["slope"] * scale,
            "noise": noise * d["noise_gain"] * float(scale.max()),
            "out_scale": [1.0] if fold else [float(h) for h in half]}


def layer_fields(fit: dict[str, Any]) -> dict[str, Any]:
    """What a fit puts in its plan layer (replacing a ``poly`` layer's ``coeffs``)."""
    return {"op": OP, "activation": "relu", "stages": fit["stages"], "out_scale": fit["out_scale"]}


# ---- the plan op: checks a worker runs before allocating, and the clear evaluation -------------------


def depth_of(layer: dict[str, Any]) -> int:
    """Multiplicative depth of a checked ``relu_composite`` layer."""
    return depth_of_stages([len(c) - 1 for c in layer["stages"]])


def check(layer: dict[str, Any], shape: list[int], lim: _limits.Limits) -> None:
    """Refuse a malformed or oversized composite (stage count, degrees, coefficients, scales) in one line."""
    name, stages, scales = layer["name"], layer.get("stages"), layer.get("out_scale")
    if not isinstance(stages, list) or not stages:
        raise FormatError(f"plan: composite layer {name} needs a list of stages")
    _limits.check(len(stages), lim.max_stages, f"plan: the number of stages of composite layer {name}")
    for c in stages:
        if not isinstance(c, list):
            raise FormatError(f"plan: composite layer {name} needs one coefficient list per stage")
        _limits.check(len(c) - 1, lim.max_degree, f"plan: a stage degree of composite layer {name}")
        if len(c) < 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                 and abs(v) <= MAX_COEFF for v in c):
            raise FormatError(f"plan: composite layer {name} needs 2..{lim.max_degree + 1} finite coefficients "
                              f"of at most {MAX_COEFF:g} per stage")
    groups = {1, math.prod(shape)} | ({shape[0]} if len(shape) == 3 else set())
    if not isinstance(scales, list) or len(scales) not in groups or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 < abs(v) <= MAX_COEFF
        for v in scales
    ):
        raise FormatError(f"plan: composite layer {name} needs one non-zero finite out_scale per group "
                          f"(one, per feature or per channel)")


def apply(layer: dict[str, Any], x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Evaluate a ``relu_composite`` layer in the clear on ``(n, *in_shape)``; ``groups``: feature -> group."""
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    q, _ = _chain([np.asarray(c, dtype=np.float64) for c in layer["stages"]], flat)
    return (np.asarray(layer["out_scale"], dtype=np.float64)[groups] * flat * q).reshape(x.shape)
