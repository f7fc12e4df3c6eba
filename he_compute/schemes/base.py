"""The Protocols a scheme backend implements.

A scheme (``tfhe``, ``ckks``) is one sub-package of :mod:`he_compute.schemes`
exposing four functions, looked up by :func:`he_compute.schemes.get`:

``check_server_part(manifest, sections)``
    Raise :class:`~he_compute.errors.UnsafeArtifactError` unless the server
    sections are plain data that can be loaded without running foreign code.
``open_server(manifest, sections) -> ServerBackend``
    Worker side: everything needed to evaluate, and nothing secret.
``open_client(manifest, sections, secret) -> ClientBackend``
    Client side: quantize/encode, encrypt and decrypt; ``secret`` is ``None``
    before key generation.
``compile(model, X_calib, **options) -> Bundle``
    Build a bundle from a model (lazily imported by :func:`he_compute.compile`).

Payloads are opaque bytes.  One payload holds one *chunk* of samples: always
one sample for TFHE, up to a ciphertext's slot count for CKKS batch packing.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class KeyMaterial(Protocol):
    """Freshly generated keys: ``secret`` never leaves the key directory."""

    secret: bytes
    evaluation: bytes


class ClientBackend(Protocol):
    """The client's half of a scheme; the only code that touches secret keys."""

    def keygen(self) -> KeyMaterial:
        """Generate a secret key and the matching public evaluation keys."""
        ...

    def encrypt(self, X: np.ndarray) -> list[tuple[int, bytes]]:
        """Encrypt validated float input; return ``(n_samples, payload)`` per chunk."""
        ...

    def decrypt(self, payload: bytes, n_samples: int) -> np.ndarray:
        """Decrypt one result payload into an ``(n_samples, n_outputs)`` float array."""
        ...


class ServerBackend(Protocol):
    """The worker's half of a scheme: evaluation keys and ciphertexts only."""

    def load_keys(self, evaluation: bytes) -> Any:
        """Deserialize evaluation keys (workers cache the result by key id)."""
        ...

    def evaluate(self, payload: bytes, keys: Any) -> bytes:
        """Evaluate the model on one encrypted chunk and return the encrypted result."""
        ...
