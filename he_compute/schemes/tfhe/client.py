"""Client side of the TFHE scheme: quantize, encrypt, decrypt, de-quantize, post-process.

It follows Concrete ML's ``FHEModelClient`` step for step, but rebuilds the
model from checked plain JSON instead of skops/pickle, and keeps the keyset
in memory so that :mod:`he_compute.keys` decides where it is stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import FormatError, UnsafeArtifactError, UnsupportedModelError, clipped_message, warn
from ...formats.bundle import Bundle
from .._quiet import import_torch_quietly
from .artifacts import check_processing, check_result_size


@dataclass
class TFHEKeys:
    """Secret keyset and shareable evaluation keys, both serialized."""

    secret: bytes
    evaluation: bytes


def _allowed_model_classes() -> dict[str, type]:
    import_torch_quietly()
    from concrete.ml.quantization import QuantizedModule
    from concrete.ml.sklearn import _get_sklearn_all_models

    classes = [*_get_sklearn_all_models(), QuantizedModule]
    return {f"{c.__module__}.{c.__name__}": c for c in classes}


def build_model(processing_json: bytes) -> Any:
    """Recreate the Concrete ML pre/post-processing object from the checked processing JSON."""
    import_torch_quietly()
    from concrete.ml.common.serialization.loaders import loads

    processing = json.loads(processing_json)
    check_processing(processing)
    cls = _allowed_model_classes().get(processing.pop("model_class", ""))
    if cls is None:
        raise UnsafeArtifactError("processing.json names a model class that is not a Concrete ML model")
    if processing.get("ciphertext_format") not in (None, "concrete"):
        raise FormatError(f"ciphertext format {processing.get('ciphertext_format')!r} is not supported: only Concrete's own")
    loaded = loads(json.dumps(processing))
    model = cls()
    model.input_quantizers = loaded["input_quantizers"]
    model.output_quantizers = loaded["output_quantizers"]
    if "is_fitted" in loaded:
        model._is_fitted = loaded["is_fitted"]
    model.post_processing_params = loaded["model_post_processing_params"]
    return model


def secret_keys_only(specs_json: bytes, keyset: Any) -> bytes:
    """Serialize a keyset holding the LWE secret keys of ``keyset`` and none of its evaluation keys.

    Concrete's ``Keys.serialize`` writes the secret keys *and* the bootstrap and keyswitch keys, which
    are the evaluation keys again (178 MB for a small CNN), so every encrypt and decrypt read them all.
    Encryption and decryption need only the secret keys: a keyset is made for the same circuit with its
    bootstrap and keyswitch keys left out of the key description, seeded with the existing secret keys.
    """
    from concrete import fhe
    from concrete.compiler import Keyset

    specs = json.loads(specs_json)
    described = specs["keyset"]["lweSecretKeys"]
    secret = keyset.get_client_keys().get_secret_keys()
    dims = [int(k["params"]["lweDimension"]) for k in described]
    if len(secret) != len(described) or [int(k.param.dimension()) for k in secret] != dims:
        raise FormatError("the generated secret keys do not match the circuit's key description: re-compile")
    specs["keyset"] = {**specs["keyset"], "lweBootstrapKeys": [], "lweKeyswitchKeys": [], "packingKeyswitchKeys": []}
    info = fhe.ClientSpecs.deserialize(json.dumps(specs).encode()).program_info
    initial = {int(k["id"]): key for k, key in zip(described, secret)}
    return bytes(Keyset(info, None, initial_lwe_secret_keys=initial).serialize())


def saturated_cells(model: Any, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (rows, features) of ``X`` that the model's input quantizers saturate: values more than half a
    quantization step outside what the quantized input can represent, which all encrypt as its end."""
    quantizers = list(getattr(model, "input_quantizers", None) or [])
    flat = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    q = np.asarray(model.quantize_input(X)).reshape(len(X), -1)
    if len(quantizers) == 1:  # one quantizer for the whole input tensor (linear models, torch/ONNX)
        back, step = np.asarray(quantizers[0].dequant(q), dtype=np.float64), np.asarray(quantizers[0].scale)
    elif len(quantizers) == flat.shape[1]:  # one per feature (trees)
        back = np.stack([np.asarray(qz.dequant(q[:, j]), dtype=np.float64) for j, qz in enumerate(quantizers)], 1)
        step = np.array([float(np.asarray(qz.scale).max()) for qz in quantizers])
    else:
        return np.empty(0, dtype=int), np.empty(0, dtype=int)
    rows, cols = np.nonzero(np.abs(back.reshape(flat.shape) - flat) > 0.51 * np.abs(step).reshape(1, -1) + 1e-12)
    return rows, cols


def _warn_saturated(model: Any, X: np.ndarray) -> None:
    """One warning naming the rows and features that saturate: the model then sees the end of its range."""
    try:
        rows, cols = saturated_cells(model, X)
    except (ValueError, TypeError, AttributeError):  # a quantizer layout this check does not know: no warning
        return
    if rows.size:
        flat = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
        warn(clipped_message(
            f"{rows.size} input value(s) outside the range the model was quantized on saturate to its end "
            f"({np.unique(rows).size} row(s) affected; their results are those of the clipped inputs)",
            rows.tolist(), cols.tolist(), flat[rows, cols].tolist()), stacklevel=4)


class TFHEClient:
    """Holds the (optional) secret keyset for one bundle."""

    def __init__(self, sections: dict[str, bytes], secret: bytes | None):
        from concrete import fhe

        self._fhe = fhe
        self._specs = sections["client.specs.json"]
        self._client = fhe.Client(fhe.ClientSpecs.deserialize(self._specs))
        self._model = build_model(sections["processing.json"])
        if secret is not None:
            try:
                self._client.keys = fhe.Keys.deserialize(secret)
            except Exception as exc:  # Concrete raises bare RuntimeError on bad bytes
                raise FormatError(f"the TFHE secret keys are unreadable: {exc}") from exc

    def keygen(self) -> TFHEKeys:
        """Generate a fresh keyset; the secret part keeps the LWE secret keys only (see :func:`secret_keys_only`)."""
        self._client.keygen(force=True)
        keyset = self._client.keys._keyset  # Concrete's own Client reads this private attribute too
        return TFHEKeys(secret=secret_keys_only(self._specs, keyset),
                        evaluation=self._client.evaluation_keys.serialize())

    def encrypt(self, X: np.ndarray) -> list[tuple[int, bytes]]:
        """One payload per sample: Concrete ML circuits take one sample at a time."""
        _warn_saturated(self._model, X)
        payloads = []
        for row in X:
            quantized = self._model.quantize_input(row[np.newaxis, ...])
            payloads.append((1, self._client.encrypt(quantized).serialize()))
        return payloads

    def decrypt(self, payload: bytes, n_samples: int) -> np.ndarray:
        """Decrypt, de-quantize and post-process one sample's result (its size is checked before parsing)."""
        check_result_size(payload, self._specs, n_samples)
        try:
            value = self._fhe.Value.deserialize(payload)
        except Exception as exc:
            raise FormatError(f"result ciphertext is unreadable: {exc}") from exc
        quantized = self._client.decrypt(value)
        out = self._model.post_processing(self._model.dequantize_output(quantized))
        return np.asarray(out, dtype=np.float64).reshape(n_samples, -1)


class TFHEClientScheme:
    """The TFHE scheme as the data owner sees it (:class:`~he_compute.schemes.base.ClientScheme`)."""

    name = "tfhe"

    def compile(self, model: Any, X_calib: np.ndarray, **options: Any) -> Bundle:
        """Compile a Concrete ML / scikit-learn / torch / ONNX model into a TFHE bundle."""
        from .compiler import compile as _compile

        return _compile(model, X_calib, **options)

    def open_client(self, manifest: dict[str, Any], sections: dict[str, bytes], secret: bytes | None) -> TFHEClient:
        """Quantizers, post-processing and (if given) the secret keyset."""
        return TFHEClient(sections, secret)

    def simulate(self, manifest: dict[str, Any], client: dict[str, bytes], server: dict[str, bytes],
                 X: np.ndarray) -> np.ndarray:
        """What the encrypted run decrypts to, without keys: Concrete's simulation of the bundle's own
        circuit (table lookups drawn with its bootstrap error rate, as ``fhe="simulate"``) between the
        same quantization and post-processing the client applies."""
        from concrete import fhe

        from .server import TFHEServer

        model = build_model(client["processing.json"])
        _warn_saturated(model, X)
        runner = TFHEServer(server, simulated=True)
        sim = fhe.Client(fhe.ClientSpecs.deserialize(client["client.specs.json"]), is_simulated=True)
        rows = []
        for row in X:
            value = runner.run_simulated(sim.simulate_encrypt(model.quantize_input(row[np.newaxis, ...])))
            out = model.post_processing(model.dequantize_output(sim.simulate_decrypt(value)))
            rows.append(np.asarray(out, dtype=np.float64).reshape(1, -1))
        return np.concatenate(rows, axis=0)

    def rerandomize(self, evaluation: bytes, payload: bytes) -> bytes:
        """Not possible: Concrete's TFHE has no public-key encryption, and only the secret key re-encrypts."""
        raise UnsupportedModelError("TFHE ciphertexts cannot be re-randomized without the secret key")

SCHEME = TFHEClientScheme()
