"""Microsoft SEAL through ``tenseal.sealapi``: contexts, exact scales per level, serialization, evaluation primitives.

TenSEAL's high-level tensors rescale after every product and hide rotations; its
``sealapi`` module (shipped in the same wheel) exposes SEAL itself, which lets the
engine multiply-accumulate with one rescale per output, rotate by chosen steps and
generate Galois keys for exactly those steps.  This module holds what both sides
share; secret-key operations live in :mod:`.client` only.

Scales are exact by construction: level ``l`` has a canonical scale ``S_l`` with
``S_0 = 2**scale_bits`` and ``S_{l+1} = S_l**2 / q_l`` (``q_l`` the prime a rescale
at level ``l`` drops).  Products of two level-``l`` ciphertexts, and of a level-``l``
ciphertext with a plaintext encoded at ``S_l``, both land on ``S_{l+1}``, so sums never
meet mismatched scales and no scale is ever overwritten.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from ...errors import FormatError, SecurityError

PLAIN_CACHE = 1024  # encoded diagonals kept per engine (N=8192, 4 primes: 256 KiB each)


def sealapi() -> Any:
    """The SEAL bindings, imported lazily.

    ``tenseal.sealapi`` only re-exports the compiled ``_sealapi_cpp`` module that TenSEAL's wheel installs,
    after ``tenseal/__init__`` has loaded its tensor API, protobuf and numpy: 0.25 s against 0.01 s for the
    module itself, paid by every ``hec encrypt``, ``hec decrypt`` and worker child.  The extension is loaded
    directly (the same lookup ``tenseal.sealapi`` makes first), through ``tenseal.sealapi`` where it is not
    importable on its own.
    """
    try:
        import _sealapi_cpp as s
    except ImportError:
        import tenseal.sealapi as s
    return s


@contextmanager
def _scratch() -> Iterator[tuple[int, str]]:
    """A file descriptor and a path for SEAL to save to or load from, backed by memory only.

    SEAL's Python bindings only save to and load from paths (no bytes, no streams).  An anonymous
    in-memory file (``memfd``) gives them one without any name in a filesystem: nothing lands on disk or
    in ``/dev/shm``, no other user can open it (``/proc/self/fd`` follows ptrace rules, and whoever may
    ptrace this process can read its memory anyway), and it vanishes with the process, even on SIGKILL.
    This matters for the secret key, which passes through here on every load.  A fresh one per call
    keeps threads and forked children apart.
    """
    fd = os.memfd_create("hec-seal", os.MFD_CLOEXEC)
    try:
        yield fd, f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def dump(obj: Any) -> bytes:
    """SEAL's own serialization of ``obj`` (anything with ``save(path)``) as bytes."""
    with _scratch() as (fd, path):
        obj.save(path)
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()


def load(cls_name: str, context: Any, data: bytes, what: str) -> Any:
    """Load a SEAL object of class ``cls_name`` from bytes; SEAL validates it against ``context``."""
    obj = getattr(sealapi(), cls_name)()
    with _scratch() as (fd, path):
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        try:
            obj.load(context, path)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise FormatError(f"{what} is not a valid SEAL {cls_name} for these parameters: {exc}") from exc
    return obj


def _primes(n: int, bits: list[int], scale_bits: int) -> tuple[list[int], float]:
    """The coefficient modulus (prime values) and the fresh scale, the same on both sides.

    ``S_{l+1} = S_l**2 / q_l`` doubles any relative gap between ``S_l`` and the
    prime ``q_l`` it is divided by, so with SEAL's default primes (all just below
    2**bits) the scale runs away after ten levels.  Picking, level by level, the
    candidate prime closest to the current scale keeps every ``S_l`` within a
    prime gap of the start: a random walk instead of a doubling.
    """
    s = sealapi()
    depth = len(bits) - 2
    if depth < 1 or any(b != scale_bits for b in bits[1:-1]):
        return [m.value() for m in s.CoeffModulus.Create(n, bits)], 2.0**scale_bits
    extra = depth + 24
    while True:
        try:
            made = [m.value() for m in s.CoeffModulus.Create(n, [bits[0]] + [scale_bits] * (depth + extra) + [bits[-1]])]
            break
        except (ValueError, RuntimeError):  # not that many primes of this size for this ring: take fewer spares
            if extra == 0:
                raise
            extra //= 2
    pool = sorted(made[1:-1])
    scale = start = float(pool[len(pool) // 2])
    chosen = []
    for _ in range(depth):
        q = min(pool, key=lambda p: abs(p - scale))
        pool.remove(q)
        chosen.append(q)
        scale = scale * scale / q
    # SEAL drops the last data prime first: the prime for level 0 goes last.
    return [made[0], *reversed(chosen), made[-1]], start


def galois_elt(step: int, n: int) -> int:
    """SEAL's Galois element for a left rotation by ``step`` slots (negative: right) in ring degree ``n``."""
    slots = n // 2
    if not 0 < abs(step) < slots:
        raise FormatError(f"rotation step {step} out of range for {slots} slots")
    return pow(3, step if step > 0 else slots + step, 2 * n)


class Engine:
    """One SEAL context with its levels, canonical scales, encoder and evaluator."""

    def __init__(self, ckks: dict[str, Any]):
        s = sealapi()
        self.n = int(ckks["poly_modulus_degree"])
        self.slots = self.n // 2
        bits = [int(b) for b in ckks["coeff_mod_bit_sizes"]]
        parms = s.EncryptionParameters(s.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(self.n)
        primes, start = _primes(self.n, bits, int(ckks["scale_bits"]))
        parms.set_coeff_modulus([s.Modulus(p) for p in primes])
        # TC128 makes SEAL itself refuse parameters above the HE-standard bound (a second check after params.py).
        self.context = s.SEALContext(parms, True, s.SEC_LEVEL_TYPE.TC128)
        if not self.context.parameters_set():
            raise SecurityError(f"SEAL refuses N={self.n}, primes {bits}: {self.context.parameters_error_message()}")
        self.encoder = s.CKKSEncoder(self.context)
        self.evaluator = s.Evaluator(self.context)
        self.parms_ids: list[Any] = []
        self.dropped: list[int] = []
        data = self.context.first_context_data()
        while data is not None:
            self.parms_ids.append(data.parms_id())
            primes = [m.value() for m in data.parms().coeff_modulus()]
            self.dropped.append(primes[-1])
            data = data.next_context_data()
        self.depth = len(self.parms_ids) - 1
        # Encoded plaintexts of read-only slot vectors (the plan's diagonals), by identity; the entry keeps
        # the array alive, so its id cannot be reused by another object while cached.
        self._plain: dict[tuple[int, int, float], tuple[Any, Any]] = {}
        self._level = {tuple(p): i for i, p in enumerate(self.parms_ids)}
        self.scales = [start]
        # A one-prime chain's weights: encoded at their own scale, the product left unrescaled (params.one_prime).
        self.weight_scale = 2.0 ** int(ckks.get("weight_scale_bits", ckks["scale_bits"]))
        for lvl in range(self.depth):
            self.scales.append(self.scales[lvl] ** 2 / self.dropped[lvl])

    # ---- plaintexts and levels --------------------------------------------------------------------------

    def level(self, ct: Any) -> int:
        """How many rescales ``ct`` has been through."""
        return self._level[tuple(ct.parms_id())]

    def encode(self, values: Any, level: int, scale: float) -> Any:
        """A plaintext (a scalar, or one value per slot) at ``level`` and ``scale``."""
        pt = sealapi().Plaintext()
        vals = float(values) if np.ndim(values) == 0 else np.asarray(values, dtype=np.float64).tolist()
        self.encoder.encode(vals, self.parms_ids[level], scale, pt)
        return pt

    def _cached(self, values: Any, level: int, scale: float) -> Any:
        """:meth:`encode`, remembered for read-only arrays (encoding a slot vector costs as much as a product)."""
        if not isinstance(values, np.ndarray) or values.ndim == 0 or values.flags.writeable:
            return self.encode(values, level, scale)
        key = (id(values), level, scale)
        hit = self._plain.get(key)
        if hit is None or hit[0] is not values:
            if len(self._plain) >= PLAIN_CACHE:
                self._plain.clear()
            hit = self._plain[key] = (values, self.encode(values, level, scale))
        return hit[1]

    def ciphertext(self, data: bytes, what: str = "ciphertext") -> Any:
        """Load one ciphertext sent by the other party, with its level and scale checked."""
        ct = load("Ciphertext", self.context, data, what)
        if tuple(ct.parms_id()) not in self._level or ct.size() != 2:
            raise FormatError(f"{what} is not a 2-part ciphertext of these parameters: re-encrypt the input")
        return ct

    # ---- evaluation (kernels call only these, so :class:`.opcount.Counter` can stand in) --------------

    def to_level(self, ct: Any, level: int) -> Any:
        """``ct`` with primes dropped (no rescale: the scale stays) down to ``level``; a copy if it moves."""
        if self.level(ct) > level:
            raise FormatError(f"the plan raises a ciphertext from level {self.level(ct)} to {level}: re-compile it")
        if self.level(ct) == level:
            return ct
        out = sealapi().Ciphertext()
        self.evaluator.mod_switch_to(ct, self.parms_ids[level], out)
        return out

    def dot_plain(self, cts: list[Any], values: list[Any], scale: float | None, rescale: bool = True) -> Any:
        """``sum values[j] * cts[j]`` (scalars or slot vectors) with ONE rescale, landing exactly on ``scale``.

        With ``rescale=False`` the sum stays at its level (for more sums and
        rotations first); :meth:`rescale` then finishes it.  With ``scale=None``
        (the last level of the chain, which has no prime to drop) the values are
        encoded at ``weight_scale`` and the sum stays unrescaled, at the
        ciphertext's scale times that: what a one-prime chain (:func:`.params.one_prime`) holds.
        """
        s, ev = sealapi(), self.evaluator
        lvl = self.level(cts[0])
        acc, tmp = None, s.Ciphertext()
        for ct, v in zip(cts, values):
            pt = self._cached(v, lvl, self.weight_scale if scale is None else scale * self.dropped[lvl] / ct.scale)
            if acc is None:
                acc = s.Ciphertext()
                ev.multiply_plain(ct, pt, acc)
            else:
                ev.multiply_plain(ct, pt, tmp)
                ev.add_inplace(acc, tmp)
        return self.rescale(acc, scale) if rescale and scale is not None else acc

    def rescale(self, ct: Any, scale: float) -> Any:
        """Drop one prime (in place); ``scale`` is what the encodings were chosen to land on."""
        self.evaluator.rescale_to_next_inplace(ct)
        ct.scale = scale  # equal up to the last bit of the divisions that chose the encodings; SEAL compares exactly
        return ct

    def mul_const(self, ct: Any, value: Any, scale: float) -> Any:
        """``value * ct`` rescaled once, landing one level lower with exactly ``scale``."""
        return self.dot_plain([ct], [value], scale)

    def mul(self, a: Any, b: Any, relin: Any, scale: float | None = None) -> Any:
        """``a * b`` rescaled, at the lower level of the two plus one; relinearized unless ``relin`` is None.

        An unrelinearized (3-part) product may still be added and multiplied by
        plaintexts; :meth:`relinearize` brings it back once, after those sums.
        """
        lvl = max(self.level(a), self.level(b))
        same = a is b
        a, b = self.to_level(a, lvl), self.to_level(b, lvl)
        out = sealapi().Ciphertext()
        if same:
            self.evaluator.square(a, out)
        else:
            self.evaluator.multiply(a, b, out)
        if relin is not None:
            self.evaluator.relinearize_inplace(out, relin)
        self.evaluator.rescale_to_next_inplace(out)
        if scale is not None:
            out.scale = scale
        return out

    def relinearize(self, ct: Any, relin: Any) -> Any:
        """Back to two parts (in place) if a lazy product left three."""
        if ct.size() > 2:
            self.evaluator.relinearize_inplace(ct, relin)
        return ct

    def add(self, a: Any, b: Any) -> Any:
        """``a += b`` (same level and scale)."""
        self.evaluator.add_inplace(a, b)
        return a

    def add_const(self, ct: Any, value: Any) -> Any:
        """``ct + value`` in place (a plaintext at the ciphertext's own level and scale)."""
        if np.any(np.asarray(value) != 0.0):
            self.evaluator.add_plain_inplace(ct, self.encode(value, self.level(ct), ct.scale))
        return ct

    def rotate(self, ct: Any, step: int, galois: Any) -> Any:
        """``ct`` rotated left by ``step`` slots (one key switch: keys exist only for the plan's steps)."""
        out = sealapi().Ciphertext()
        self.evaluator.rotate_vector(ct, step, galois, out)
        return out
