"""he_compute: private compute with homomorphic encryption on untrusted workers.

The public surface::

    bundle = he_compute.compile(model, X_calib, scheme="tfhe")   # or "ckks"
    bundle.save("model.hec");  bundle = he_compute.load_bundle("model.hec")
    client = he_compute.Client.keygen(bundle, "keys/")           # secret keys stay in keys/
    enc = client.encrypt(X)                                       # a ciphertexts container
    evaluator = he_compute.Evaluator(bundle.server_part())        # what a worker holds
    res = evaluator.evaluate(enc, evaluator.load_keys(he_compute.read_evaluation_keys(client.evaluation_keys_path)))
    y = client.decrypt(res)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .formats.bundle import Bundle

__version__ = "0.1.0"

from .errors import (
    FormatError,
    HECError,
    InputError,
    IntegrityError,
    JobFailed,
    KeyMismatchError,
    QueueError,
    SecurityError,
    StoreError,
    UnsafeArtifactError,
    UnsupportedModelError,
    VerificationError,
)

from .schemes._quiet import install as _install_quiet_torch

# torch prints "No CUDA runtime is found" when Concrete ML is imported on a machine without CUDA, also when
# the user's own code imports it (a notebook's first cell): from here on, that one line is dropped.
_install_quiet_torch()

# Roles are imported on first use (PEP 562), so that a worker process that
# imports he_compute.evaluator never loads the client's secret-key code.
_LAZY = {
    "Bundle": ("formats.bundle", "Bundle"),
    "load_bundle": ("client.client", "load_bundle"),
    "Client": ("client.client", "Client"),
    "Container": ("formats.container", "Container"),
    "read_container": ("formats.container", "read"),
    "Evaluator": ("evaluator", "Evaluator"),
    "EncryptedModel": ("client.api", "EncryptedModel"),
    "EncryptedJob": ("client.api", "EncryptedJob"),
    "TenantAccess": ("client.api", "TenantAccess"),
    "EncryptedPredictor": ("client.sklearn", "EncryptedPredictor"),
    "read_evaluation_keys": ("formats.evalkeys", "read"),
    "run": ("client.run", "run"),
    "Policy": ("client.run", "Policy"),
    "RunOptions": ("client.run", "RunOptions"),
    "simulate": ("client.simulate", "simulate"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Bundle",
    "Client",
    "Container",
    "EncryptedJob",
    "EncryptedModel",
    "EncryptedPredictor",
    "Evaluator",
    "FormatError",
    "HECError",
    "InputError",
    "IntegrityError",
    "JobFailed",
    "KeyMismatchError",
    "QueueError",
    "Policy",
    "RunOptions",
    "SecurityError",
    "StoreError",
    "TenantAccess",
    "UnsafeArtifactError",
    "UnsupportedModelError",
    "VerificationError",
    "__version__",
    "compile",
    "import_concrete",
    "load_bundle",
    "read_container",
    "read_evaluation_keys",
    "run",
    "simulate",
]


def compile(model: Any, X_calib: Any, *, scheme: str = "tfhe", **options: Any) -> "Bundle":  # noqa: A001
    """Compile ``model`` for ``scheme`` ("tfhe" or "ckks") using calibration data ``X_calib``.

    Accepts Concrete ML built-in models, scikit-learn linear models and trees,
    torch modules and ONNX models (objects or ``.onnx`` paths, skl2onnx exports
    included).  ``task="classifier"|"regressor"`` says what the model is; scheme
    options (``n_bits``, ``rounding_threshold_bits``, ``p_error`` for TFHE;
    ``packing``, ``batch_size``, ``activation_degree`` for CKKS) pass through.

    Example::

        bundle = he_compute.compile(tree, X_train, scheme="tfhe")
    """
    from . import schemes

    return schemes.client(scheme).compile(model, X_calib, **options)


def import_concrete(directory: Any) -> "Bundle":
    """Bundle an existing Concrete ML deployment directory (``client.zip`` + ``server.zip``)."""
    from .schemes.tfhe.compiler import bundle_from_deployment

    return bundle_from_deployment(directory)
