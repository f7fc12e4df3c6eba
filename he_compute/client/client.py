"""The client role: the only party that holds secret keys.

:class:`Client` wraps a key directory (:mod:`.keys`).  It encrypts inputs into
a ``ciphertexts`` container and decrypts ``results`` containers.  Workers never
import this package (an import contract in the tests checks it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import schemes
from ..errors import FormatError, KeyMismatchError
from ..formats import container
from ..formats.bundle import Bundle, read_bundle
from ..formats.ciphertexts import chunk_name
from ..formats.container import Container
from ..schemes._onnx_ml import preprocess
from ..schemes.base import ClientBackend
from . import bounded, keys, registry
from .data import validate_input

Progress = Callable[[int], None]


def load_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Read and verify the bundle at ``path``, its server part checked by its scheme; never unpickles anything."""
    bundle = read_bundle(path)
    schemes.server(bundle.scheme).check_server_part(bundle.manifest, bundle.server)
    return bundle


class Client:
    """Encrypts and decrypts with the keys in ``keys_dir``."""

    def __init__(self, keys_dir: str | os.PathLike[str]):
        self.keys_dir = Path(keys_dir)
        self.info = keys.read_info(self.keys_dir)
        part = container.read(self.keys_dir / keys.CLIENT, expect="client")
        if part.meta.get("model_id") != self.info.model_id:
            raise KeyMismatchError(f"{self.keys_dir}: client part and keys belong to different models")
        self.manifest: dict[str, Any] = part.meta
        secret = keys.read_secret(self.keys_dir, self.info)
        self._backend: ClientBackend = schemes.client(self.info.scheme).open_client(part.meta, part.sections, secret)

    @classmethod
    def keygen(cls, bundle: Bundle, keys_dir: str | os.PathLike[str], *, force: bool = False,
               register: bool = True) -> Client:
        """Generate keys for ``bundle`` into a new private directory and return a client on them.

        The directory also keeps the bundle's server part, and (with ``register``) is recorded by key id
        in the user's registry, so ``hec run`` and ``hec decrypt`` find it from a ciphertext alone.
        """
        path = keys.prepare(keys_dir, force=force)
        part = bundle.client_part()
        backend = schemes.client(bundle.scheme).open_client(bundle.manifest, part.sections, None)
        material = backend.keygen()
        info = keys.write(path, bundle.scheme, bundle.model_id, part, material.secret, material.evaluation,
                          bundle.server_part())
        if register:
            registry.remember(path, info)
        return cls(path)

    @property
    def model_id(self) -> str:
        """The model these keys were made for."""
        return self.info.model_id

    @property
    def key_id(self) -> str:
        """sha256 of the evaluation keys."""
        return self.info.key_id

    @property
    def evaluation_keys_path(self) -> Path:
        """The shareable evaluation-key file inside the key directory."""
        return self.keys_dir / keys.EVALUATION

    def check_bundle(self, bundle: Bundle) -> None:
        """Raise unless these keys were generated for ``bundle``."""
        if bundle.model_id != self.model_id:
            raise KeyMismatchError(
                f"keys in {self.keys_dir} were made for model {self.model_id[:12]}, not {bundle.model_id[:12]}: "
                f"run hec keygen BUNDLE --keys NEW_DIR"
            )

    def encrypt(self, X: Any, *, source: str = "input", progress: Progress | None = None) -> Container:
        """Validate and encrypt samples (rows of ``X``) into a ``ciphertexts`` container."""
        arr = preprocess(validate_input(X, self.manifest["input_shape"], source), self.manifest)
        sections: dict[str, bytes] = {}
        counts: list[int] = []
        done = 0
        for i, (count, payload) in enumerate(self._backend.encrypt(arr)):
            sections[chunk_name(i)] = payload
            counts.append(count)  # samples in the chunk, padding included: every chunk of a scheme has one size
            if progress:
                progress(min(count, arr.shape[0] - done))
            done += count
        meta = {
            "model_id": self.model_id,
            "key_id": self.key_id,
            "n_samples": int(arr.shape[0]),
            "chunks": counts,
            "input_shape": list(self.manifest["input_shape"]),
            "output_shape": list(self.manifest["output_shape"]),
        }
        return Container("ciphertexts", self.info.scheme, meta, sections)

    def decrypt(self, results: Container, *, progress: Progress | None = None) -> np.ndarray:
        """Decrypt a ``results`` container into ``(n_samples, n_outputs)`` model outputs."""
        if results.kind != "results":
            raise FormatError(f"expected an encrypted result, got a {results.kind} file")
        meta = results.meta
        if meta.get("model_id") != self.model_id or meta.get("key_id") != self.key_id:
            raise KeyMismatchError(
                f"this result was computed for model {str(meta.get('model_id'))[:12]} / key "
                f"{str(meta.get('key_id'))[:12]}; the keys in {self.keys_dir} cannot decrypt it"
            )
        counts = [int(c) for c in meta["chunks"]]
        n_samples = int(meta["n_samples"])
        if not 0 < n_samples <= sum(counts):
            raise FormatError(f"this result says it holds {n_samples} samples in chunks of {sum(counts)}")
        payloads = []
        for i in range(len(counts)):
            payload = results.sections.get(chunk_name(i))
            if payload is None:
                raise FormatError(f"result lacks {chunk_name(i)}")
            payloads.append(payload)

        def work(report: Progress) -> np.ndarray:
            outputs, done = [], 0
            for i, (payload, count) in enumerate(zip(payloads, counts)):
                try:
                    outputs.append(self._backend.decrypt(payload, count))
                except FormatError as exc:
                    raise FormatError(f"{chunk_name(i)}: {exc}") from None
                report(min(count, n_samples - done))
                done += count
            return np.concatenate(outputs, axis=0)[:n_samples]  # the last chunk's padding dropped

        # One child for the whole result: its bytes came from workers (see .bounded).
        return bounded.run_bounded(work, what="the result", max_values=self._max_values(sum(counts)),
                                   deadline_s=bounded.timeout_s() + bounded.PER_CHUNK_S * len(counts),
                                   progress=progress)

    def decrypt_chunk(self, payload: bytes, n_samples: int) -> np.ndarray:
        """Decrypt one result chunk a worker made (size-checked by the scheme before it is parsed), in a
        child bounded in time and output (see :mod:`.bounded`)."""
        n = int(n_samples)
        return bounded.run_bounded(lambda report: self._backend.decrypt(payload, n), what="a result chunk",
                                   max_values=self._max_values(n), deadline_s=bounded.timeout_s())

    def _max_values(self, n_samples: int) -> int:
        """The most floats ``n_samples`` decrypted samples can hold (outputs per sample, with room to spare)."""
        per = int(np.prod(self.manifest.get("output_shape") or [1]))
        return max(1, n_samples) * max(1, per) * 4

    @property
    def agreement_tolerance(self) -> float:
        """How far two honest evaluations' decrypted outputs may differ, relative to ``1 + |y|``.

        TFHE is exact: honest replicas decrypt to the same quantized values whatever their threads or
        hardware.  CKKS is approximate: the bound is half the scale's bits, well above the rounding noise
        of honest evaluations and far below any change that moves a prediction.
        """
        if self.info.scheme != "ckks":
            return 0.0
        scale_bits = int(self.manifest.get("ckks", {}).get("scale_bits", 40))
        return 2.0 ** -(scale_bits // 2)
