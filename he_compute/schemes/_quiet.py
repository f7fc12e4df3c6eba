"""Importing Concrete ML without torch's CUDA notice on every command.

Concrete ML imports brevitas, which imports ``torch.utils.cpp_extension``; on a
machine with ``CUDA_HOME`` set but no CUDA runtime, that module prints
"No CUDA runtime is found, using CUDA_HOME=..." to stderr at import time, so
every TFHE command printed it.  The notice says nothing about he_compute's work
(TFHE runs on the CPU unless a worker asks for ``--device cuda``), so it is
swallowed; anything else printed during the import is passed on.
"""

from __future__ import annotations

import contextlib
import io
import sys

_NOTICE = "No CUDA runtime is found"


def import_torch_quietly() -> None:
    """Import ``torch.utils.cpp_extension`` once, dropping only its CUDA_HOME notice."""
    if "torch.utils.cpp_extension" in sys.modules:
        return
    captured = io.StringIO()
    with contextlib.redirect_stderr(captured):
        import torch.utils.cpp_extension  # noqa: F401 - imported for its side effect, once
    rest = [line for line in captured.getvalue().splitlines() if not line.startswith(_NOTICE)]
    if rest:
        print("\n".join(rest), file=sys.stderr)
