"""CKKS encryption parameters: chosen from the plan's depth, checked against the HE Standard.

A CKKS ciphertext loses one prime of its coefficient modulus per rescale, so a
plan of multiplicative depth ``D`` needs ``D`` middle primes of ``scale_bits``
each, plus a first prime that holds the final value (scale plus integer bits)
and a special prime for key switching.  Security depends only on the ring
degree ``N`` and the total modulus size, bounded by the HE Standard table
below (128-bit classical security, ternary secret), the same table SEAL uses.

One shape skips all of that: a plan that is a single plaintext product with no
key switching (a batch-packed linear model) keeps its one product unrescaled, at
``2**(scale + weight_scale)``, in a chain of ONE prime of ``scale + weight_scale
+ int_bits`` bits (:func:`one_prime`).  No middle prime, no special prime: every ciphertext
is half the size of a ``[outer, scale, special]`` chain's, and encryption,
transfer, loading and the products cost about half as much.
"""

from __future__ import annotations

from typing import Any

from ...errors import SecurityError, UnsupportedModelError

SECURITY_LEVEL = 128
# HomomorphicEncryption.org standard, 128-bit classical security: max total coeff modulus bits per N.
MAX_COEFF_BITS_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
# Bits above the scale kept in the first (and special) prime: outputs must stay below 2**(INT_BITS-1).
# The compiler asks for more when the calibration outputs need it (``int_bits``).
INT_BITS = 8
# Below this scale CKKS noise (~2**-scale * N, amplified by deep layers) approaches the 1e-2 targets users ask for.
MIN_AUTO_SCALE_BITS = 26
MAX_SCALE_BITS = 40
# A one-prime chain's weights are rounded to multiples of 2**-weight_scale: below 1e-6 of error per weight.
MIN_WEIGHT_SCALE_BITS = 20
# Ring degrees tried, smallest (fastest, smallest keys) first.
DEGREES = (4096, 8192, 16384, 32768)
MAX_PRIME_BITS = 60  # SEAL's limit for one prime


def check_security(poly_modulus_degree: int, coeff_mod_bit_sizes: list[int]) -> None:
    """Raise :class:`SecurityError` unless the parameters reach 128-bit security."""
    bound = MAX_COEFF_BITS_128.get(int(poly_modulus_degree))
    if bound is None:
        raise SecurityError(
            f"poly modulus degree {poly_modulus_degree} is not one of {sorted(MAX_COEFF_BITS_128)}: pick a power of two"
        )
    total = sum(int(b) for b in coeff_mod_bit_sizes)
    if total > bound:
        raise SecurityError(
            f"{total} coefficient-modulus bits exceed the 128-bit bound of {bound} for N={poly_modulus_degree}: "
            f"use a larger poly_modulus_degree or fewer/smaller primes"
        )
    if any(not 1 <= int(b) <= MAX_PRIME_BITS for b in coeff_mod_bit_sizes) or len(coeff_mod_bit_sizes) < 1:
        raise SecurityError(f"coefficient modulus {coeff_mod_bit_sizes} is malformed: use primes of 1..60 bits")


def choose(
    depth: int,
    *,
    poly_modulus_degree: int | None = None,
    scale_bits: int | None = None,
    coeff_mod_bit_sizes: list[int] | None = None,
    int_bits: int = INT_BITS,
    min_degree: int = DEGREES[0],
) -> dict[str, Any]:
    """Pick ``N``, the prime chain and the scale for a plan of multiplicative depth ``depth``.

    The chain is ``[scale + int_bits, scale x depth, special]``: one prime per
    rescale and no more, because every prime costs time in every operation.  The
    smallest ``N`` whose 128-bit budget leaves at least ``MIN_AUTO_SCALE_BITS`` of
    scale wins (smaller rings are faster per ciphertext and have smaller keys).
    ``min_degree`` lets batch packing skip rings whose per-chunk overheads
    (Python calls, serialization) outweigh their per-slot cost.  Explicit values
    are honoured but still checked; a plan too deep for 128-bit
    parameters is refused with the depth it needs.
    """
    if coeff_mod_bit_sizes is not None:
        chain = [int(b) for b in coeff_mod_bit_sizes]
        n = poly_modulus_degree or next((n for n, b in sorted(MAX_COEFF_BITS_128.items()) if sum(chain) <= b), 32768)
        scale = scale_bits or (chain[1] if len(chain) > 2 else chain[0])
        return _finish(depth, int(n), chain, int(scale))
    degrees = [poly_modulus_degree] if poly_modulus_degree else [n for n in DEGREES if n >= min_degree]
    for n in degrees:
        bound = MAX_COEFF_BITS_128.get(int(n), 0)
        scale = scale_bits or min(MAX_SCALE_BITS, (bound - 2 * int_bits) // (depth + 2))
        if scale < MIN_AUTO_SCALE_BITS and scale_bits is None:
            continue
        outer = min(MAX_PRIME_BITS, scale + int_bits)
        chain = [outer] + [scale] * depth + [outer]
        if sum(chain) > bound and n != degrees[-1]:  # an explicit scale this ring cannot hold: try a larger one
            continue
        return _finish(depth, int(n), chain, int(scale))
    raise UnsupportedModelError(
        f"the plan needs multiplicative depth {depth}, more than 128-bit parameters allow at a {MIN_AUTO_SCALE_BITS}-bit "
        f"scale (N=32768 holds about {(MAX_COEFF_BITS_128[32768] - 2 * int_bits) // MIN_AUTO_SCALE_BITS - 2}): "
        f"loosen max_error, use square activations or a shallower model"
    )


def one_prime(depth: int, *, int_bits: int = INT_BITS, min_degree: int = DEGREES[0]) -> dict[str, Any] | None:
    """A one-prime chain for a plan that is one plaintext product without key switching, or ``None``.

    The input is encoded at ``2**scale`` (its noise, amplified by the weights, is
    the error that matters: at least ``MIN_AUTO_SCALE_BITS``), the weights at
    ``2**weight_scale`` (their rounding error is below ``2**-weight_scale``), and
    the product is left at ``2**(scale + weight_scale)`` with ``int_bits`` above
    it, in one prime of at most 60 bits.  ``None`` when the weights would get
    fewer than ``MIN_WEIGHT_SCALE_BITS`` (large outputs) or the plan is deeper
    than one product: the caller then uses :func:`choose`.
    """
    budget = MAX_PRIME_BITS - int_bits
    scale = max(MIN_AUTO_SCALE_BITS, budget // 2)
    if depth != 1 or budget - scale < MIN_WEIGHT_SCALE_BITS:
        return None
    n = next(d for d in DEGREES if d >= min_degree)
    return _finish(depth, n, [MAX_PRIME_BITS], scale) | {"weight_scale_bits": budget - scale}


def _finish(depth: int, n: int, chain: list[int], scale: int) -> dict[str, Any]:
    check_security(n, chain)
    check_depth(depth, chain)
    return {"poly_modulus_degree": n, "coeff_mod_bit_sizes": chain, "scale_bits": scale, "slots": n // 2}


def check_depth(depth: int, chain: list[int]) -> None:
    """Refuse a chain with fewer rescaling primes than the plan's multiplicative depth (a one-prime chain
    holds exactly one unrescaled product)."""
    if len(chain) == 1:
        if depth != 1:
            raise UnsupportedModelError(f"a one-prime modulus chain holds exactly one product, not depth {depth}: "
                                        "let he_compute choose the parameters")
        return
    if len(chain) - 2 < depth:
        raise UnsupportedModelError(
            f"the plan needs multiplicative depth {depth} but the modulus chain {chain} allows {len(chain) - 2}: "
            f"lower the activation degree or let he_compute choose the parameters"
        )


def validate(ckks: dict[str, Any]) -> None:
    """Re-check the parameters recorded in a manifest (a tampered bundle cannot weaken them)."""
    try:
        n, chain = int(ckks["poly_modulus_degree"]), [int(b) for b in ckks["coeff_mod_bit_sizes"]]
        depth, scale = int(ckks["multiplicative_depth"]), int(ckks["scale_bits"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SecurityError(f"manifest lacks valid CKKS parameters ({exc}): re-compile the bundle") from exc
    check_security(n, chain)
    check_depth(depth, chain)
    if not 20 <= scale <= MAX_PRIME_BITS:
        raise SecurityError(f"scale of 2**{scale} is outside 2**20..2**60: re-compile the bundle")
    if len(chain) == 1:
        weight = ckks.get("weight_scale_bits")
        if (not isinstance(weight, int) or not MIN_WEIGHT_SCALE_BITS <= weight or scale + weight >= chain[0]
                or ckks.get("relin_keys") or ckks.get("galois_steps") or ckks.get("packing") != "batch"):
            raise SecurityError(f"a one-prime chain {chain} holds only a batch-packed product at 2**(scale + "
                                f"weight_scale_bits), below the prime, without key switching: re-compile the bundle")
