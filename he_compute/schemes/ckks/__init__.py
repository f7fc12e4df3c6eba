"""CKKS scheme backend: Microsoft SEAL through TenSEAL's ``sealapi`` (see :mod:`he_compute.schemes.base`).

The server part is a plan (``plan.json``, see :mod:`.plan`) plus ``.npy``
weights; payloads and evaluation keys use the framed format of :mod:`.payload`.
Compile: :mod:`.frontend` -> :mod:`.approx` / :mod:`.accuracy` -> :mod:`.params`;
evaluate: :mod:`.server` -> :mod:`.kernels` on :mod:`.seal`; :mod:`.opcount`
counts what a plan costs and :mod:`.limits` bounds what a stranger's plan may ask.
Sub-modules import TenSEAL, torch and ONNX lazily; importing this package is cheap.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...bundle import Bundle
from . import params
from .plan import check_sections


def check_server_part(manifest: dict[str, Any], sections: dict[str, bytes]) -> None:
    """Refuse a server part that is not a valid plan with plain numeric ``.npy`` weights and secure parameters."""
    params.validate(manifest.get("ckks", {}))
    check_sections(sections)


def open_server(manifest: dict[str, Any], sections: dict[str, bytes]) -> Any:
    """Worker side: the checked plan, its layers turned into matrices (cache it by bundle digest)."""
    from .server import CKKSServer

    params.validate(manifest.get("ckks", {}))
    return CKKSServer(manifest, sections)


def open_client(manifest: dict[str, Any], sections: dict[str, bytes], secret: bytes | None) -> Any:
    """Client side: encoding, post-processing and (if given) the secret context."""
    from .client import CKKSClient

    return CKKSClient(manifest, sections, secret)


def compile(model: Any, X_calib: np.ndarray, **options: Any) -> Bundle:  # noqa: A001
    """Compile a torch module, ONNX graph or scikit-learn linear model into a CKKS bundle."""
    from .compiler import compile as _compile

    return _compile(model, X_calib, **options)
