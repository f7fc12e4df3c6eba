"""Homomorphic kernels: fused multiply-accumulate, Chebyshev polynomials, diagonal matrix products.

Kernels call only the evaluation methods of :class:`.seal.Engine`, so the same
code runs on ciphertexts and, with :class:`.opcount.Counter`, counts operations.
Each kernel consumes exactly the levels :func:`.plan.depth_of` accounts for and
leaves results at the canonical scale of their level, so kernels compose.

Single packing lays each sample out as a block of ``2n`` slots holding its
features twice, ``[x, x]`` (``n`` a power of two at least every layer's width):
then a left rotation by ``i < n`` reads ``x[(k + i) mod n]`` into slot ``k`` of
the block, which is what the diagonal method needs, for every block at once.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.polynomial import chebyshev as C


def linear_batch(eng: Any, xs: list[Any], matrix: np.ndarray, bias: np.ndarray, relin: Any) -> list[Any]:
    """``W x + b`` with one ciphertext per feature: plaintext products summed, then ONE rescale per output.

    Inputs may be unrelinearized products (see ``lazy`` in :func:`poly`): each
    output is relinearized once, instead of each input.  At the chain's last
    level (a one-prime chain: nothing to drop) the sums stay unrescaled.
    """
    lvl = max(eng.level(x) for x in xs)
    xs = [eng.to_level(x, lvl) for x in xs]
    target = eng.scales[lvl + 1] if lvl < eng.depth else None
    out = []
    for i in range(matrix.shape[0]):
        cols = np.flatnonzero(matrix[i])
        acc = eng.dot_plain([xs[j] for j in cols], matrix[i, cols].tolist(), target)
        out.append(eng.relinearize(eng.add_const(acc, float(bias[i])), relin))
    return out


@lru_cache(maxsize=256)
def _division(d: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Matrices Q, R with ``p = T_k (Q p) + (R p)`` for Chebyshev coefficient vectors ``p`` of degree ``d``."""
    q, r = np.zeros((d - k + 1, d + 1)), np.zeros((k, d + 1))
    for j in range(d + 1):
        quo, rem = C.chebdiv(np.eye(d + 1)[j], np.eye(k + 1)[k])
        q[: quo.size, j], r[: rem.size, j] = quo, rem
    return q, r


class Chebyshev:
    """``sum_k c_k T_k(u)`` for ``u`` in [-1, 1], at depth ``ceil(log2(degree + 1))``.

    ``p = q + T_k r`` with ``k`` the largest power of two not above the degree;
    ``q`` and ``r`` recurse.  ``T_2k = 2 T_k^2 - 1`` costs one product and no scalar
    level; ``r`` is evaluated at the level of ``T_k`` with the scale that makes
    ``T_k r`` land exactly on the target.  Coefficients are rows of a
    ``(degree + 1, G)`` array; ``expand`` turns one row into a plaintext value
    (a scalar for batch packing, a slot vector for per-neuron single packing).
    """

    def __init__(self, eng: Any, u: Any, relin: Any, degree: int, expand: Callable[[np.ndarray], Any], lazy: bool = False):
        self.eng, self.relin, self.expand, self.lazy = eng, relin, expand, lazy
        self.t: dict[int, Any] = {1: u}
        k = 1
        while 2 * k <= degree:
            sq = eng.mul(self.t[k], self.t[k], relin)
            eng.add(sq, sq)
            self.t[2 * k] = eng.add_const(sq, -1.0)
            k *= 2

    def __call__(self, c: np.ndarray, level: int, scale: float, top: bool = False) -> tuple[Any, np.ndarray]:
        """``(ciphertext or None, constant row still to add)`` for coefficient rows ``c`` at ``level``/``scale``."""
        eng = self.eng
        nonzero = np.flatnonzero(np.any(c != 0.0, axis=1))
        c = c[: nonzero[-1] + 1] if nonzero.size else c[:1] * 0.0
        if c.shape[0] <= 1:
            return None, c[0]
        d = c.shape[0] - 1
        if d == 1:
            return eng.to_level(eng.mul_const(self.t[1], self.expand(c[1]), scale), level), c[0]
        k = 1 << (d.bit_length() - 1)
        q, r = _division(d, k)
        tk = self.t[k]
        lk = eng.level(tk)
        h, h0 = self(q @ c, lk, scale * eng.dropped[lk] / tk.scale)
        if h is None:
            ct = eng.mul_const(tk, self.expand(h0), scale) if np.any(h0 != 0.0) else None
        else:
            ct = eng.mul(eng.add_const(h, self.expand(h0)), tk, None if top and self.lazy else self.relin, scale)
        low, c0 = self(r @ c, level, scale)
        if ct is None:
            return low, c0
        ct = eng.to_level(ct, level)
        return (eng.add(ct, low) if low is not None else ct), c0


def poly(eng: Any, x: Any, coeffs: np.ndarray, relin: Any, expand: Callable[[np.ndarray], Any],
         domain: tuple[Any, Any] | None = None, lazy: bool = False) -> Any:
    """A Chebyshev polynomial (coefficient rows ``coeffs``) on one ciphertext; ``domain`` maps x into [-1, 1] first.

    ``lazy`` leaves the last product unrelinearized, for a following linear
    layer to relinearize once per output (16 neurons -> 2 logits: 2 key switches, not 16).
    """
    if domain is not None:  # (1 / half, -mid / half), already expanded: costs one level
        x = eng.add_const(eng.mul_const(x, domain[0], eng.scales[eng.level(x) + 1]), domain[1])
    degree = coeffs.shape[0] - 1
    depth = max(1, int(np.ceil(np.log2(degree + 1))))
    level = eng.level(x) + depth
    ct, c0 = Chebyshev(eng, x, relin, degree, expand, lazy)(coeffs, level, eng.scales[level], top=True)
    if ct is None:
        # A constant polynomial (a neuron that never fires on the calibration data): SEAL refuses to
        # make an all-zero product, so carry x at 2**-20 (an error below 1e-6) to hold the constant.
        ct = eng.to_level(eng.mul_const(x, expand(np.full(coeffs.shape[1], 2.0**-20)), eng.scales[level]), level)
    return eng.add_const(ct, expand(c0))


def composite_relu(eng: Any, x: Any, shared: list[np.ndarray], last: np.ndarray, relin: Any,
                   expand: Callable[[np.ndarray], Any], lazy: bool = False) -> Any:
    """``x * q(p_(K-1)(... p_1(x)))``: the shared stages (one coefficient column each), then the last stage
    (rows ``last``, one column per group, ``out_scale`` folded in), then ONE product with ``x``.

    The last stage is evaluated at the scale that makes its product with ``x``
    land exactly on the canonical scale of the level below, so the next kernel
    sees what it would after :func:`poly`.
    """
    v = x
    for c in shared:
        v = poly(eng, v, c, relin, lambda row: float(row[0]))
    degree = last.shape[0] - 1
    level = eng.level(v) + max(1, int(np.ceil(np.log2(degree + 1))))
    target = eng.scales[level + 1] * eng.dropped[level] / x.scale
    ct, c0 = Chebyshev(eng, v, relin, degree, expand)(last, level, target)
    if ct is None:  # a constant last stage (a stranger's plan): carry v at 2**-20 so the product is not transparent
        ct = eng.to_level(eng.mul_const(v, expand(np.full(last.shape[1], 2.0**-20)), target), level)
    q = eng.add_const(ct, expand(c0))
    return eng.mul(eng.to_level(x, level), q, None if lazy else relin, eng.scales[level + 1])


# ---- single packing: diagonal method with baby-step / giant-step rotations ------------------------------


def bsgs_split(n: int) -> int:
    """Baby-step count ``n1`` (a power of two near sqrt(n)); giant steps are multiples of it."""
    return 1 << ((n.bit_length() - 1 + 1) // 2)


def diagonals(matrix: np.ndarray, n: int, slots: int) -> tuple[int, dict[tuple[int, int], np.ndarray]]:
    """Pre-rotated slot vectors ``P[g, j]`` of the non-zero diagonals, keyed by (giant, baby) index.

    Output slot ``k`` of every ``2n`` block gets ``sum_i M[k, (k + i) mod n] x[(k + i) mod n]``;
    diagonal ``i = g n1 + j`` is stored rotated right by ``g n1`` so that one giant
    rotation per ``g`` serves all its baby steps.
    """
    out_dim, in_dim = matrix.shape
    n1 = bsgs_split(n)
    k = np.arange(n)
    blocks = slots // (2 * n)
    plain: dict[tuple[int, int], np.ndarray] = {}
    for i in range(n):
        cols = (k + i) % n
        diag = np.where((k < out_dim) & (cols < in_dim), matrix[np.minimum(k, out_dim - 1), np.minimum(cols, in_dim - 1)], 0.0)
        if not np.any(diag):
            continue
        g, j = divmod(i, n1)
        vec = np.zeros(slots)
        for b in range(blocks):
            vec[2 * n * b + g * n1 + k] = diag
        vec.setflags(write=False)  # read-only: the engine may keep its encoding (see Engine._cached)
        plain[(g, j)] = vec
    return n1, plain


def rotation_steps(plain_keys: list[tuple[int, int]], n1: int, n: int) -> set[int]:
    """The rotations one diagonal product needs: baby steps, giant steps and the block duplication."""
    return {j for _, j in plain_keys if j} | {g * n1 for g, _ in plain_keys if g} | {-n}


def linear_single(eng: Any, x: Any, n: int, n1: int, plain: dict[tuple[int, int], np.ndarray], bias_vec: np.ndarray,
                  galois: Any) -> Any:
    """``W x + b`` on ``[x, x]`` blocks: BSGS diagonal products, ONE rescale, then ``[y, 0] -> [y, y]``.

    Giant-step rotations act on the unrescaled sums (rotation keeps level and
    scale), so the layer pays one rescale instead of one per giant step.
    """
    lvl = eng.level(x)
    target = eng.scales[lvl + 1]
    babies = {j: (x if j == 0 else eng.rotate(x, j, galois)) for j in sorted({j for _, j in plain})}
    acc = None
    for g in sorted({g for g, _ in plain}):
        keys = [(gg, j) for gg, j in plain if gg == g]
        inner = eng.dot_plain([babies[j] for _, j in keys], [plain[key] for key in keys], target, rescale=False)
        inner = eng.rotate(inner, g * n1, galois) if g else inner
        acc = inner if acc is None else eng.add(acc, inner)
    acc = eng.rescale(acc, target)
    acc = eng.add(acc, eng.rotate(acc, -n, galois))
    return eng.add_const(acc, bias_vec)
