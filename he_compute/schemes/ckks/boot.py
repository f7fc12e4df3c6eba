"""The bootstrapping CKKS engine (OpenFHE): parameters, bootstrap placement, and its client and worker halves.

A plan deeper than one 128-bit modulus chain comfortably holds runs here instead of on SEAL: the same plan IR
(:mod:`.plan`), single packing (each sample a ``[x, x]`` block, diagonal-method linear layers, the rotation
steps of :func:`.kernels.rotation_steps`), and a bootstrap placed greedily where the next op needs more levels
than the ciphertext has left (for a chain of ops, the fewest bootstraps).  OpenFHE itself runs in a CPython
3.10 child (:mod:`.ofhe`).  The manifest's ``ckks.engine`` names the engine; ``ckks.openfhe`` holds its
parameters, re-checked by the worker: 128-bit (``HEStd_128_classic``, enforced by OpenFHE) unless the
test-only setting ``HEC_CKKS_INSECURE_TEST_PARAMS=1`` asks for a small ring without security.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Any

import numpy as np

from ... import settings
from ...errors import FormatError, KeyMismatchError, SecurityError, UnsafeArtifactError
from . import composite, kernels
from .payload import Payload, pack, unpack
from .plan import LINEAR_OPS, affine_matrix, check_sections, feature_groups

ENGINE = "openfhe-bootstrap"
TEST_RING = 1 << 12
LEVEL_BUDGET = (2, 2)
NO_SECURITY = "none (test parameters)"
SCALE_BITS = 50
# OpenFHE bootstraps only when the last prime exceeds the scale by at most its correction factor, which it
# derives from ring and slots: 7 to 9 at N=2**16 (below 9 past 256 slots), 11 at the test ring.  A 60-bit
# first prime over a 50-bit scale (10 bits) stops every 128-bit bootstrap ("Degree [10] must be less than or
# equal to the correction factor [9]"): secure parameters keep 7 bits above the scale, test rings 10.
FIRST_MOD_BITS = {True: SCALE_BITS + 7, False: 60}


def bootstrapping(manifest: dict[str, Any]) -> bool:
    """Whether a bundle names this engine instead of SEAL (TenSEAL bundles name none)."""
    ckks = manifest.get("ckks")
    return isinstance(ckks, dict) and ckks.get("engine") not in (None, "tenseal")


def insecure_allowed() -> bool:
    """Whether the test-only setting lets small rings without security through."""
    return bool(settings.get("HEC_CKKS_INSECURE_TEST_PARAMS") == "1")


def _poly_levels(degree: int) -> int:
    return max(1, math.ceil(math.log2(degree))) + 1 if degree > 1 else 1


def op_needs(layer: dict[str, Any]) -> list[tuple[int, int]]:
    """``(levels it needs left, levels it consumes)`` of each step one plan op becomes on this engine: a poly,
    its Chebyshev basis and one coefficient product; a composite ReLU, keeping its input ``x`` (one level
    left for the final product), each sign stage, then the product ``x q``."""
    if layer["op"] == "poly":
        n = _poly_levels(max(len(c) for c in layer["coeffs"]) - 1) + (1 if layer.get("domain") else 0)
        return [(n, n)]
    if layer["op"] == composite.OP:
        stages = [_poly_levels(len(c) - 1) for c in layer["stages"]]
        return [(1, 0), *((n, n) for n in stages), (1, 1)]
    return [(1, 1)] if layer["op"] in (*LINEAR_OPS, "square") else []


def op_levels(layer: dict[str, Any]) -> int:
    """The most levels one step of a plan op needs left (what a bootstrap must leave at least)."""
    return max((need for need, _ in op_needs(layer)), default=0)


def place_bootstraps(plan: dict[str, Any], levels: int) -> list[int]:
    """Indices of the layers at (or inside) which a ciphertext is bootstrapped, once per bootstrap (greedy: only
    when the next step does not fit)."""
    left, where = levels - 1, []  # one level is kept for the rescale that starts a bootstrap
    for i, layer in enumerate(plan["layers"]):
        for need, use in op_needs(layer):
            if need > left:
                where.append(i)
                left = levels - 1
            left -= use
    return where


def check_params(ckks: dict[str, Any]) -> dict[str, Any]:
    """This engine's parameters from a manifest, checked; refuse test rings unless the test setting allows them."""
    p = ckks.get("openfhe")
    keys = {"security", "ring_dim", "slots", "scale_bits", "first_mod_bits", "levels", "level_budget", "secret", "dnum"}
    if ckks.get("engine") != ENGINE or not isinstance(p, dict) or set(p) != keys:
        raise FormatError("the bootstrapping CKKS engine's parameters are missing or malformed: re-compile the bundle")
    ints = [p[k] for k in keys - {"level_budget", "secret"}]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints) or p["secret"] not in ("sparse", "uniform") \
            or not (isinstance(p["level_budget"], list) and len(p["level_budget"]) == 2
                    and all(isinstance(v, int) and 1 <= v <= 6 for v in p["level_budget"])):
        raise FormatError("the bootstrapping CKKS engine's parameters are malformed: re-compile the bundle")
    if p["slots"] < 8 or p["slots"] & (p["slots"] - 1) or p["slots"] > 1 << 15 or not 1 <= p["levels"] <= 40 \
            or not 20 <= p["scale_bits"] <= 59 or not p["scale_bits"] < p["first_mod_bits"] <= 60 or not 1 <= p["dnum"] <= 8:
        raise FormatError("the bootstrapping CKKS engine's parameters are out of range: re-compile the bundle")
    if p["security"] != 128:
        if not insecure_allowed():
            raise SecurityError("this bundle uses test parameters WITHOUT 128-bit security: refused (only "
                                "HEC_CKKS_INSECURE_TEST_PARAMS=1, for tests, allows them)")
        if p["security"] != 0 or p["ring_dim"] not in (1 << 12, 1 << 13) or p["slots"] > p["ring_dim"] // 2:
            raise FormatError("test parameters must use a ring of 2**12 or 2**13: re-compile the bundle")
    return p


def build_steps(plan: dict[str, Any], weights: dict[str, np.ndarray], block: int, slots: int) -> list[tuple]:
    """Single-packing steps (as :func:`.server.build_steps` makes them)."""
    from .server import build_steps as seal_steps

    return seal_steps(plan, weights, "single", block, slots)


# ---- the wire forms of the OpenFHE objects ------------------------------------------------------------------

def _bundle_parts(data: bytes, names: list[str], what: str) -> list[bytes]:
    p = unpack(data, role="keys")
    parts = p.extra.get("parts") if p.extra else None
    if parts != names:
        raise UnsafeArtifactError(f"{what} must hold exactly {names}, not {str(parts)[:80]}: re-run hec keygen")
    return p.ciphertexts


def key_files(data: bytes, directory: str) -> list[str]:
    """Write the evaluation keys' parts (context, relin, rotation) into ``directory`` (the worker's own,
    private) and return their paths: the OpenFHE process reads them from there, so gigabytes of keys are not
    copied through its pipe.  The parts are cut from a view of ``data``, whose container the caller verified
    against its sha256; the payload frame is checked here (its header, each length against what is left)."""
    from .payload import _LEN, _PREFIX, MAGIC, PAYLOAD_VERSION

    view = memoryview(data)
    names = ["context", "relin", "rotation"]
    try:
        magic, version, hlen = _PREFIX.unpack_from(data)
        header = json.loads(bytes(view[_PREFIX.size : _PREFIX.size + hlen]))
    except (ValueError, TypeError, struct.error) as exc:
        raise UnsafeArtifactError(f"the evaluation keys are not a key payload ({exc}): re-run hec keygen") from None
    if magic != MAGIC or version != PAYLOAD_VERSION or not isinstance(header, dict) or header.get("role") != "keys" \
            or header.get("parts") != names or header.get("n_ciphertexts") != len(names):
        raise UnsafeArtifactError(f"the evaluation keys must hold exactly {names}: re-run hec keygen")
    pos, paths = _PREFIX.size + hlen, []
    for name in names:
        if pos + _LEN.size > len(data) or pos + _LEN.size + _LEN.unpack_from(data, pos)[0] > len(data):
            raise UnsafeArtifactError("the evaluation keys are truncated: re-run hec keygen")
        (size,) = _LEN.unpack_from(data, pos)
        pos += _LEN.size
        path = os.path.join(directory, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(view[pos : pos + size])
        paths.append(path)
        pos += size
    if pos != len(data):
        raise UnsafeArtifactError("the evaluation keys have trailing bytes: re-run hec keygen")
    return paths


def max_ciphertext_bytes(p: dict[str, Any]) -> int:
    """A bound on one serialized ciphertext: two polynomials of N 8-byte coefficients per prime, plus framing."""
    ring = p["ring_dim"] or 1 << 17
    return 2 * ring * (p["levels"] + 20) * 8 + (1 << 16)


def check_output(data: bytes, ckks: dict[str, Any], n_samples: int) -> Payload:
    """Frame-check a result payload: one single-packed ciphertext of bounded size for ``n_samples``."""
    p = unpack(data, role="output")
    if p.packing != "single" or p.n_samples != n_samples or len(p.ciphertexts) != 1 \
            or not 0 < len(p.ciphertexts[0]) <= max_ciphertext_bytes(ckks["openfhe"]):
        raise FormatError(f"a result chunk must be one single-packed ciphertext for {n_samples} samples")
    return p


class BootServer:
    """Evaluates one plan in the OpenFHE process (started here, while the sandbox still allows exec)."""

    def __init__(self, manifest: dict[str, Any], sections: dict[str, bytes]) -> None:
        from .ofhe import Process

        self.plan, weights = check_sections(sections)
        self.ckks = manifest["ckks"]
        self.p = check_params(self.ckks)
        self.block, self.slots = int(self.ckks["block"]), int(self.p["slots"])
        widest = max(int(np.prod(la[k])) for la in self.plan["layers"] for k in ("in_shape", "out_shape"))
        if self.block < widest or self.block & (self.block - 1) or 2 * self.block > self.slots:
            raise FormatError("single packing needs a power-of-two block holding every layer, twice per ciphertext")
        steps, vecs = self._wire_steps(weights)
        self.galois_steps = sorted({s for st in build_steps(self.plan, weights, self.block, self.slots) if st[0] == "diag"
                                    for s in kernels.rotation_steps(list(st[2]), st[1], self.block)})
        self.proc = Process()
        self.steps, self.vecs = steps, vecs
        self.bootstraps = 0

    def _wire_steps(self, weights: dict[str, np.ndarray]) -> tuple[list[Any], list[bytes]]:
        from .server import block_vector

        vecs: list[bytes] = []

        def add(v: np.ndarray) -> int:
            vecs.append(np.ascontiguousarray(v, dtype=np.float64).tobytes())
            return len(vecs) - 1

        steps: list[Any] = []
        for layer in self.plan["layers"]:
            if layer["op"] in LINEAR_OPS:
                matrix, bias = affine_matrix(layer, weights)
                n1, plain = kernels.diagonals(matrix, self.block, self.slots)
                steps.append(["linear", self.block, n1, [[g, j, add(v)] for (g, j), v in sorted(plain.items())],
                              add(block_vector(bias, self.block, self.slots))])
            elif layer["op"] == "square":
                steps.append(["square"])
            elif layer["op"] == "poly":
                groups = feature_groups(layer)
                d = max(len(c) for c in layer["coeffs"])
                coeffs = np.zeros((d, len(layer["coeffs"])))
                for g, c in enumerate(layer["coeffs"]):
                    coeffs[: len(c), g] = c
                rows = [add(block_vector(row[groups], self.block, self.slots)) for row in coeffs]
                dom = None
                if layer.get("domain"):
                    dm = np.asarray(layer["domain"])
                    dom = [add(block_vector((1.0 / dm[:, 1])[groups], self.block, self.slots)),
                           add(block_vector((-dm[:, 0] / dm[:, 1])[groups], self.block, self.slots))]
                steps.append(["poly", rows, dom])
            elif layer["op"] == composite.OP:
                # x q(p_(K-1)(... p_1(x))): shared stages as constant slot vectors, out_scale folded into the
                # last; the child keeps x for the final product and bootstraps between stages as levels run out.
                groups = feature_groups(layer)
                last = np.outer(layer["stages"][-1], layer["out_scale"])[:, groups]
                stages = [np.outer(c, np.ones(groups.size)) for c in layer["stages"][:-1]] + [last]
                steps.append(["keep"])
                steps += [["poly", [add(block_vector(row, self.block, self.slots)) for row in st], None] for st in stages]
                steps.append(["times_kept"])
        return steps, vecs

    def load_keys(self, evaluation: bytes) -> Any:
        """Hand the context and public keys to the OpenFHE process, which checks their parameters; only one
        key set is live per process (a different one is loaded again)."""
        import shutil
        import tempfile

        # A directory of this process's own (the sandbox's private temporary directory on a worker), gone
        # once the OpenFHE process has read the keys.
        directory = tempfile.mkdtemp(prefix="hec-keys-")
        try:
            paths = key_files(evaluation, directory)
            info, _ = self.proc.call("open_worker", {"params": self.p, "insecure_ok": insecure_allowed(),
                                                     "paths": paths}, timeout=3600, error=KeyMismatchError)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        self.proc.call("plan", {"steps": self.steps}, self.vecs, timeout=600)
        return info

    def evaluate(self, payload: bytes, keys: Any) -> bytes:
        """Run the plan on one encrypted chunk, bootstrapping where needed; return the encrypted result."""
        p = unpack(payload, role="input")
        capacity = self.slots // (2 * self.block)
        if p.packing != "single" or len(p.ciphertexts) != 1 or p.n_samples > capacity:
            raise FormatError(f"this model takes one single-packed ciphertext of at most {capacity} samples")
        if len(p.ciphertexts[0]) > max_ciphertext_bytes(self.p):
            raise FormatError("the input ciphertext is larger than these parameters allow")
        reply, out = self.proc.call("eval", {}, p.ciphertexts, error=FormatError)
        self.bootstraps = int(reply.get("bootstraps", 0))
        return pack(Payload("output", "single", p.n_samples, out))
