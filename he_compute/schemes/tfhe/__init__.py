"""TFHE scheme backend, built on Zama Concrete ML (see :mod:`he_compute.schemes.base`).

Sub-modules import Concrete lazily; importing this package is cheap.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...bundle import Bundle
from .artifacts import check_server_sections


def check_server_part(manifest: dict[str, Any], sections: dict[str, bytes]) -> None:
    """Refuse server sections that Concrete could not load without running foreign code."""
    check_server_sections(sections)


def open_server(manifest: dict[str, Any], sections: dict[str, bytes]) -> Any:
    """Worker side: compile the circuit (costly: cache the result by bundle digest)."""
    from .server import TFHEServer

    return TFHEServer(sections)


def open_client(manifest: dict[str, Any], sections: dict[str, bytes], secret: bytes | None) -> Any:
    """Client side: quantizers, post-processing and (if given) the secret keyset."""
    from .client import TFHEClient

    return TFHEClient(sections, secret)


def compile(model: Any, X_calib: np.ndarray, **options: Any) -> Bundle:  # noqa: A001
    """Compile a Concrete ML / scikit-learn / torch / ONNX model into a TFHE bundle."""
    from .compiler import compile as _compile

    return _compile(model, X_calib, **options)


def import_deployment(directory: Any) -> Bundle:
    """Bundle an existing Concrete ML deployment directory (``client.zip`` + ``server.zip``)."""
    from .compiler import bundle_from_deployment

    return bundle_from_deployment(directory)
