"""The plan: the one IR a CKKS bundle's server part holds, its checks, and its clear evaluation.

``plan.json`` is ``{"version": 1, "input_shape": [...], "output_shape": [...], "layers": [...]}``; each
layer has ``op``, ``name``, ``in_shape`` and ``out_shape`` (per sample) and, by op:

``linear``     ``weight`` (out, in) and ``bias`` (out,) sections; input flattened
``conv2d``     ``weight`` (C_out, C_in, kh, kw), ``bias`` (C_out,), ``stride`` [sh, sw], ``padding`` [ph, pw]
``avgpool2d``  ``kernel``, ``stride``, ``padding`` ([h, w] each) and ``count_include_pad``
``reshape``    nothing (features stay in C order, so this only renames the shape)
``square``     nothing: ``x * x``
``poly``       ``coeffs`` [c0, c1, ..., cd] (inline) plus the ``activation`` it approximates

Weights are ``.npy`` sections read with ``allow_pickle=False``.  The clear
evaluator below (:func:`run_layer`) is what compile uses to measure
activation ranges, and what turns every linear op into a matrix for the server.
"""

from __future__ import annotations

import io
import json
import math
import re
from typing import Any

import numpy as np

from ...errors import FormatError, UnsafeArtifactError

PLAN_VERSION = 1
LINEAR_OPS = ("linear", "conv2d", "avgpool2d")
OPS = (*LINEAR_OPS, "reshape", "square", "poly")
_WEIGHT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}\.npy$")
_MAX_DEGREE = 32


def npy_bytes(arr: np.ndarray) -> bytes:
    """Serialize a float64 array as ``.npy`` without pickle."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype=np.float64), allow_pickle=False)
    return buf.getvalue()


def load_npy(data: bytes, what: str) -> np.ndarray:
    """Load a plain numeric ``.npy`` (pickle refused), or raise."""
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        raise UnsafeArtifactError(f"{what} is not a plain numeric .npy (object arrays are refused): {exc}") from exc
    except (OSError, EOFError) as exc:
        raise FormatError(f"{what} is not a readable .npy file: {exc}") from exc
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
        raise UnsafeArtifactError(f"{what} holds {getattr(arr, 'dtype', type(arr))} values; expected real numbers")
    if not np.all(np.isfinite(arr)):
        raise FormatError(f"{what} contains NaN or infinity: re-compile the bundle")
    return arr.astype(np.float64)


def depth_of(layer: dict[str, Any]) -> int:
    """Multiplicative depth (rescales) a layer consumes."""
    op = layer["op"]
    if op in LINEAR_OPS or op == "square":
        return 1
    if op == "poly":
        degree = len(layer["coeffs"]) - 1
        return 0 if degree < 1 else 1 + math.ceil(math.log2(degree))
    return 0


def plan_depth(plan: dict[str, Any]) -> int:
    """Total multiplicative depth of a plan."""
    return sum(depth_of(layer) for layer in plan["layers"])


def needs_relin(plan: dict[str, Any]) -> bool:
    """Whether the plan multiplies ciphertexts together (and so needs relinearization keys)."""
    return any(layer["op"] == "square" or (layer["op"] == "poly" and len(layer["coeffs"]) > 2) for layer in plan["layers"])


# ---- clear evaluation (numpy), batch-first arrays of shape (n, *shape) -------------------------------


def _conv(x: np.ndarray, w: np.ndarray, stride: list[int], padding: list[int]) -> np.ndarray:
    n, _, h, wd = x.shape
    co, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    out = np.zeros((n, co, oh, ow))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out


def _avgpool(x: np.ndarray, layer: dict[str, Any]) -> np.ndarray:
    c = x.shape[1]
    kh, kw = layer["kernel"]
    ones = np.ones((c, 1, kh, kw))
    # A depthwise conv with unit weights; the divisor is the window size or the number of real pixels.
    summed = np.concatenate([_conv(x[:, k : k + 1], ones[k : k + 1], layer["stride"], layer["padding"]) for k in range(c)], axis=1)
    if layer.get("count_include_pad", True):
        return summed / (kh * kw)
    counts = _conv(np.ones((1, 1, *x.shape[2:])), np.ones((1, 1, kh, kw)), layer["stride"], layer["padding"])
    return summed / counts


def poly_apply(coeffs: list[float], x: np.ndarray) -> np.ndarray:
    """Evaluate ``sum(c_k x**k)`` in the clear."""
    return np.polynomial.polynomial.polyval(x, np.asarray(coeffs, dtype=np.float64))


def run_layer(layer: dict[str, Any], x: np.ndarray, weights: dict[str, np.ndarray], *, bias: bool = True) -> np.ndarray:
    """Apply one plan layer in the clear to a batch ``x`` of shape ``(n, *in_shape)``."""
    op, n = layer["op"], x.shape[0]
    if op == "linear":
        y = x.reshape(n, -1) @ weights[layer["weight"]].T
        return y + weights[layer["bias"]] if bias else y
    if op == "conv2d":
        y = _conv(x, weights[layer["weight"]], layer["stride"], layer["padding"])
        return y + weights[layer["bias"]][None, :, None, None] if bias else y
    if op == "avgpool2d":
        return _avgpool(x, layer)
    if op == "reshape":
        return x.reshape(n, *layer["out_shape"])
    if op == "square":
        return x * x
    if op == "poly":
        return poly_apply(layer["coeffs"], x)
    raise FormatError(f"unknown plan op {op!r}")


def run_plan(plan: dict[str, Any], weights: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """Run a whole plan in the clear (polynomial activations included) on ``(n, *input_shape)``."""
    x = X
    for layer in plan["layers"]:
        x = run_layer(layer, x, weights)
    return x.reshape(x.shape[0], -1)


def affine_matrix(layer: dict[str, Any], weights: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The ``(out, in)`` matrix and ``(out,)`` bias of a linear op, found by applying it to the identity."""
    size = int(np.prod(layer["in_shape"]))
    basis = np.eye(size).reshape(size, *layer["in_shape"])
    matrix = run_layer(layer, basis, weights, bias=False).reshape(size, -1).T
    zero = np.zeros((1, *layer["in_shape"]))
    return matrix, run_layer(layer, zero, weights).reshape(-1)


# ---- checks -----------------------------------------------------------------------------------------


def _shape(value: Any, what: str, length: int | None = None) -> list[int]:
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise FormatError(f"plan: {what} must be a list of non-negative integers")
    if length is not None and len(value) != length:
        raise FormatError(f"plan: {what} must have {length} entries")
    return value


def expected_out_shape(layer: dict[str, Any], weights: dict[str, np.ndarray]) -> list[int]:
    """The output shape a layer must declare, computed from its input shape and parameters."""
    op, name = layer["op"], layer["name"]
    if op in ("reshape", "square", "poly"):
        return list(layer["out_shape"]) if op == "reshape" else list(layer["in_shape"])
    if op == "linear":
        return [int(weights[layer["weight"]].shape[0])]
    c, h, w = _shape(layer["in_shape"], f"{name}.in_shape", 3)
    if op == "conv2d":
        co, _, kh, kw = weights[layer["weight"]].shape
    else:
        co, (kh, kw) = c, _shape(layer["kernel"], f"{name}.kernel", 2)
    (sh, sw), (ph, pw) = _shape(layer["stride"], f"{name}.stride", 2), _shape(layer["padding"], f"{name}.padding", 2)
    if min(sh, sw, kh, kw) < 1:
        raise FormatError(f"plan: layer {name} has a zero kernel or stride")
    return [int(co), (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1]


def _check_weight(layer: dict[str, Any], key: str, weights: dict[str, np.ndarray], shape: tuple[int, ...]) -> None:
    ref = layer.get(key)
    if not isinstance(ref, str) or not _WEIGHT_NAME.match(ref) or ref not in weights:
        raise FormatError(f"plan: layer {layer.get('name')} names a missing weight section {ref!r}")
    if weights[ref].shape != shape:
        raise FormatError(f"plan: {ref} has shape {weights[ref].shape}, layer {layer['name']} needs {shape}")


def check_plan(plan: Any, weights: dict[str, np.ndarray]) -> None:
    """Validate the plan schema, op names, shapes and weight references; raise :class:`FormatError`."""
    if not isinstance(plan, dict) or plan.get("version") != PLAN_VERSION or not isinstance(plan.get("layers"), list):
        raise FormatError("plan.json is not a version-1 CKKS plan: re-compile the bundle")
    shape = _shape(plan.get("input_shape"), "input_shape")
    if not plan["layers"]:
        raise FormatError("plan.json has no layers")
    for i, layer in enumerate(plan["layers"]):
        if not isinstance(layer, dict) or layer.get("op") not in OPS:
            raise FormatError(f"plan: layer {i} has unknown op {layer.get('op') if isinstance(layer, dict) else layer!r}")
        if not isinstance(layer.get("name"), str):
            raise FormatError(f"plan: layer {i} has no name")
        if _shape(layer.get("in_shape"), f"{layer['name']}.in_shape") != shape:
            raise FormatError(f"plan: layer {layer['name']} expects input {layer['in_shape']}, gets {shape}")
        out = _shape(layer.get("out_shape"), f"{layer['name']}.out_shape")
        op = layer["op"]
        if op == "linear":
            w = weights.get(layer.get("weight"))
            _check_weight(layer, "weight", weights, (w.shape[0] if w is not None and w.ndim == 2 else -1, int(np.prod(shape))))
            _check_weight(layer, "bias", weights, (w.shape[0],))
        elif op == "conv2d":
            w = weights.get(layer.get("weight"))
            if w is None or w.ndim != 4 or w.shape[1] != shape[0]:
                raise FormatError(f"plan: conv layer {layer['name']} weight does not match {shape[0]} input channels")
            _check_weight(layer, "bias", weights, (w.shape[0],))
        elif op == "reshape" and int(np.prod(out)) != int(np.prod(shape)):
            raise FormatError(f"plan: reshape {layer['name']} changes the number of features")
        elif op == "poly":
            c = layer.get("coeffs")
            if not isinstance(c, list) or not 1 <= len(c) <= _MAX_DEGREE + 1 or not all(
                isinstance(v, (int, float)) and math.isfinite(v) for v in c
            ):
                raise FormatError(f"plan: poly layer {layer['name']} needs 1..{_MAX_DEGREE + 1} finite coefficients")
        if out != expected_out_shape(layer, weights):
            raise FormatError(f"plan: layer {layer['name']} declares output {out}, its parameters give another shape")
        shape = out
    if _shape(plan.get("output_shape"), "output_shape") != [int(np.prod(shape))]:
        raise FormatError("plan: output_shape does not match the last layer")


def check_sections(sections: dict[str, bytes]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Check a server part (``plan.json`` + ``.npy`` weights only); return the plan and weights."""
    if "plan.json" not in sections:
        raise FormatError("CKKS server part lacks plan.json: re-compile the bundle")
    extra = sorted(n for n in sections if n != "plan.json" and not _WEIGHT_NAME.match(n))
    if extra:
        raise UnsafeArtifactError(f"CKKS server part holds unexpected sections {extra}: only plan.json and .npy weights")
    weights = {n: load_npy(v, n) for n, v in sections.items() if n != "plan.json"}
    try:
        plan = json.loads(sections["plan.json"])
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"plan.json is not valid JSON: {exc}") from exc
    check_plan(plan, weights)
    used = {layer.get(k) for layer in plan["layers"] for k in ("weight", "bias")}
    unused = sorted(set(weights) - used)
    if unused:
        raise UnsafeArtifactError(f"CKKS server part holds weights no layer uses: {unused}")
    return plan, weights
