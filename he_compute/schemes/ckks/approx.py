"""Activation expressions and their minimax polynomial approximations, fitted per neuron or channel.

An expression is a nested tuple over one variable: ``("x",)``, ``("c", value)``,
``(f, e)`` for ``f`` in relu/sigmoid/tanh/erf/gelu, and ``(op, a, b)`` for
add/sub/mul/div/pow.  CKKS evaluates only polynomials, so every non-polynomial
activation becomes a polynomial fitted where that neuron's calibration values
actually go: each neuron (each channel of a conv layer) gets its own range
``r``, the previous layer is divided by ``r`` so the ciphertext holds ``t = x / r``
in ``[-1, 1]``, and for ReLU (``relu(r t) = r relu(t)``) the factor ``r`` is folded
into the next layer's weights.  Polynomials are kept in the Chebyshev basis on
``[-1, 1]`` (bounded coefficients: no cancellation to amplify CKKS noise) and fitted
minimax (smallest worst-case error on the interval, a linear programme solved by
SciPy's HiGHS).  Each fit's error is then measured on a dense grid of its interval
(8,001 points), which is what the compiler predicts with: where the linear programme
fails, the fit falls back to least squares on the same nodes and its measured error
says what that costs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ...errors import UnsupportedModelError

X = ("x",)
DEFAULT_MARGIN = 0.2
# Degrees 2**m - 1 are the largest a depth of m levels evaluates (see kernels.poly); accuracy.CANDIDATES
# lists those the compiler tries, up to this one.
MAX_DEGREE = 63
# Fits stay within EXTENSION_SLACK x their error up to EXTENSION x the fitted half-width (see minimax).
EXTENSION = 1.6
EXTENSION_SLACK = 4.0


def evaluate(expr: Any, x: np.ndarray) -> np.ndarray:
    """Evaluate an expression in the clear."""
    tag = expr[0]
    if tag == "x":
        return x
    if tag == "c":
        return np.full_like(x, expr[1])
    if tag in ("add", "sub", "mul", "div", "pow"):
        a, b = evaluate(expr[1], x), evaluate(expr[2], x)
        ops: dict[str, np.ufunc] = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
                                    "pow": np.power}
        return ops[tag](a, b)
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
    raise UnsupportedModelError(f"unknown activation expression {tag!r}")


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


def depth_of_degree(degree: int) -> int:
    """Levels a degree-``degree`` polynomial costs with the depth-optimal evaluation of :mod:`.kernels`."""
    return max(1, math.ceil(math.log2(degree + 1)))


def minimax(g: Any, a: float, b: float, degree: int) -> tuple[np.ndarray, float, float]:
    """Chebyshev coefficients (basis on [-1, 1]) of the best degree-``degree`` fit of ``g`` on ``[a, b]``.

    Past the interval, up to ``EXTENSION`` times its half-width on each side, the
    error may be at most ``EXTENSION_SLACK`` times the error inside: an input a
    little out of range then costs a bounded error instead of the explosion of
    an unconstrained high-degree polynomial.  Returns ``(coeffs, max_error,
    lipschitz)``, both measured on a dense grid of ``[a, b]``.
    """
    from numpy.polynomial import chebyshev as C
    from scipy.optimize import linprog

    k = np.arange(max(200, 10 * (degree + 1)))
    mid, half = (a + b) / 2, (b - a) / 2
    nodes = np.concatenate([mid + half * np.cos(np.pi * (k + 0.5) / k.size), [a, b, 0.0 if a < 0 < b else a]])
    outer = np.concatenate([np.linspace(b, mid + EXTENSION * half, 60)[1:], np.linspace(mid - EXTENSION * half, a, 60)[:-1]])
    A, y = C.chebvander(nodes, degree), g(nodes)
    Ao, yo = C.chebvander(outer, degree), g(outer)
    m = degree + 1
    # minimize e  subject to  |A c - y| <= e inside and |Ao c - yo| <= slack * e outside (variables c, e)
    ones, slack = np.ones((nodes.size, 1)), np.full((outer.size, 1), EXTENSION_SLACK)
    res = linprog(np.r_[np.zeros(m), 1.0],
                  A_ub=np.block([[A, -ones], [-A, -ones], [Ao, -slack], [-Ao, -slack]]), b_ub=np.r_[y, -y, yo, -yo],
                  bounds=[(None, None)] * m + [(0, None)], method="highs")
    coeffs = res.x[:m] if res.status == 0 else C.chebfit(nodes, y, degree)
    dense = np.linspace(a, b, 8001)
    err = float(np.max(np.abs(C.chebval(dense, coeffs) - g(dense))))
    slope = float(np.max(np.abs(C.chebval(dense, C.chebder(coeffs)))))
    return coeffs, err, slope


def groups_of(shape: list[int]) -> np.ndarray:
    """Feature -> group index: one group per feature for flat layers, one per channel for (C, H, W)."""
    size = int(np.prod(shape))
    if len(shape) == 3:
        return np.repeat(np.arange(shape[0]), size // shape[0])
    return np.arange(size)


def ranges(x: np.ndarray, shape: list[int], margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Per group: centre and half-width of the calibration range widened by ``margin`` of its span."""
    flat = x.reshape(x.shape[0], -1)
    groups = groups_of(shape)
    n = int(groups.max()) + 1
    lo = np.array([flat[:, groups == g].min() for g in range(n)])
    hi = np.array([flat[:, groups == g].max() for g in range(n)])
    half = np.maximum((hi - lo) * (0.5 + margin), 1e-6)
    return (lo + hi) / 2, half


def fit_layer(expr: Any, mid: np.ndarray, half: np.ndarray, degree: int, fold: bool) -> dict[str, Any]:
    """Fit ``g(u) = f(mid + half u) / o`` on ``u`` in [-1, 1] per group (``o = half`` if folded, else 1).

    The previous layer maps its output ``x`` to ``u = (x - mid) / half`` (folded
    into its weights) and ``o`` is folded into the next layer, so every ciphertext
    value stays within a few units whatever the network's own range.
    """
    out_scale = half if fold else np.ones_like(half)
    coeffs, errs, slopes = [], [], []
    for g in range(half.size):
        def target(u: np.ndarray, g: int = g) -> np.ndarray:
            return evaluate(expr, mid[g] + half[g] * u) / out_scale[g]

        c, e, s = minimax(target, -1.0, 1.0, degree)
        coeffs.append(c.tolist())
        errs.append(e)
        slopes.append(s)
    return {"coeffs": coeffs, "errors": np.array(errs), "slopes": np.array(slopes), "out_scale": out_scale}
