"""CKKS encryption parameters: chosen from the plan's depth, checked against the HE Standard.

A CKKS ciphertext loses one prime of its coefficient modulus per rescale, so a
plan of multiplicative depth ``D`` needs ``D`` middle primes of ``scale_bits``
each, plus a first prime that holds the final value (scale plus integer bits)
and a special prime for key switching.  Security depends only on the ring
degree ``N`` and the total modulus size, bounded by the HE Standard table
below (128-bit classical security, ternary secret), the same table SEAL uses.
"""

from __future__ import annotations

from typing import Any

from ...errors import SecurityError, UnsupportedModelError

SECURITY_LEVEL = 128
# HomomorphicEncryption.org standard, 128-bit classical security: max total coeff modulus bits per N.
MAX_COEFF_BITS_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
# Bits above the scale kept in the first (and special) prime: outputs must stay below 2**(INT_BITS-1).
INT_BITS = 20
# Below this scale the rounding noise (~2**-scale * sqrt(N)) starts to flip close predictions.
MIN_AUTO_SCALE_BITS = 30
MAX_SCALE_BITS = 40
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
    if any(not 1 <= int(b) <= MAX_PRIME_BITS for b in coeff_mod_bit_sizes) or len(coeff_mod_bit_sizes) < 2:
        raise SecurityError(f"coefficient modulus {coeff_mod_bit_sizes} is malformed: use 2+ primes of 1..60 bits")


def choose(
    depth: int,
    *,
    poly_modulus_degree: int | None = None,
    scale_bits: int | None = None,
    coeff_mod_bit_sizes: list[int] | None = None,
) -> dict[str, Any]:
    """Pick ``N``, the prime chain and the scale for a plan of multiplicative depth ``depth``.

    The smallest ``N`` whose 128-bit budget gives at least 30 bits of scale
    wins (smaller rings are faster and have smaller keys).  Explicit values
    are honoured but still checked; an explicit chain too short for the depth
    is refused.
    """
    if coeff_mod_bit_sizes is not None:
        chain = [int(b) for b in coeff_mod_bit_sizes]
        n = poly_modulus_degree or next((n for n, b in sorted(MAX_COEFF_BITS_128.items()) if sum(chain) <= b), 32768)
        scale = scale_bits or (chain[1] if len(chain) > 2 else chain[0])
        return _finish(depth, int(n), chain, int(scale))
    degrees = [poly_modulus_degree] if poly_modulus_degree else [4096, 8192, 16384, 32768]
    for n in degrees:
        bound = MAX_COEFF_BITS_128.get(int(n), 0)
        scale = scale_bits or min(MAX_SCALE_BITS, (bound - 2 * INT_BITS) // (depth + 2))
        if scale_bits is None and scale < MIN_AUTO_SCALE_BITS and n != degrees[-1]:
            continue
        outer = min(MAX_PRIME_BITS, scale + INT_BITS)
        return _finish(depth, int(n), [outer] + [scale] * depth + [outer], int(scale))
    raise AssertionError("unreachable")


def _finish(depth: int, n: int, chain: list[int], scale: int) -> dict[str, Any]:
    check_security(n, chain)
    check_depth(depth, chain)
    return {"poly_modulus_degree": n, "coeff_mod_bit_sizes": chain, "scale_bits": scale, "slots": n // 2}


def check_depth(depth: int, chain: list[int]) -> None:
    """Refuse a chain with fewer rescaling primes than the plan's multiplicative depth."""
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


def make_context(ckks: dict[str, Any], *, galois: bool) -> Any:
    """Create a fresh private TenSEAL context (secret key inside) for these parameters."""
    import tenseal as ts

    validate(ckks)
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS, int(ckks["poly_modulus_degree"]), coeff_mod_bit_sizes=list(ckks["coeff_mod_bit_sizes"])
    )
    ctx.global_scale = 2.0 ** int(ckks["scale_bits"])
    ctx.generate_relin_keys()
    if galois:
        ctx.generate_galois_keys()
    return ctx
