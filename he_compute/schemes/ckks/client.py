"""Client side of the CKKS scheme: key generation, encryption, decryption, post-processing.

The secret context is TenSEAL's serialized context *with* its secret key; the
evaluation context is the same context serialized with ``save_secret_key=False``
(the public key stays: TenSEAL's vector-matrix product encrypts zeros), holding the
relinearization keys and, for single packing only, the Galois keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import FormatError, KeyMismatchError
from ...formats.bundle import Bundle
from . import params
from .payload import Payload, check_output, pack, unpack


@dataclass
class CKKSKeys:
    """Serialized secret context and shareable evaluation context."""

    secret: bytes
    evaluation: bytes


def _postprocess(kind: str | None, y: np.ndarray) -> np.ndarray:
    """Exact output activations, applied in the clear after decryption."""
    if kind == "sigmoid":
        return 1.0 / (1.0 + np.exp(-y))
    if kind == "sigmoid2":
        p = 1.0 / (1.0 + np.exp(-y[:, :1]))
        return np.concatenate([1.0 - p, p], axis=1)
    if kind == "softmax":
        e = np.exp(y - y.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return y


class CKKSClient:
    """Encrypts and decrypts for one bundle; holds the secret context once keys exist."""

    def __init__(self, manifest: dict[str, Any], sections: dict[str, bytes], secret: bytes | None):
        self.ckks = dict(manifest["ckks"])
        params.validate(self.ckks)
        try:
            encoding = json.loads(sections["encoding.json"])
            self.n_out, self.post = int(encoding["plan_outputs"]), encoding["postprocess"]
        except (KeyError, ValueError, TypeError) as exc:
            raise FormatError(f"CKKS client part lacks a valid encoding.json ({exc}): re-compile the bundle") from exc
        self.packing = self.ckks["packing"]
        self.slots = int(self.ckks["slots"])
        self._ctx: Any = None
        if secret is not None:
            import tenseal as ts

            try:
                self._ctx = ts.context_from(secret)
            except Exception as exc:  # TenSEAL raises ValueError/RuntimeError on bad protobufs
                raise FormatError(f"secret CKKS context is unreadable: {exc}") from exc
            if not self._ctx.is_private():
                raise KeyMismatchError("the secret key file holds no CKKS secret key: run hec keygen again")

    def keygen(self) -> CKKSKeys:
        """A fresh context; the secret copy keeps only what encrypting and decrypting need."""
        ctx = params.make_context(self.ckks, galois=bool(self.ckks["galois_keys"]))
        self._ctx = ctx
        secret = ctx.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)
        evaluation = ctx.serialize(save_public_key=True, save_secret_key=False,
                                   save_galois_keys=bool(self.ckks["galois_keys"]), save_relin_keys=True)
        return CKKSKeys(secret=secret, evaluation=evaluation)

    def _context(self) -> Any:
        if self._ctx is None:
            raise KeyMismatchError("no CKKS keys loaded: run hec keygen BUNDLE --keys DIR first")
        return self._ctx

    def encrypt(self, X: np.ndarray) -> list[tuple[int, bytes]]:
        """Batch: one ciphertext per feature over up to ``slots`` samples; single: one per sample."""
        import tenseal as ts

        ctx = self._context()
        flat = np.asarray(X, dtype=np.float64).reshape(X.shape[0], -1)
        if self.packing == "single":
            # The trailing 1.0 is the constant slot that carries biases (see server.homogeneous).
            return [(1, pack(Payload("input", "single", 1, [ts.ckks_vector(ctx, [*row.tolist(), 1.0]).serialize()])))
                    for row in flat]
        chunks = []
        for start in range(0, flat.shape[0], self.slots):
            part = flat[start : start + self.slots]
            cts = [ts.ckks_vector(ctx, part[:, j].tolist()).serialize() for j in range(part.shape[1])]
            chunks.append((part.shape[0], pack(Payload("input", "batch", part.shape[0], cts))))
        return chunks

    def decrypt(self, payload: bytes, n_samples: int) -> np.ndarray:
        """Decrypt one result chunk into ``(n_samples, n_outputs)`` float64, post-processed."""
        import tenseal as ts

        ctx = self._context()
        p = check_output(payload, self.ckks, self.n_out, n_samples)  # sizes first: TenSEAL parses only then
        try:
            vectors = [np.asarray(ts.ckks_vector_from(ctx, ct).decrypt(), dtype=np.float64) for ct in p.ciphertexts]
        except Exception as exc:
            raise FormatError(f"result ciphertext is unreadable or was made with other keys: {exc}") from exc
        if self.packing == "single":
            if len(vectors) != 1 or vectors[0].size < self.n_out:
                raise FormatError("single-packed result must be one ciphertext holding every output")
            y = vectors[0][: self.n_out].reshape(1, -1)
        else:
            if len(vectors) != self.n_out or any(v.size < n_samples for v in vectors):
                raise FormatError(f"batch result must hold {self.n_out} ciphertexts of {n_samples} samples")
            y = np.stack([v[:n_samples] for v in vectors], axis=1)
        return _postprocess(self.post, y)


class CKKSClientScheme:
    """The CKKS scheme as the data owner sees it (:class:`~he_compute.schemes.base.ClientScheme`)."""

    name = "ckks"

    def compile(self, model: Any, X_calib: np.ndarray, **options: Any) -> Bundle:
        """Compile a torch module, ONNX graph or scikit-learn linear model into a CKKS bundle."""
        from .compiler import compile as _compile

        return _compile(model, X_calib, **options)

    def open_client(self, manifest: dict[str, Any], sections: dict[str, bytes], secret: bytes | None) -> CKKSClient:
        """Encoding, post-processing and (if given) the secret context."""
        return CKKSClient(manifest, sections, secret)

    def rerandomize(self, evaluation: bytes, payload: bytes) -> bytes:
        """Add a fresh encryption of zero (public key from the evaluation context) to every ciphertext."""
        import tenseal as ts

        try:
            ctx = ts.context_from(evaluation)
        except Exception as exc:  # TenSEAL raises ValueError/RuntimeError on bad protobufs
            raise FormatError(f"CKKS evaluation keys are unreadable: {exc}") from exc
        p = unpack(payload, role="input")
        fresh = []
        for ct in p.ciphertexts:
            vec = ts.ckks_vector_from(ctx, ct)
            fresh.append((vec + ts.ckks_vector(ctx, [0.0] * vec.size())).serialize())
        return pack(Payload("input", p.packing, p.n_samples, fresh))


SCHEME = CKKSClientScheme()
