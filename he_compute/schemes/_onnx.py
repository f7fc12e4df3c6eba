"""Model-type helpers shared by the scheme compilers (onnx and torch are imported lazily)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..errors import FormatError


def is_torch(model: Any) -> bool:
    """True for a ``torch.nn.Module`` (without importing torch)."""
    return "torch" in sys.modules and isinstance(model, sys.modules["torch"].nn.Module)


def is_onnx(model: Any) -> bool:
    """True for an ``onnx.ModelProto`` or a path ending in ``.onnx``."""
    if isinstance(model, (str, Path)):
        return str(model).endswith(".onnx")
    return type(model).__name__ == "ModelProto"


def load_onnx(model: Any) -> Any:
    """Return an ``onnx.ModelProto`` for a ModelProto or a path, with one-line errors."""
    import onnx

    if not isinstance(model, (str, Path)):
        return model
    try:
        return onnx.load(str(model))
    except FileNotFoundError:
        raise FormatError(f"{model} does not exist") from None
    except Exception as exc:  # onnx raises DecodeError and friends
        raise FormatError(f"{model} is not a readable ONNX model: {exc}") from exc


def model_type(model: Any) -> str:
    """How a manifest names what was compiled: ``"ONNX"`` for a graph or an ``.onnx`` path, else the class name."""
    return "ONNX" if is_onnx(model) else type(model).__name__
