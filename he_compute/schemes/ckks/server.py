"""Worker side of the CKKS scheme: run a checked plan on ciphertexts with a public context.

Every linear op (linear, conv2d, avgpool2d) is turned, once, into its matrix.
Batch packing holds one ciphertext per feature (samples across slots), so a
linear op is a plaintext weighted sum of ciphertexts and needs no rotation.
Single packing holds one sample per ciphertext and uses TenSEAL's
vector-matrix product, which rotates (Galois keys).  That product relies on
the vector being replicated across the slots, which adding a plaintext bias
vector would break; so biases ride in homogeneous coordinates instead: the
client appends a constant slot, each matrix gets the bias as an extra column
and an extra row that carries the constant on (see :func:`homogeneous`).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ...errors import FormatError, KeyMismatchError, UnsafeArtifactError
from . import params
from .payload import Payload, check_output, pack, unpack
from .plan import LINEAR_OPS, affine_matrix, check_sections, needs_relin, poly_apply


def poly_eval(x: Any, coeffs: list[float]) -> Any:
    """``sum(c_k x**k)`` on a ciphertext at depth ``1 + ceil(log2(degree))``.

    Powers come from a product tree (``x**k = x**(2**m) * x**(k - 2**m)``), so
    ``x**k`` costs ``ceil(log2 k)`` levels; the scalar coefficients cost one more.
    """
    degree = len(coeffs) - 1
    powers: dict[int, Any] = {1: x}
    for k in range(2, degree + 1):
        high = 1 << (k.bit_length() - 1)
        powers[k] = powers[k // 2].square() if high == k else powers[high] * powers[k - high]
    acc = None
    for k in range(1, degree + 1):
        if coeffs[k] != 0.0:
            term = powers[k] * float(coeffs[k])
            acc = term if acc is None else acc + term
    acc = acc if acc is not None else x * 0.0
    return acc + float(coeffs[0])


def homogeneous(plan: dict[str, Any], weights: dict[str, np.ndarray]) -> list[tuple[str, Any]]:
    """Single-packing steps: ``(in+1, out+1)`` matrices whose last slot carries a known constant.

    After an activation ``p`` the constant slot holds ``p(t)``; the next matrix
    divides its bias column by that value.  ``t`` is picked so that ``p(t)`` is not tiny.
    """
    steps: list[tuple[str, Any]] = []
    const = 1.0  # the value the client puts in the extra slot
    layers = plan["layers"]
    for i, layer in enumerate(layers):
        if layer["op"] in LINEAR_OPS:
            matrix, bias = affine_matrix(layer, weights)
            last = not any(later["op"] in LINEAR_OPS for later in layers[i + 1 :])
            nxt = next((later for later in layers[i + 1 :] if later["op"] in ("square", "poly")), None)
            carry = 1.0
            if nxt is not None and nxt["op"] == "poly":
                candidates = [1.0, 0.5, 2.0, -1.0, -0.5, 0.25]
                carry = max(candidates, key=lambda t: abs(poly_apply(nxt["coeffs"], np.array(t))))
            full = np.zeros((matrix.shape[1] + 1, matrix.shape[0] + (0 if last else 1)))
            full[:-1, : matrix.shape[0]] = matrix.T
            full[-1, : matrix.shape[0]] = bias / const
            if not last:
                full[-1, -1] = carry / const
            steps.append(("mm", full.tolist()))
            const = carry
        elif layer["op"] == "square":
            steps.append(("square", None))
            const = const * const
        elif layer["op"] == "poly":
            steps.append(("poly", layer["coeffs"]))
            const = float(poly_apply(layer["coeffs"], np.array(const)))
    return steps


class CKKSServer:
    """Evaluates one plan; build once per bundle and reuse it."""

    def __init__(self, manifest: dict[str, Any], sections: dict[str, bytes]):
        self.plan, weights = check_sections(sections)
        self.packing = manifest["ckks"]["packing"]
        self.slots = int(manifest["ckks"]["slots"])
        self.n_in = int(np.prod(self.plan["input_shape"]))
        self.steps: list[tuple[str, Any]] = []
        if self.packing == "single":
            self.steps = homogeneous(self.plan, weights)
            return
        for layer in self.plan["layers"]:
            if layer["op"] in LINEAR_OPS:
                matrix, bias = affine_matrix(layer, weights)
                rows = [(np.flatnonzero(row).tolist(), row[row != 0].tolist()) for row in matrix]
                self.steps.append(("sum", (rows, bias.tolist())))
            elif layer["op"] in ("square", "poly"):
                self.steps.append((layer["op"], layer.get("coeffs")))

    def load_keys(self, evaluation: bytes) -> Any:
        """Deserialize the public context; refuse one that carries a secret key or lacks needed keys."""
        import tenseal as ts

        try:
            ctx = ts.context_from(evaluation)
        except Exception as exc:
            raise FormatError(f"CKKS evaluation keys are unreadable: {exc}") from exc
        if ctx.is_private():
            raise UnsafeArtifactError("the evaluation keys contain a secret key: regenerate keys with hec keygen")
        if needs_relin(self.plan) and not ctx.has_relin_keys():
            raise KeyMismatchError("the evaluation keys lack relinearization keys this model needs: re-run hec keygen")
        if self.packing == "single" and not ctx.has_galois_keys():
            raise KeyMismatchError("the evaluation keys lack the Galois keys single packing needs: re-run hec keygen")
        return ctx

    def evaluate(self, payload: bytes, keys: Any) -> bytes:
        """Run the plan on one encrypted chunk; return the encrypted outputs."""
        import tenseal as ts

        p = unpack(payload, role="input")
        expected = 1 if self.packing == "single" else self.n_in
        if p.packing != self.packing or len(p.ciphertexts) != expected:
            raise FormatError(f"this model takes {self.packing}-packed input of {expected} ciphertext(s), "
                              f"got {p.packing} with {len(p.ciphertexts)}")
        try:
            cts = [ts.ckks_vector_from(keys, ct) for ct in p.ciphertexts]
        except Exception as exc:
            raise FormatError(f"ciphertext is unreadable: {exc}") from exc
        want = self.n_in + 1 if self.packing == "single" else p.n_samples
        if any(ct.size() != want for ct in cts) or p.n_samples > self.slots:
            raise FormatError(f"ciphertexts do not hold {want} values each: re-encrypt the input")
        try:
            out = self._run_single(cts[0]) if self.packing == "single" else self._run_batch(cts)
        except (ValueError, RuntimeError) as exc:
            raise KeyMismatchError(f"evaluation failed (keys or ciphertexts do not fit this model): {exc}") from exc
        return pack(Payload("output", self.packing, p.n_samples, [ct.serialize() for ct in out]))

    def _run_batch(self, x: list[Any]) -> list[Any]:
        for kind, arg in self.steps:
            if kind == "sum":
                rows, bias = arg
                y = []
                for (idx, ws), b in zip(rows, bias):
                    acc = None
                    for j, w in zip(idx, ws):
                        term = x[j] * w
                        acc = term if acc is None else acc.add_(term)
                    y.append((acc if acc is not None else x[0] * 0.0) + b)
                x = y
            elif kind == "square":
                x = [v.square() for v in x]
            elif kind == "poly":
                x = [poly_eval(v, arg) for v in x]
        return x

    def _run_single(self, x: Any) -> list[Any]:
        for kind, arg in self.steps:
            if kind == "mm":
                x = x.mm(arg)
            elif kind == "square":
                x = x.square()
            elif kind == "poly":
                x = poly_eval(x, arg)
        return [x]


class CKKSServerScheme:
    """The CKKS scheme as a worker sees it (:class:`~he_compute.schemes.base.ServerScheme`)."""

    name = "ckks"

    def check_server_part(self, manifest: dict[str, Any], sections: dict[str, bytes]) -> None:
        """Refuse a server part that is not a valid plan with plain numeric ``.npy`` weights and secure parameters."""
        params.validate(manifest.get("ckks", {}))
        check_sections(sections)

    def open_server(self, manifest: dict[str, Any], sections: dict[str, bytes]) -> CKKSServer:
        """The checked plan, its layers turned into matrices (workers cache it by server-part digest)."""
        params.validate(manifest.get("ckks", {}))
        return CKKSServer(manifest, sections)

    def check_result(self, manifest: dict[str, Any], sections: dict[str, bytes], payload: bytes,
                     n_samples: int) -> None:
        """Framing and sizes only: packing, one ciphertext per output (batch) or one (single), bounded sizes."""
        try:
            n_outputs = int(json.loads(sections["plan.json"])["output_shape"][0])
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise FormatError(f"plan.json names no output size ({exc}): re-compile the bundle") from exc
        check_output(payload, manifest["ckks"], n_outputs, n_samples)


SCHEME = CKKSServerScheme()
