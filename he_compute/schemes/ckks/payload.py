"""The framed binary format of one CKKS payload (a chunk of encrypted samples or results).

Layout (big-endian)::

    magic       6 bytes  b"HECKKS"
    version     u16      PAYLOAD_VERSION
    header_len  u32
    header      JSON {"role": "input"|"output", "packing": "batch"|"single", "n_samples", "n_ciphertexts"}
    n_ciphertexts times:
        length  u64
        data    a SEAL-serialized ciphertext

Evaluation keys use the same frame with role ``"keys"``: the header lists the
parts (``relin``, ``galois``) and the rotation steps the Galois keys cover.
Nothing here is unpickled; ciphertexts and keys are parsed by SEAL's own
loader, which checks them against the bundle's parameters.  Counts in a header
are checked against the limits before anything is read.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from ...errors import FormatError
from . import limits as _limits

MAGIC = b"HECKKS"
PAYLOAD_VERSION = 2
_PREFIX = struct.Struct(">6sHI")
_LEN = struct.Struct(">Q")
_MAX_HEADER = 1 << 16
PACKINGS = ("batch", "single")


@dataclass
class Payload:
    """A decoded payload: its header fields and the raw ciphertext bytes."""

    role: str
    packing: str
    n_samples: int
    ciphertexts: list[bytes]
    extra: dict | None = None


def pack(p: Payload) -> bytes:
    """Serialize a payload."""
    fields = {"role": p.role, "packing": p.packing, "n_samples": p.n_samples, "n_ciphertexts": len(p.ciphertexts)}
    header = json.dumps({**(p.extra or {}), **fields}, sort_keys=True).encode()
    parts = [_PREFIX.pack(MAGIC, PAYLOAD_VERSION, len(header)), header]
    for ct in p.ciphertexts:
        parts += [_LEN.pack(len(ct)), ct]
    return b"".join(parts)


def unpack(data: bytes, *, role: str, limits: _limits.Limits | None = None) -> Payload:
    """Parse and check a payload of the expected ``role``; raise :class:`FormatError` otherwise."""
    lim = limits or _limits.current()
    if len(data) < _PREFIX.size:
        raise FormatError("CKKS payload is truncated: re-encrypt the input")
    magic, ver, hlen = _PREFIX.unpack_from(data)
    if magic != MAGIC or ver != PAYLOAD_VERSION:
        raise FormatError("not a CKKS payload of a supported version: encrypt with this he_compute version")
    if hlen > _MAX_HEADER or _PREFIX.size + hlen > len(data):
        raise FormatError("CKKS payload header is truncated or oversized")
    try:
        header = json.loads(data[_PREFIX.size : _PREFIX.size + hlen])
        got_role, packing = header["role"], header["packing"]
        n_samples, count = int(header["n_samples"]), int(header["n_ciphertexts"])
        if not isinstance(header, dict):
            raise TypeError("not an object")
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise FormatError(f"CKKS payload header is invalid: {exc}") from exc
    _limits.check(count, min(lim.max_ciphertexts, len(data) // _LEN.size), "CKKS payload: the number of ciphertexts")
    _limits.check(n_samples, lim.max_samples, "CKKS payload: the number of samples")
    if got_role != role:
        raise FormatError(f"expected a CKKS {role} payload, got a {got_role} payload")
    if packing not in PACKINGS or n_samples < 1 or count < (0 if role == "keys" else 1):
        raise FormatError(f"CKKS payload header is invalid: packing {packing!r}, {n_samples} samples, {count} ciphertexts")
    pos, cts = _PREFIX.size + hlen, []
    for _ in range(count):
        if pos + _LEN.size > len(data):
            raise FormatError("CKKS payload is truncated: re-encrypt the input")
        (size,) = _LEN.unpack_from(data, pos)
        pos += _LEN.size
        if pos + size > len(data):
            raise FormatError("CKKS payload is truncated: re-encrypt the input")
        cts.append(data[pos : pos + size])
        pos += size
    if pos != len(data):
        raise FormatError("CKKS payload has trailing bytes")
    extra = {k: v for k, v in header.items() if k not in ("role", "packing", "n_samples", "n_ciphertexts")}
    return Payload(got_role, packing, n_samples, cts, extra)


CT_SLACK = 64 * 1024


def max_ciphertext_bytes(ckks: dict) -> int:
    """The most bytes one serialized ciphertext of these parameters can take: two polynomials of ``N``
    coefficients per prime, 8 bytes each (SEAL compresses below that), plus framing."""
    return 2 * int(ckks["poly_modulus_degree"]) * len(ckks["coeff_mod_bit_sizes"]) * 8 + CT_SLACK


def check_output(data: bytes, ckks: dict, n_outputs: int, n_samples: int) -> Payload:
    """Frame-check a result payload against the model (packing, counts, sizes) before anything parses it."""
    p = unpack(data, role="output")
    expected = 1 if p.packing == "single" else n_outputs
    if p.packing != ckks["packing"] or p.n_samples != n_samples or len(p.ciphertexts) != expected:
        raise FormatError(f"result chunk holds {len(p.ciphertexts)} {p.packing}-packed ciphertext(s) for "
                          f"{p.n_samples} samples, expected {expected} {ckks['packing']}-packed for {n_samples}")
    bound = max_ciphertext_bytes(ckks)
    if any(not 0 < len(ct) <= bound for ct in p.ciphertexts):
        raise FormatError(f"a result ciphertext is larger than these parameters allow ({bound} bytes)")
    return p
