"""Importing Concrete ML without torch's CUDA notice, whoever imports it.

Concrete ML imports brevitas, which imports ``torch.utils.cpp_extension``; on a
machine with ``CUDA_HOME`` set (or ``nvcc`` on the path) but no CUDA runtime,
that module prints "No CUDA runtime is found, using CUDA_HOME=..." to stderr at
import time, so every TFHE command printed it, and so did every notebook or
script whose own code imports Concrete ML.  The notice says nothing about
he_compute's work (TFHE runs on the CPU unless a worker asks for
``--device cuda``), so it is swallowed; anything else printed during the
import is passed on, and an import that fails still raises.

``import he_compute`` calls :func:`install`, which puts a finder on
``sys.meta_path`` that wraps only that one module's import, so a user's own
``from concrete.ml.sklearn import ...`` after ``import he_compute`` is quiet too.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import io
import sys
from types import ModuleType
from typing import Any, Callable, Sequence

_NOTICE = "No CUDA runtime is found"
_MODULE = "torch.utils.cpp_extension"


def _without_notice(run: Callable[[], Any]) -> None:
    """Run ``run`` with stderr captured, then pass on every captured line but the notice (also on failure)."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            run()
    finally:
        rest = [line for line in captured.getvalue().splitlines() if not line.startswith(_NOTICE)]
        if rest:
            print("\n".join(rest), file=sys.stderr)


class _QuietLoader(importlib.abc.Loader):
    """The module's own loader, run with the notice dropped; the module keeps its own loader afterwards."""

    def __init__(self, inner: Any):
        self._inner = inner

    def create_module(self, spec: Any) -> ModuleType | None:
        module: ModuleType | None = self._inner.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self._inner  # as a plain import leaves it (inspect, linecache read source through it)
        if module.__spec__ is not None:
            module.__spec__.loader = self._inner
        _without_notice(lambda: self._inner.exec_module(module))


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds ``torch.utils.cpp_extension`` through the other finders and wraps its loader; nothing else."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        if fullname != _MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or isinstance(finder, _QuietFinder) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _QuietLoader(spec.loader)
                return spec
        return None


def install() -> None:
    """Drop the notice from every later import of ``torch.utils.cpp_extension`` in this process (idempotent)."""
    if not any(isinstance(finder, _QuietFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietFinder())


def import_torch_quietly() -> None:
    """Import ``torch.utils.cpp_extension`` once, dropping only its CUDA_HOME notice."""
    if _MODULE in sys.modules:
        return
    install()
    import torch.utils.cpp_extension  # noqa: F401 - imported for its side effect, once
