"""Activation expressions and their least-squares polynomial approximations.

An expression is a nested tuple over one variable: ``("x",)``, ``("c", value)``,
``(f, e)`` for ``f`` in relu/sigmoid/tanh/erf/gelu, and ``(op, a, b)`` for
add/sub/mul/div/pow.  CKKS evaluates only polynomials, so every non-polynomial
activation becomes ``sum(c_k x**k)`` fitted on the range the calibration data
reaches at that layer, widened by a margin because unseen inputs go a little further.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

X = ("x",)
# Degrees tried, cheapest first; each costs 1 + ceil(log2(degree)) levels.  Within one depth the
# highest degree is free, so only 2 (2 levels), 4 (3 levels) and 8 (4 levels) are considered.
DEGREES = (2, 4, 8)
DEFAULT_MARGIN = 0.2
# A degree is accepted when its worst error over the calibration values is below this fraction of the
# layer's value range: small enough that argmax decisions rarely flip.
DEFAULT_TOLERANCE = 0.01


def evaluate(expr: Any, x: np.ndarray) -> np.ndarray:
    """Evaluate an expression in the clear."""
    tag = expr[0]
    if tag == "x":
        return x
    if tag == "c":
        return np.full_like(x, expr[1])
    if tag in ("add", "sub", "mul", "div", "pow"):
        a, b = evaluate(expr[1], x), evaluate(expr[2], x)
        return {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "pow": np.power}[tag](a, b)
    v = evaluate(expr[1], x)
    if tag == "relu":
        return np.maximum(v, 0.0)
    if tag == "sigmoid":
        return 1.0 / (1.0 + np.exp(-v))
    if tag == "tanh":
        return np.tanh(v)
    if tag in ("erf", "gelu"):
        from scipy.special import erf

        return erf(v) if tag == "erf" else 0.5 * v * (1.0 + erf(v / math.sqrt(2.0)))
    raise ValueError(f"unknown expression {tag!r}")


def is_square(expr: Any) -> bool:
    """``x*x`` or ``x**2``: evaluated exactly with one ciphertext multiplication."""
    return expr in (("mul", X, X), ("pow", X, ("c", 2.0)))


def label(expr: Any) -> str:
    """A human name for the activation an expression computes (for the manifest)."""
    if is_square(expr):
        return "square"
    names: list[str] = []

    def walk(e: Any) -> None:
        if e[0] in ("relu", "sigmoid", "tanh", "gelu", "erf"):
            names.append("gelu" if e[0] == "erf" else e[0])
        for sub in e[1:]:
            if isinstance(sub, tuple):
                walk(sub)

    walk(expr)
    return "+".join(dict.fromkeys(names)) or "polynomial"


def fit(expr: Any, samples: np.ndarray, *, degree: int | None = None, margin: float = DEFAULT_MARGIN,
        tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """Fit a polynomial to ``expr`` over the range ``samples`` reach (plus ``margin`` of it on each side).

    The fit weighs the calibration values themselves (where accuracy matters)
    together with a uniform grid over the widened range (so that the
    polynomial stays close everywhere it may be evaluated).
    """
    values = np.asarray(samples, dtype=np.float64).reshape(-1)
    lo, hi = float(values.min()), float(values.max())
    span = max(hi - lo, 1e-6)
    lo, hi = lo - margin * span, hi + margin * span
    grid = np.linspace(lo, hi, 2001)
    rng = np.random.default_rng(0)
    data = values if values.size <= 20000 else rng.choice(values, 20000, replace=False)
    xs = np.concatenate([data, grid])
    weights = np.concatenate([np.full(data.size, 1.0 / data.size), np.full(grid.size, 1.0 / grid.size)])
    ys = evaluate(expr, xs)
    y_span = max(float(ys.max() - ys.min()), 1e-6)
    best: dict[str, Any] = {}
    for deg in [degree] if degree else DEGREES:
        # Fit in the scaled variable t = x / r for conditioning, then convert back to powers of x.
        r = max(abs(lo), abs(hi))
        coeffs_t = np.polynomial.polynomial.polyfit(xs / r, ys, deg, w=np.sqrt(weights))
        coeffs = coeffs_t / r ** np.arange(deg + 1)
        approx = np.polynomial.polynomial.polyval
        err_data = float(np.max(np.abs(approx(data, coeffs) - evaluate(expr, data))))
        err_grid = float(np.max(np.abs(approx(grid, coeffs) - evaluate(expr, grid))))
        best = {"activation": label(expr), "degree": deg, "range": [lo, hi], "coeffs": [float(c) for c in coeffs],
                "max_fit_error": max(err_data, err_grid), "max_fit_error_on_calibration": err_data}
        if err_data <= tolerance * y_span:
            break
    return best
