"""The Protocols a scheme implements, one per side of the trust boundary.

A scheme (``tfhe``, ``ckks``) is one sub-package of :mod:`he_compute.schemes`
with two entry modules, each exposing ``SCHEME``:

``<scheme>/server.py`` -> :class:`ServerScheme`
    What a worker loads: checks a server part and opens a :class:`ServerBackend`.
    It never imports its scheme's ``client`` module (an import contract checks it).
``<scheme>/client.py`` -> :class:`ClientScheme`
    What the data owner loads: compiles models and opens a :class:`ClientBackend`
    that holds the secret key.

:func:`he_compute.schemes.server` and :func:`he_compute.schemes.client` look
them up by name.  Payloads are opaque bytes.  One payload holds one *chunk*
of samples: always one sample for TFHE, up to a ciphertext's slot count for
CKKS batch packing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # numpy is for the annotations only: a worker's host process never needs it
    import numpy as np

    from ..formats.bundle import Bundle


class KeyMaterial(Protocol):
    """Freshly generated keys: ``secret`` never leaves the key directory."""

    secret: bytes
    evaluation: bytes


class ServerBackend(Protocol):
    """The worker's half of a scheme for one model: evaluation keys and ciphertexts only."""

    def load_keys(self, evaluation: bytes) -> Any:
        """Deserialize evaluation keys (workers cache the result by key id)."""
        ...

    def evaluate(self, payload: bytes, keys: Any) -> bytes:
        """Evaluate the model on one encrypted chunk and return the encrypted result."""
        ...


class ClientBackend(Protocol):
    """The client's half of a scheme for one model; the only code that touches secret keys."""

    def keygen(self) -> KeyMaterial:
        """Generate a secret key and the matching public evaluation keys."""
        ...

    def encrypt(self, X: np.ndarray) -> list[tuple[int, bytes]]:
        """Encrypt validated float input; return ``(n_samples, payload)`` per chunk."""
        ...

    def decrypt(self, payload: bytes, n_samples: int) -> np.ndarray:
        """Decrypt one result payload into an ``(n_samples, n_outputs)`` float array."""
        ...


class ServerScheme(Protocol):
    """A scheme as a worker sees it."""

    name: str

    def check_server_part(self, manifest: dict[str, Any], sections: dict[str, bytes]) -> None:
        """Raise :class:`~he_compute.errors.UnsafeArtifactError` (or ``FormatError``) unless the server
        sections are plain data that can be loaded without running foreign code, within size limits."""
        ...

    def open_server(self, manifest: dict[str, Any], sections: dict[str, bytes]) -> ServerBackend:
        """Build the evaluator of one model from checked sections (costly: cache it by digest)."""
        ...

    def check_result(self, manifest: dict[str, Any], sections: dict[str, bytes], payload: bytes,
                     n_samples: int) -> None:
        """Raise :class:`~he_compute.errors.FormatError` unless ``payload`` can be this model's encrypted
        result for ``n_samples`` samples, judged by framing and sizes only: nothing is deserialized."""
        ...


class ClientScheme(Protocol):
    """A scheme as the data owner sees it."""

    name: str

    def compile(self, model: Any, X_calib: np.ndarray, **options: Any) -> Bundle:
        """Build a bundle from a model and calibration data."""
        ...

    def open_client(self, manifest: dict[str, Any], sections: dict[str, bytes], secret: bytes | None) -> ClientBackend:
        """Open the client side of one model; ``secret`` is ``None`` before key generation."""
        ...

    def simulate(self, manifest: dict[str, Any], client: dict[str, bytes], server: dict[str, bytes],
                 X: np.ndarray) -> np.ndarray:
        """What decrypting an encrypted run of the bundle on (preprocessed) ``X`` gives, computed without keys."""
        ...

    def rerandomize(self, evaluation: bytes, payload: bytes) -> bytes:
        """The same encrypted input with fresh randomness, using public material only; raise
        :class:`~he_compute.errors.UnsupportedModelError` where the scheme has no public-key encryption."""
        ...
