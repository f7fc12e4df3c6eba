"""The client half of the bootstrapping CKKS engine (:mod:`.boot`): engine choice at compile, parameters,
key generation, encryption and decryption through the OpenFHE process (:mod:`.ofhe`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import FormatError, KeyMismatchError, warn
from . import kernels
from .boot import (ENGINE, FIRST_MOD_BITS, LEVEL_BUDGET, NO_SECURITY, SCALE_BITS, TEST_RING, _bundle_parts, build_steps, check_output,
                   check_params, insecure_allowed, op_levels, place_bootstraps)
from .payload import Payload, pack

# TenSEAL keeps every plan whose chain leaves at least this scale: the 6-hidden-layer ReLU MLP at depth 29
# got a 27-bit scale at N=32768, was accepted and failed every run ("result ciphertext is transparent").
MIN_SEAL_SCALE_BITS = 30


def wanted(engine: str, depth: int, int_bits: int) -> bool:
    """Whether a plan of ``depth`` goes to this engine: asked for, or more than one SEAL chain holds well."""
    from . import params
    from ...errors import InputError, UnsupportedModelError

    if engine not in ("auto", "tenseal", "bootstrap"):
        raise InputError(f"engine must be 'auto', 'tenseal' or 'bootstrap', not {engine!r}")
    if engine != "auto":
        return engine == "bootstrap"
    try:
        # The largest ring gives the largest scale a SEAL chain of this depth can have.
        largest = params.DEGREES[-1]
        return int(params.choose(depth, poly_modulus_degree=largest, int_bits=int_bits)["scale_bits"]) < MIN_SEAL_SCALE_BITS
    except UnsupportedModelError:
        return True


def choose(plan: dict[str, Any], weights: dict[str, np.ndarray], depth: int) -> dict[str, Any]:
    """The ``ckks`` manifest fields of this engine for ``plan``."""
    from .compiler import _block

    block = _block(plan)
    secure = not insecure_allowed()
    slots = max(2 * block, 256)
    levels = max(op_levels(layer) for layer in plan["layers"]) + 2
    openfhe = {"security": 128 if secure else 0, "ring_dim": 0 if secure else TEST_RING, "slots": slots,
               "scale_bits": SCALE_BITS, "first_mod_bits": FIRST_MOD_BITS[secure], "levels": levels, "level_budget": list(LEVEL_BUDGET),
               "secret": "sparse" if not secure else "uniform", "dnum": 3}
    steps = sorted({s for st in build_steps(plan, weights, block, slots) if st[0] == "diag"
                    for s in kernels.rotation_steps(list(st[2]), st[1], block)})
    return {"engine": ENGINE, "openfhe": openfhe, "security_level": 128 if secure else NO_SECURITY,
            "multiplicative_depth": depth, "packing": "single", "block": block, "slots": slots,
            "packing_reason": f"the bootstrapping engine packs samples in [x, x] blocks of {2 * block} slots",
            "samples_per_ciphertext": slots // (2 * block), "galois_keys": bool(steps), "galois_steps": steps,
            "relin_keys": True, "bootstraps_per_ciphertext": len(place_bootstraps(plan, levels)),
            "levels_after_bootstrap": levels}


class BootKeys:
    """Serialized client material (context and secret key) and the worker's public evaluation keys."""

    def __init__(self, secret: bytes, evaluation: bytes) -> None:
        self.secret, self.evaluation = secret, evaluation


class BootClient:
    """Encrypts and decrypts for one bootstrapping-engine bundle (through the OpenFHE process)."""

    def __init__(self, manifest: dict[str, Any], sections: dict[str, bytes], secret: bytes | None) -> None:
        from .client import CKKSClient

        self.ckks = dict(manifest["ckks"])
        self.p = check_params(self.ckks)
        self.seal = CKKSClient.__new__(CKKSClient)  # encoding and clipping only: no SEAL context is made
        self.seal.__dict__.update(_encoding(sections))
        self.slots, self.block = int(self.p["slots"]), int(self.ckks["block"])
        self._proc: Any = None
        self._secret = secret

    def _process(self) -> Any:
        from .ofhe import Process

        if self._proc is None:
            if self._secret is None:
                raise KeyMismatchError("no CKKS keys loaded: run hec keygen BUNDLE --keys DIR first")
            self._proc = Process()
            self._proc.call("open_client", {"params": self.p},
                            _bundle_parts(self._secret, ["context", "secret"], "the secret key file"))
        return self._proc

    def keygen(self) -> BootKeys:
        """A fresh secret key; relinearization, rotation and bootstrapping keys for the worker."""
        import shutil
        import tempfile
        from pathlib import Path

        from .ofhe import Process

        proc = Process()
        # The OpenFHE process writes the worker's keys (public) into a private directory of its own, not through
        # its pipe; the secret key comes back in the reply, never in a file outside the key directory.
        directory = tempfile.mkdtemp(prefix="hec-keygen-")
        try:
            _, (context, secret) = proc.call("keygen", {"params": self.p, "rotations": self.ckks["galois_steps"],
                                                        "dir": directory}, timeout=3600)
            parts = [context, *(Path(directory, name).read_bytes() for name in ("relin", "rotation"))]
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        self._proc, self._secret = proc, pack(Payload("keys", "single", 1, [context, secret],
                                                      {"parts": ["context", "secret"]}))
        evaluation = pack(Payload("keys", "single", 1, parts, {"parts": ["context", "relin", "rotation"],
                                                              "galois_steps": self.ckks["galois_steps"]}))
        del parts
        return BootKeys(self._secret, evaluation)

    def encrypt(self, X: np.ndarray) -> list[tuple[int, bytes]]:
        """``[x, x]`` blocks, ``slots / 2 block`` samples per ciphertext (padded with copies of real rows)."""
        from .client import _pad_rows

        flat = self.seal.clip_inputs(np.asarray(X, dtype=np.float64).reshape(len(X), -1))
        per = self.slots // (2 * self.block)
        flat = _pad_rows(flat, per)
        vecs = []
        for start in range(0, flat.shape[0], per):
            vec = np.zeros(self.slots)
            for b, row in enumerate(flat[start : start + per]):
                vec[2 * self.block * b : 2 * self.block * b + row.size] = row
                vec[2 * self.block * b + self.block : 2 * self.block * b + self.block + row.size] = row
            vecs.append(vec.tobytes())
        _, cts = self._process().call("encrypt", {}, vecs)
        return [(per, pack(Payload("input", "single", per, [ct]))) for ct in cts]

    def decrypt(self, payload: bytes, n_samples: int) -> np.ndarray:
        """One result chunk into ``(n_samples, n_outputs)``, post-processed."""
        from .client import _postprocess

        p = check_output(payload, self.ckks, n_samples)
        _, (vec,) = self._process().call("decrypt", {}, p.ciphertexts, timeout=60, error=FormatError)
        v = np.frombuffer(vec, dtype=np.float64)
        if v.size != self.slots or not np.all(np.isfinite(v)):
            raise FormatError("a result ciphertext did not decrypt to this model's slots")
        y = np.stack([v[2 * self.block * b : 2 * self.block * b + self.seal.n_out] for b in range(n_samples)])
        return _postprocess(self.seal.post, y)


def _encoding(sections: dict[str, bytes]) -> dict[str, Any]:
    import json

    try:
        enc = json.loads(sections["encoding.json"])
        clip = enc.get("input_clip")
        return {"n_out": int(enc["plan_outputs"]), "post": enc["postprocess"],
                "clip": None if clip is None else (np.asarray(clip[0], dtype=np.float64), np.asarray(clip[1], dtype=np.float64))}
    except (KeyError, ValueError, TypeError) as exc:
        raise FormatError(f"CKKS client part lacks a valid encoding.json ({exc}): re-compile the bundle") from exc




def bundle(model: Any, plan: dict[str, Any], weights: dict[str, np.ndarray], weight_sections: dict[str, bytes],
           info: dict[str, Any], task: str | None, onnx_ml: dict[str, Any], box: tuple[np.ndarray, np.ndarray]) -> Any:
    """The bundle of a plan compiled for this engine (the same plan, encoding, post-processing and input clip
    box, widened by the compiler's ``CLIP_MARGIN``, as SEAL's)."""
    import json

    from ...formats.bundle import Bundle
    from .. import library_versions
    from .._onnx import model_type
    from .._kind import decide
    from .compiler import CLIP_MARGIN
    from .plan import plan_depth

    ckks = choose(plan, weights, plan_depth(plan))
    n_out, post = plan["output_shape"][0], info["post"]
    warned = []
    if info["predicted_max_error"] > info["max_error"]:
        warned.append(f"predicted output error {info['predicted_max_error']:.3g} exceeds max_error "
                      f"{info['max_error']:g}: raise activation_degree or drop it to let max_error choose")
    for message in warned:
        warn(message, stacklevel=3)
    ckks |= {"postprocess": post, "activations": info["fits"], "max_error_target": info["max_error"],
             "input_clip_margin": CLIP_MARGIN, "predicted_max_error": info["predicted_max_error"],
             "calibration_max_error": info["calibration_max_error"],
             "worst_case_error_bound": info["worst_case_bound"], "warnings": warned}
    manifest = {"model_type": model_type(model), **decide(task, known=info["task"], n_outputs=n_out, final=post),
                "input_shape": plan["input_shape"], "input_dtype": "float64",
                "output_shape": [2] if post == "sigmoid2" else [n_out],
                "library_versions": {**library_versions(), "openfhe": "1.6.1 (its own CPython 3.10 environment)"},
                "security_level": ckks["security_level"], "ckks": ckks, **onnx_ml}
    encoding = {"plan_outputs": n_out, "postprocess": post, "input_clip": [box[0].tolist(), box[1].tolist()]}
    server = {"plan.json": json.dumps(plan, sort_keys=True).encode(), **weight_sections}
    return Bundle.create("ckks", manifest, {"encoding.json": json.dumps(encoding).encode()}, server)
