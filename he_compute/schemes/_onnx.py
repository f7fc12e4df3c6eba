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


def onnx_session(model: Any) -> Any:
    """An onnxruntime session for a ModelProto or path, with one-line errors.

    A current skl2onnx stamps its graphs with the newest ai.onnx opset (22 with onnx 1.17), which this
    onnxruntime refuses as "under development": such a graph is converted down to the newest opset the
    runtime names, and only if that fails is it refused, saying which ``target_opset`` to export with."""
    import re

    import onnxruntime as ort

    from ..errors import UnsupportedModelError

    proto = load_onnx(model)

    def session(p: Any) -> Any:
        return ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"])

    try:
        return session(proto)
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        found = re.search(r"support for domain ai\.onnx is till opset (\d+)", str(exc))
        if not found:
            raise FormatError(f"onnxruntime cannot load this ONNX model: {str(exc).splitlines()[0][:300]}") from exc
        supported = int(found.group(1))
    try:
        from onnx import version_converter

        return session(version_converter.convert_version(_one_opset_entry(proto), supported))
    except Exception as exc:
        raise UnsupportedModelError(
            f"this ONNX model uses an opset newer than onnxruntime supports ({supported}) and could not be "
            f"converted: export it with target_opset={supported} (skl2onnx) or opset_version={supported} (torch)"
        ) from exc


def _one_opset_entry(proto: Any) -> Any:
    """A copy of ``proto`` with one opset entry per domain (skl2onnx may write the default domain twice)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    seen: dict[str, int] = {}
    for entry in copy.opset_import:
        seen[entry.domain] = max(seen.get(entry.domain, 0), entry.version)
    del copy.opset_import[:]
    for domain, version in seen.items():
        copy.opset_import.add(domain=domain, version=version)
    return copy


def run_onnx(model: Any, X: Any, width: int | None = None, session: Any = None) -> Any:
    """Run the graph on ``X`` (float32) and return its outputs as a list of arrays, or the one output with
    ``width`` columns (probabilities as a list of dicts become an array); wrong input widths are refused in
    one line."""
    import numpy as np

    from ..errors import InputError

    session = session or onnx_session(model)
    spec = session.get_inputs()[0]
    want = [d if isinstance(d, int) else None for d in spec.shape]
    X = np.asarray(X)
    if len(want) == X.ndim and any(w is not None and w != g for w, g in zip(want[1:], X.shape[1:])):
        raise InputError(f"the data has shape {tuple(X.shape[1:])} per row but the ONNX model takes "
                         f"{tuple('N' if w is None else w for w in want[1:])}: pass the columns the model was trained on")
    if want and want[0] is not None and want[0] != len(X) and len(X) % want[0] == 0:
        # A graph exported with a fixed batch (torch.onnx.export of one sample) runs that many rows at a time.
        parts = [run_onnx(model, X[i : i + want[0]], width, session) for i in range(0, len(X), want[0])]
        if width is not None:
            return np.concatenate(parts)
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]
    dtype = np.float64 if spec.type == "tensor(double)" else np.float32
    try:
        outputs = session.run(None, {spec.name: X.astype(dtype)})
    except Exception as exc:  # onnxruntime's own exception types
        raise InputError(f"onnxruntime could not run the model on this data: {str(exc).splitlines()[0][:300]}") from exc
    arrays = []
    for out in outputs:
        if isinstance(out, list) and out and isinstance(out[0], dict):  # skl2onnx's ZipMap: one dict per row
            out = [[row[k] for k in sorted(row)] for row in out]
        arrays.append(np.asarray(out, dtype=np.float64).reshape(len(X), -1))
    if width is None:
        return arrays
    fitting = [a for a in arrays if a.shape[1] == width]
    if not fitting:
        raise InputError(f"no output of the ONNX model has {width} columns")
    return fitting[-1]
