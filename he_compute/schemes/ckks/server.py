"""Worker side of the CKKS scheme: run a checked plan on ciphertexts with evaluation keys only.

Every linear op becomes, once per bundle, its matrix (sizes bounded by
:mod:`.limits` before anything is allocated).  Batch packing holds one
ciphertext per feature (samples across slots): a linear op is a plaintext
multiply-accumulate with one rescale per output and no rotation.  Single
packing holds up to ``slots / 2n`` samples per ciphertext in ``[x, x]`` blocks:
a linear op is the diagonal method with baby-step/giant-step rotations, whose
Galois keys are generated for exactly the steps the plan needs.

Only SEAL errors known to mean "these keys or ciphertexts do not fit" become
:class:`KeyMismatchError` / :class:`FormatError`; anything else propagates as is.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ...errors import FormatError, KeyMismatchError, UnsafeArtifactError
from . import composite, kernels, params
from .payload import Payload, check_output, pack, unpack
from .plan import LINEAR_OPS, affine_matrix, check_sections, feature_groups, needs_relin, one_product, plan_depth
from .boot import bootstrapping as _bootstrapping
from .seal import Engine, load

# SEAL's messages for keys that lack a rotation or do not belong to these parameters.
_KEY_ERRORS = ("galois key not present", "relinearization keys", "not valid for encryption parameters", "keys is empty")


def build_steps(plan: dict[str, Any], weights: dict[str, np.ndarray], packing: str, block: int, slots: int) -> list[tuple]:
    """The evaluation steps of a plan for one packing (matrices, pre-rotated diagonals, coefficient rows)."""
    steps: list[tuple] = []
    for layer in plan["layers"]:
        op = layer["op"]
        if op in LINEAR_OPS:
            matrix, bias = affine_matrix(layer, weights)
            if packing == "batch":
                steps.append(("linear", matrix, bias))
            else:
                n1, plain = kernels.diagonals(matrix, block, slots)
                steps.append(("diag", n1, plain, block_vector(np.r_[bias, np.zeros(block - bias.size)], block, slots)))
        elif op == "square":
            steps.append(("square",))
        elif op == "poly":
            groups = feature_groups(layer)
            coeffs = np.zeros((max(len(c) for c in layer["coeffs"]), len(layer["coeffs"])))
            for g, c in enumerate(layer["coeffs"]):
                coeffs[: len(c), g] = c
            dom = np.asarray(layer["domain"]) if layer.get("domain") else None
            dom = None if dom is None else np.stack([1.0 / dom[:, 1], -dom[:, 0] / dom[:, 1]])
            if packing == "batch":  # per feature: coefficient column of its group
                steps.append(("poly", coeffs, groups, dom))
            else:  # one slot vector per coefficient: every feature gets its group's value
                steps.append(("poly", coeffs[:, groups], None, None if dom is None else dom[:, groups]))
        elif op == composite.OP:
            shared = [np.asarray(c, dtype=np.float64)[:, None] for c in layer["stages"][:-1]]
            last = np.outer(layer["stages"][-1], layer["out_scale"])  # out_scale folded into the last stage
            groups = feature_groups(layer)
            steps.append(("composite", shared, last, groups) if packing == "batch" else
                         ("composite", shared, last[:, groups], None))
    return steps


def block_vector(values: np.ndarray, block: int, slots: int) -> np.ndarray:
    """Per-feature values laid out in every ``[v, v]`` block of a single-packed ciphertext."""
    vec = np.zeros(slots)
    v = np.r_[values, np.zeros(block - values.size)][:block]
    for b in range(slots // (2 * block)):
        vec[2 * block * b : 2 * block * (b + 1)] = np.r_[v, v]
    return vec


def run(eng: Any, steps: list[tuple], xs: list[Any], keys: Any, packing: str, block: int = 0, slots: int = 0) -> list[Any]:
    """Apply the steps to the input ciphertexts (works on :class:`.seal.Engine` and :class:`.opcount.Counter`)."""
    relin, galois = keys
    for i, step in enumerate(steps):
        kind = step[0]
        # Products feeding a batch linear layer stay unrelinearized: it relinearizes once per output.
        lazy = i + 1 < len(steps) and steps[i + 1][0] == "linear" and relin is not None
        if kind == "linear":
            xs = kernels.linear_batch(eng, xs, step[1], step[2], relin)
        elif kind == "diag":
            xs = [kernels.linear_single(eng, xs[0], block, step[1], step[2], step[3], galois)]
        elif kind == "square":
            xs = [eng.mul(x, x, None if lazy else relin) for x in xs]
        elif kind == "poly":
            coeffs, groups, dom = step[1:]
            if packing == "batch":
                xs = [kernels.poly(eng, x, coeffs[:, [groups[f]]], relin, lambda row: float(row[0]),
                                   None if dom is None else (float(dom[0, groups[f]]), float(dom[1, groups[f]])), lazy)
                      for f, x in enumerate(xs)]
            else:
                def expand(row: np.ndarray) -> np.ndarray:
                    return block_vector(row, block, slots)

                xs = [kernels.poly(eng, xs[0], coeffs, relin, expand,
                                   None if dom is None else (expand(dom[0]), expand(dom[1])))]
        elif kind == "composite":
            shared, last, groups = step[1:]
            if packing == "batch":
                xs = [kernels.composite_relu(eng, x, shared, last[:, [groups[f]]], relin, lambda row: float(row[0]), lazy)
                      for f, x in enumerate(xs)]
            else:
                xs = [kernels.composite_relu(eng, xs[0], shared, last, relin,
                                             lambda row: block_vector(row, block, slots))]
    return [eng.relinearize(x, relin) for x in xs] if relin is not None else xs


class CKKSServer:
    """Evaluates one plan; build once per bundle and reuse it."""

    def __init__(self, manifest: dict[str, Any], sections: dict[str, bytes]):
        self.plan, weights = check_sections(sections)
        self.ckks = manifest["ckks"]
        params.validate(self.ckks)
        if plan_depth(self.plan) != int(self.ckks["multiplicative_depth"]):
            raise FormatError("the plan's depth differs from the manifest's: re-compile the bundle")
        self.packing = self.ckks["packing"]
        if self.packing not in ("batch", "single"):
            raise FormatError(f"unknown CKKS packing {self.packing!r}: re-compile the bundle")
        if len(self.ckks["coeff_mod_bit_sizes"]) == 1 and not one_product(self.plan):
            raise FormatError("a one-prime chain holds only a linear model's one product: re-compile the bundle")
        self.slots = int(self.ckks["poly_modulus_degree"]) // 2
        self.n_in = int(np.prod(self.plan["input_shape"]))
        self.block = int(self.ckks.get("block", 0))
        if self.packing == "single" and (self.block < 1 or self.block & (self.block - 1) or 2 * self.block > self.slots
                                         or any(int(np.prod(la["out_shape"])) > self.block for la in self.plan["layers"])
                                         or self.n_in > self.block):
            raise FormatError("single packing needs a power-of-two block holding every layer, twice per ciphertext")
        self.steps = build_steps(self.plan, weights, self.packing, self.block, self.slots)
        self.galois_steps = sorted({s for step in self.steps if step[0] == "diag"
                                    for s in kernels.rotation_steps(list(step[2]), step[1], self.block)})
        self.needs_relin = needs_relin(self.plan)
        self.engine = Engine(self.ckks)

    def load_keys(self, evaluation: bytes) -> Any:
        """Parse the evaluation keys; refuse any part other than relinearization and Galois keys."""
        p = unpack(evaluation, role="keys")
        parts = p.extra.get("parts") if p.extra else None
        if not isinstance(parts, list) or len(parts) != len(p.ciphertexts) or not set(parts) <= {"relin", "galois"}:
            raise UnsafeArtifactError("CKKS evaluation keys hold parts other than relin/galois keys: re-run hec keygen")
        blobs = dict(zip(parts, p.ciphertexts))
        relin = load("RelinKeys", self.engine.context, blobs["relin"], "relinearization keys") if "relin" in blobs else None
        galois = load("GaloisKeys", self.engine.context, blobs["galois"], "Galois keys") if "galois" in blobs else None
        if self.needs_relin and relin is None:
            raise KeyMismatchError("the evaluation keys lack relinearization keys this model needs: re-run hec keygen")
        missing = [s for s in self.galois_steps if galois is None or not galois.has_key(_elt(s, self.engine.n))]
        if missing:
            raise KeyMismatchError(f"the evaluation keys lack rotations {missing[:5]} this model needs: re-run hec keygen")
        return relin, galois

    def evaluate(self, payload: bytes, keys: Any) -> bytes:
        """Run the plan on one encrypted chunk; return the encrypted outputs."""
        p = unpack(payload, role="input")
        expected = 1 if self.packing == "single" else self.n_in
        capacity = self.slots if self.packing == "batch" else self.slots // (2 * self.block)
        if p.packing != self.packing or len(p.ciphertexts) != expected or p.n_samples > capacity:
            raise FormatError(f"this model takes {self.packing}-packed input of {expected} ciphertext(s) and at most "
                              f"{capacity} samples, got {p.packing} with {len(p.ciphertexts)} and {p.n_samples}")
        cts = [self.engine.ciphertext(ct, "input ciphertext") for ct in p.ciphertexts]
        if any(self.engine.level(ct) != 0 for ct in cts):
            raise FormatError("input ciphertexts are not fresh (top level): re-encrypt the input")
        try:
            out = run(self.engine, self.steps, cts, keys, self.packing, self.block, self.slots)
        except ValueError as exc:
            if any(m in str(exc).lower() for m in _KEY_ERRORS):
                raise KeyMismatchError(f"the evaluation keys do not fit this model: {exc}") from exc
            raise
        from .seal import dump

        return pack(Payload("output", self.packing, p.n_samples, [dump(ct) for ct in out]))


def _elt(step: int, n: int) -> int:
    from .seal import galois_elt

    return galois_elt(step, n)


class CKKSServerScheme:
    """The CKKS scheme as a worker sees it (:class:`~he_compute.schemes.base.ServerScheme`)."""

    name = "ckks"

    def check_server_part(self, manifest: dict[str, Any], sections: dict[str, bytes]) -> None:
        """Refuse a server part that is not a valid plan with plain numeric ``.npy`` weights and secure parameters."""
        if _bootstrapping(manifest):
            from .boot import check_params

            check_params(manifest["ckks"])
            check_sections(sections)
            return
        params.validate(manifest.get("ckks", {}))
        check_sections(sections)

    def open_server(self, manifest: dict[str, Any], sections: dict[str, bytes]) -> CKKSServer:
        """The checked plan, its layers turned into kernels (workers cache it by server-part digest)."""
        if _bootstrapping(manifest):
            from .boot import BootServer

            return BootServer(manifest, sections)  # type: ignore[return-value]
        params.validate(manifest.get("ckks", {}))
        return CKKSServer(manifest, sections)

    def check_result(self, manifest: dict[str, Any], sections: dict[str, bytes], payload: bytes,
                     n_samples: int) -> None:
        """Framing and sizes only: packing, one ciphertext per output (batch) or one (single), bounded sizes."""
        try:
            n_outputs = int(json.loads(sections["plan.json"])["output_shape"][0])
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise FormatError(f"plan.json names no output size ({exc}): re-compile the bundle") from exc
        if _bootstrapping(manifest):
            from .boot import check_output as boot_check

            boot_check(payload, manifest["ckks"], n_samples)
            return
        check_output(payload, manifest["ckks"], n_outputs, n_samples)


SCHEME = CKKSServerScheme()
