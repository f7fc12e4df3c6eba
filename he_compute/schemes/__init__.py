"""Scheme backends, one sub-package each, imported lazily by name.

``tfhe`` wraps Zama Concrete ML; ``ckks`` wraps TenSEAL.  Importing this
package imports neither library: ``hec --help`` stays fast.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import FormatError

SCHEMES = ("tfhe", "ckks")


def library_versions(*distributions: str) -> dict[str, str]:
    """Versions recorded in a manifest: he_compute, Python and the given installed distributions."""
    import sys
    from importlib.metadata import version

    from .. import __version__

    found = {name: version(name) for name in distributions}
    return {"he_compute": __version__, **found, "python": ".".join(map(str, sys.version_info[:3]))}


def get(scheme: str) -> ModuleType:
    """Return the backend module for ``scheme`` (see :mod:`he_compute.schemes.base`)."""
    if scheme not in SCHEMES:
        raise FormatError(f"unknown scheme {scheme!r}: expected one of {', '.join(SCHEMES)}")
    return importlib.import_module(f"{__name__}.{scheme}")
