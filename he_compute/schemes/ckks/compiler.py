"""Compile a model into a CKKS bundle: read it, measure activation ranges, fit polynomials, pick parameters."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ...formats.bundle import Bundle
from ...errors import InputError, UnsupportedModelError
from .. import library_versions
from .._onnx import is_onnx, is_torch, model_type
from .._onnx_ml import as_sklearn
from .._task import decide
from . import approx, frontend, params
from .plan import PLAN_VERSION, check_plan, npy_bytes, plan_depth, run_layer

# Below this many samples per request, one ciphertext per sample (rotations) gives lower latency.
SINGLE_PACKING_MAX_BATCH = 4
POSTPROCESS = (None, "sigmoid", "sigmoid2", "softmax")


def _read_model(model: Any, X: np.ndarray) -> tuple[list[int], list[dict[str, Any]], str | None, str | None]:
    if is_torch(model):
        return (*frontend.from_onnx(frontend.torch_to_onnx(model, X)), None)
    if is_onnx(model):
        return (*frontend.from_onnx(model), None)
    return frontend.from_sklearn(model)


def build_plan(model: Any, X_calib: np.ndarray, *, activation_degree: int | None = None,
               range_margin: float = approx.DEFAULT_MARGIN) -> tuple[dict[str, Any], dict[str, bytes], dict[str, Any]]:
    """Return (plan, weight sections, info) for ``model``; ``info`` holds post-processing and activation fits."""
    X = np.asarray(X_calib, dtype=np.float64)
    input_shape, raw, post, task = _read_model(model, X)
    if X.ndim < 2 or X.shape[0] < 2 or int(np.prod(X.shape[1:])) != int(np.prod(input_shape)):
        raise InputError(f"calibration data must hold 2+ samples of {int(np.prod(input_shape))} features")
    x = X.reshape(X.shape[0], *input_shape)
    layers: list[dict[str, Any]] = []
    weights: dict[str, np.ndarray] = {}
    fits: list[dict[str, Any]] = []
    for i, r in enumerate(raw):
        layer: dict[str, Any] = {"op": r["op"], "name": str(r["name"]), "in_shape": list(x.shape[1:])}
        if r["op"] in ("linear", "conv2d"):
            layer["weight"], layer["bias"] = f"l{i}_weight.npy", f"l{i}_bias.npy"
            weights[layer["weight"]], weights[layer["bias"]] = np.asarray(r["weight"]), np.asarray(r["bias"])
        for key in ("stride", "padding", "kernel", "count_include_pad"):
            if key in r:
                layer[key] = r[key]
        if r["op"] == "reshape":
            layer["out_shape"] = list(np.empty((1, *x.shape[1:]))[0].reshape(r["target"]).shape)
        elif r["op"] == "act":
            if approx.is_square(r["expr"]):
                layer["op"] = "square"
            else:
                f = approx.fit(r["expr"], x, degree=activation_degree, margin=range_margin)
                layer |= {"op": "poly", "activation": f["activation"], "coeffs": f.pop("coeffs")}
                fits.append({"layer": layer["name"], **f})
        y = run_layer(layer, x, weights)
        layer["out_shape"] = list(y.shape[1:])
        layers.append(layer)
        x = y
    if not any(layer["op"] in ("linear", "conv2d") for layer in layers):
        raise UnsupportedModelError("the model has no Linear or Conv layer: nothing to compute")
    plan = {"version": PLAN_VERSION, "input_shape": list(input_shape), "output_shape": [int(np.prod(x.shape[1:]))],
            "layers": layers}
    check_plan(plan, weights)
    if float(np.abs(x).max()) >= 2 ** (params.INT_BITS - 2):
        raise UnsupportedModelError("model outputs on the calibration data exceed 2**18: rescale the model's outputs")
    return plan, {k: npy_bytes(v) for k, v in weights.items()}, {"post": post, "task": task, "fits": fits}


def choose_packing(packing: str, plan: dict[str, Any], batch_size: int | None) -> str:
    """``batch`` unless asked otherwise or unless requests are expected to hold a handful of samples."""
    if packing not in ("auto", "batch", "single"):
        raise InputError(f"packing must be 'auto', 'batch' or 'single', not {packing!r}")
    if packing != "auto":
        return packing
    return "single" if batch_size is not None and batch_size <= SINGLE_PACKING_MAX_BATCH else "batch"


def compile(  # noqa: A001 - mirrors he_compute.compile
    model: Any,
    X_calib: np.ndarray,
    *,
    packing: str = "auto",
    batch_size: int | None = None,
    activation_degree: int | None = None,
    range_margin: float = approx.DEFAULT_MARGIN,
    poly_modulus_degree: int | None = None,
    scale_bits: int | None = None,
    coeff_mod_bit_sizes: list[int] | None = None,
    task: str | None = None,
) -> Bundle:
    """Compile ``model`` for CKKS (TenSEAL) and return its bundle.

    ``packing``: ``"batch"`` (samples across slots, no rotations), ``"single"``
    (one sample per ciphertext, rotations) or ``"auto"`` (single when
    ``batch_size``, the expected samples per request, is at most 4).
    ``activation_degree`` forces the polynomial degree of non-polynomial
    activations (default: the cheapest of 2/4/8 within 1% of the value range).
    Encryption parameters are chosen from the plan's depth unless given.
    Scikit-learn classifiers decrypt to ``predict_proba``-like probabilities
    (computed on the client from the decrypted decision scores); a torch/ONNX
    graph ending in Sigmoid/Softmax gets that op applied on the client too.
    """
    model, X_calib, onnx_ml = as_sklearn(model, X_calib, "ckks")  # everyday: skl2onnx graph -> scikit-learn model
    plan, weight_sections, info = build_plan(model, X_calib, activation_degree=activation_degree,
                                             range_margin=range_margin)
    depth = plan_depth(plan)
    chosen = choose_packing(packing, plan, batch_size)
    ckks = params.choose(depth, poly_modulus_degree=poly_modulus_degree, scale_bits=scale_bits,
                         coeff_mod_bit_sizes=coeff_mod_bit_sizes)
    n_out = plan["output_shape"][0]
    if chosen == "single" and max(int(np.prod(layer["in_shape"])) + 1 for layer in plan["layers"]) * 2 > ckks["slots"]:
        raise UnsupportedModelError(f"a layer is too wide for single packing with {ckks['slots']} slots: use packing='batch'")
    post = info["post"]
    out_shape = [2] if post == "sigmoid2" else [n_out]
    ckks |= {
        "multiplicative_depth": depth,
        "packing": chosen,
        "samples_per_ciphertext": ckks["slots"] if chosen == "batch" else 1,
        "galois_keys": chosen == "single",
        "relin_keys": True,
        "postprocess": post,
        "activations": info["fits"],
    }
    manifest = {
        "model_type": model_type(model),  # everyday: a path compiled from the CLI is "ONNX", not "PosixPath"
        **decide(task, known=info["task"], n_outputs=n_out, final=post),  # everyday: one rule for both schemes
        "input_shape": plan["input_shape"],
        "input_dtype": "float64",
        "output_shape": out_shape,
        "library_versions": library_versions("tenseal"),
        "security_level": params.SECURITY_LEVEL,
        "ckks": ckks,
        **onnx_ml,  # everyday: what an skl2onnx graph was rebuilt as, and its client-side preprocessing
    }
    client = {"encoding.json": json.dumps({"plan_outputs": n_out, "postprocess": post}).encode()}
    server = {"plan.json": json.dumps(plan, sort_keys=True).encode(), **weight_sections}
    return Bundle.create("ckks", manifest, client, server)
