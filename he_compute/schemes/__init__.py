"""Scheme backends, one sub-package each, looked up by name.

``tfhe`` wraps Zama Concrete ML; ``ckks`` wraps TenSEAL.  Importing this
package imports neither library (``hec --help`` stays fast), and the lookup
is by side: :func:`server` loads only a scheme's worker half, :func:`client`
its data-owner half (see :mod:`.base`).
"""

from __future__ import annotations

import importlib
import sys
from typing import cast

from ..errors import FormatError
from .base import ClientScheme, ServerScheme

SCHEMES = ("tfhe", "ckks")


def _check(name: str) -> str:
    if name not in SCHEMES:
        raise FormatError(f"unknown scheme {str(name)[:40]!r}: expected one of {', '.join(SCHEMES)}")
    return name


def server(name: str) -> ServerScheme:
    """The worker half of scheme ``name`` (``he_compute.schemes.<name>.server.SCHEME``)."""
    return cast(ServerScheme, importlib.import_module(f"{__name__}.{_check(name)}.server").SCHEME)


def client(name: str) -> ClientScheme:
    """The data-owner half of scheme ``name`` (``he_compute.schemes.<name>.client.SCHEME``)."""
    return cast(ClientScheme, importlib.import_module(f"{__name__}.{_check(name)}.client").SCHEME)


def library_versions(*distributions: str) -> dict[str, str]:
    """Versions recorded in a manifest: he_compute, Python and the given installed distributions."""
    from importlib.metadata import version

    found = {name: version(name) for name in distributions}
    return {"he_compute": version("he_compute"), **found, "python": ".".join(map(str, sys.version_info[:3]))}
