"""Build TFHE bundles from Concrete ML models, scikit-learn models, torch modules and ONNX graphs.

Every path ends in Concrete ML's own deployment format (``FHEModelDev.save``
with ``via_mlir=True``), which :mod:`.artifacts` then converts into checked,
plain-data sections: the same code serves ``hec compile`` and
``hec import-concrete``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ...formats.bundle import Bundle
from ...errors import FormatError, UnsupportedModelError
from .. import library_versions
from .._onnx import is_onnx, is_torch, load_onnx, model_type
from .._onnx_ml import as_sklearn
from .._quiet import import_torch_quietly
from .._kind import check_task, decide, final_activation
from .artifacts import sections_from_deployment
from .client import build_model
from .stats import circuit_statistics

# Post-training quantization defaults for torch/ONNX models, chosen from the sweep in bench/bench_tfhe.py
# on the 30-16-2 ReLU MLP (breast cancer): 5 bits with accumulators rounded to 5 bits kept the
# accuracy of 6/6 (0.974 vs 0.982 unrounded) at about half its latency; 4/4 was faster but lost 5 points.
DEFAULT_N_BITS = 5
DEFAULT_ROUNDING_THRESHOLD_BITS = 5


def _circuit_shape(specs: dict[str, Any], side: str) -> list[int]:
    (circuit,) = specs["circuits"]
    (value,) = circuit[side]
    return list(value["typeInfo"]["lweCiphertext"]["abstractShape"]["dimensions"])


def bundle_from_deployment(directory: str | Path, extra: dict[str, Any] | None = None, *, task: str | None = None,
                           final: str | None = None) -> Bundle:
    """Convert a Concrete ML deployment directory (client.zip + server.zip) into a bundle.

    ``task`` is the user's word on what the model is; ``final`` the Softmax/Sigmoid a graph ends in
    (see :func:`he_compute.schemes._kind.decide`).
    """
    client, server, versions = sections_from_deployment(Path(directory))
    specs = json.loads(client["client.specs.json"])
    config = json.loads(server["configuration.json"])
    try:
        in_shape, out_circuit = _circuit_shape(specs, "inputs"), _circuit_shape(specs, "outputs")
    except (KeyError, ValueError, TypeError) as exc:
        raise FormatError(f"{directory}: client.specs.json describes no single-input, single-output circuit") from exc
    model = build_model(client["processing.json"])
    probe = model.post_processing(model.dequantize_output(np.zeros(out_circuit, dtype=np.int64)))
    out_shape = list(np.asarray(probe).shape[1:])
    graph = type(model).__name__ == "QuantizedModule"  # a torch/ONNX graph: it does not say what it is
    known = None if graph else ("classifier" if hasattr(model, "predict_proba") else "regressor")
    manifest = {
        "model_type": type(model).__name__,
        **decide(task, known=known, n_outputs=int(np.prod(out_shape)), final=final),
        "input_shape": in_shape[1:],
        "input_dtype": "float64",
        "output_shape": out_shape,
        "library_versions": library_versions("concrete-ml", "concrete-python"),
        "source_versions": versions,
        "security_level": int(config.get("security_level", 128)),
        "tfhe": {"p_error": config.get("p_error"), "global_p_error": config.get("global_p_error")},
    }
    manifest |= extra or {}
    return Bundle.create("tfhe", manifest, client, server)


def _as_concrete_model(model: Any, X: np.ndarray, n_bits: int | None) -> Any:
    """Return a fitted Concrete ML built-in model for a Concrete ML or scikit-learn model."""
    import_torch_quietly()
    import concrete.ml.sklearn as cml

    if type(model).__module__.startswith("concrete.ml."):
        if not getattr(model, "is_fitted", False):
            raise UnsupportedModelError(f"{type(model).__name__} is not fitted: call fit() before compiling")
        return model
    counterpart = getattr(cml, type(model).__name__, None)
    if counterpart is None or not hasattr(counterpart, "from_sklearn_model"):
        raise UnsupportedModelError(
            f"{type(model).__name__} has no Concrete ML counterpart: use a linear model, a tree or a torch/ONNX model"
        )
    kwargs = {"n_bits": n_bits} if n_bits is not None else {}
    return counterpart.from_sklearn_model(model, X=X, **kwargs)


def compile(  # noqa: A001 - mirrors he_compute.compile
    model: Any,
    X_calib: np.ndarray,
    *,
    n_bits: int | None = None,
    rounding_threshold_bits: int | None = DEFAULT_ROUNDING_THRESHOLD_BITS,
    p_error: float | None = None,
    task: str | None = None,
) -> Bundle:
    """Compile ``model`` for TFHE and return its bundle.

    Concrete ML and scikit-learn models keep their own quantization (``n_bits``
    overrides it for scikit-learn models); torch modules and ONNX graphs use
    post-training quantization with ``n_bits`` (default 5) and accumulator
    rounding to ``rounding_threshold_bits`` (default 5; ``None`` disables it).
    ``task`` (``classifier``/``regressor``) overrides what the model says it is;
    a graph's final Softmax is applied on the client, as CKKS does.
    """
    import_torch_quietly()
    from concrete.ml.deployment import FHEModelDev

    check_task(task)
    # An skl2onnx graph is compiled as the scikit-learn model it encodes; its Scalers run on the client.
    model, X, extra = as_sklearn(model, np.asarray(X_calib, dtype=np.float64), "tfhe")
    final = None
    compile_kwargs = {"p_error": p_error} if p_error is not None else {}
    if is_torch(model) or is_onnx(model):
        from concrete.ml.torch.compile import compile_onnx_model, compile_torch_model

        bits = DEFAULT_N_BITS if n_bits is None else n_bits
        compile_fn = compile_torch_model if is_torch(model) else compile_onnx_model
        onnx_model = _without_final_softmax(_onnx_opset_14(load_onnx(model))) if is_onnx(model) else model
        try:
            compiled = compile_fn(
                onnx_model, X, n_bits=bits, rounding_threshold_bits=rounding_threshold_bits, **compile_kwargs
            )
        except (ValueError, AssertionError, RuntimeError) as exc:
            raise UnsupportedModelError(f"Concrete ML cannot compile this model: {exc}") from exc
        final = final_activation(getattr(compiled, "onnx_model", None))
        extra["quantization"] = {"n_bits": bits, "rounding_threshold_bits": rounding_threshold_bits}
        extra["model_type"] = model_type(model)
    else:
        compiled = _as_concrete_model(model, X, n_bits)
        compiled.compile(X, **compile_kwargs)
        extra["quantization"] = {"n_bits": _jsonable(getattr(compiled, "n_bits", None))}
        classes = getattr(compiled, "classes_", None)
        if classes is not None:
            extra["classes"] = np.asarray(classes).tolist()
    extra["circuit"] = circuit_statistics(compiled.fhe_circuit)  # for pre-flight estimates (hec info / plan)
    with tempfile.TemporaryDirectory(prefix="hec-deploy-") as tmp:
        FHEModelDev(tmp, compiled).save(via_mlir=True)
        return bundle_from_deployment(tmp, extra, task=task, final=final)


def _without_final_softmax(proto: Any) -> Any:
    """The graph without a final Softmax, which Concrete cannot run: the client applies it after decryption."""
    if final_activation(proto) != "softmax":
        return proto
    import onnx

    stripped = onnx.ModelProto()
    stripped.CopyFrom(proto)
    node = next(n for n in stripped.graph.node if stripped.graph.output[0].name in n.output)
    stripped.graph.output[0].name = node.input[0]
    stripped.graph.node.remove(node)
    return stripped


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (int, dict, type(None))) else str(value)


def _onnx_opset_14(model: Any) -> Any:
    """Concrete ML reads ONNX opset 14 only; convert other opsets (torch exports 17 by default)."""
    from onnx import version_converter

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset == 14:
        return model
    try:
        return version_converter.convert_version(model, 14)
    except Exception as exc:  # the converter raises several unrelated types
        raise UnsupportedModelError(
            f"ONNX opset {opset} could not be converted to 14 ({exc}): export with opset_version=14"
        ) from exc

