"""The plan: the one IR a CKKS bundle's server part holds, its checks, and its clear evaluation.

``plan.json`` is ``{"version": 1, "input_shape": [...], "output_shape": [...], "layers": [...]}``; each
layer has ``op``, ``name``, ``in_shape`` and ``out_shape`` (per sample) and, by op:

``linear``     ``weight`` (out, in) and ``bias`` (out,) sections; input flattened
``conv2d``     ``weight`` (C_out, C_in, kh, kw), ``bias`` (C_out,), ``stride`` [sh, sw], ``padding`` [ph, pw]
``avgpool2d``  ``kernel``, ``stride``, ``padding`` ([h, w] each) and ``count_include_pad``
``reshape``    nothing (features stay in C order, so this only renames the shape)
``square``     nothing: ``x * x``
``poly``       ``coeffs``: G lists of Chebyshev coefficients (basis on [-1, 1]), one per group of features
               (G = 1: all features; G = features; or G = channels of a (C, H, W) input), optional
               ``domain``: G pairs (mid, half) mapping x to (x - mid) / half first (one more level),
               plus the ``activation`` it approximates
``relu_composite`` ``stages`` (Chebyshev coefficient lists, composed) and ``out_scale`` (one per group):
               ReLU as ``x * q(x)`` with ``q ~ (1 + sign x) / 2`` (see :mod:`.composite`)

Weights are ``.npy`` sections read with ``allow_pickle=False`` after their header
is checked against the limits.  Every size a plan implies is bounded by
:mod:`.limits` before anything is allocated.  The clear evaluator below
(:func:`run_layer`) is what compile uses to measure activation ranges; the
server turns every linear op into a matrix with :func:`affine_matrix`.
"""

from __future__ import annotations

import io
import json
import math
import re
from typing import Any

import numpy as np

from ...errors import FormatError, UnsafeArtifactError
from . import composite as _composite
from . import limits as _limits

PLAN_VERSION = 2
LINEAR_OPS = ("linear", "conv2d", "avgpool2d")
OPS = (*LINEAR_OPS, "reshape", "square", "poly", _composite.OP)
_WEIGHT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}\.npy$")


def npy_bytes(arr: np.ndarray) -> bytes:
    """Serialize a float64 array as ``.npy`` without pickle."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype=np.float64), allow_pickle=False)
    return buf.getvalue()


# numpy's public header readers (each bounds the header's size); format 3.0 only adds utf-8 field names.
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def load_npy(data: bytes, what: str, limits: _limits.Limits | None = None) -> np.ndarray:
    """Load a plain numeric ``.npy`` (pickle refused, size checked from its header first), or raise."""
    lim = limits or _limits.current()
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        read_header = _NPY_HEADERS.get(version)
        if read_header is None:
            raise FormatError(f"{what} is a .npy of format version {version}: only 1.0 and 2.0 are read")
        shape, _, dtype = read_header(buf)
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise FormatError(f"{what} is not a readable .npy file: {exc}") from exc
    if dtype.hasobject:
        raise UnsafeArtifactError(f"{what} is not a plain numeric .npy (object arrays are refused)")
    count = math.prod(int(d) for d in shape)
    _limits.check(count, lim.max_weight_entries, f"{what}: number of values")
    if count * dtype.itemsize > len(data):
        raise FormatError(f"{what} claims {count} values but holds {len(data)} bytes: re-compile the bundle")
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
        degree = max(len(c) for c in layer["coeffs"]) - 1
        return max(1, math.ceil(math.log2(degree + 1))) + (1 if layer.get("domain") else 0)
    if op == _composite.OP:
        return _composite.depth_of(layer)
    return 0


def plan_depth(plan: dict[str, Any]) -> int:
    """Total multiplicative depth of a plan."""
    return sum(depth_of(layer) for layer in plan["layers"])


def one_product(plan: dict[str, Any]) -> bool:
    """Whether the plan's only multiplication is its last layer, a linear op (a linear model): then a
    batch-packed run needs no key switching and fits a one-prime chain (:func:`.params.one_prime`)."""
    layers = plan["layers"]
    deep = [layer for layer in layers if depth_of(layer)]
    return bool(layers) and deep == [layers[-1]] and layers[-1]["op"] in LINEAR_OPS


def needs_relin(plan: dict[str, Any]) -> bool:
    """Whether the plan multiplies ciphertexts together (and so needs relinearization keys)."""
    return any(layer["op"] in ("square", _composite.OP) or (layer["op"] == "poly" and max(len(c) for c in layer["coeffs"]) > 2)
               for layer in plan["layers"])


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


def feature_groups(layer: dict[str, Any]) -> np.ndarray:
    """For a poly or composite layer: the group (index into ``coeffs`` / ``out_scale``) of each feature, in C order."""
    shape, g = layer["in_shape"], len(layer["coeffs"] if "coeffs" in layer else layer["out_scale"])
    size = math.prod(shape)
    if g == 1:
        return np.zeros(size, dtype=np.int64)
    if g == size:
        return np.arange(size)
    return np.repeat(np.arange(g), size // g)  # one group per channel of a (C, H, W) input


def poly_apply(layer: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """Evaluate a poly layer in the clear on ``(n, *in_shape)``."""
    from numpy.polynomial import chebyshev

    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    groups = feature_groups(layer)
    out = np.empty_like(flat)
    for g, coeffs in enumerate(layer["coeffs"]):
        cols = groups == g
        u = flat[:, cols]
        if layer.get("domain"):
            mid, half = layer["domain"][g]
            u = (u - mid) / half
        out[:, cols] = chebyshev.chebval(u, np.asarray(coeffs, dtype=np.float64))
    return out.reshape(x.shape)


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
        return poly_apply(layer, x)
    if op == _composite.OP:
        return _composite.apply(layer, x, feature_groups(layer))
    raise FormatError(f"unknown plan op {op!r}")


def run_plan(plan: dict[str, Any], weights: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """Run a whole plan in the clear (polynomial activations included) on ``(n, *input_shape)``."""
    x = X
    for layer in plan["layers"]:
        x = run_layer(layer, x, weights)
    return x.reshape(x.shape[0], -1)


def affine_matrix(layer: dict[str, Any], weights: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The ``(out, in)`` matrix and ``(out,)`` bias of a linear op (sizes already bounded by :func:`check_plan`).

    Conv and pool matrices are filled one kernel offset at a time, never by
    applying the layer to an identity matrix (which would cost in**2 memory).
    """
    if layer["op"] == "linear":
        return weights[layer["weight"]], weights[layer["bias"]]
    c, h, w = layer["in_shape"]
    co, oh, ow = layer["out_shape"]
    (sh, sw), (ph, pw) = layer["stride"], layer["padding"]
    if layer["op"] == "conv2d":
        kernel, bias = weights[layer["weight"]], weights[layer["bias"]]
    else:
        kh, kw = layer["kernel"]
        kernel, bias = np.zeros((c, c, kh, kw)), np.zeros(c)
        kernel[np.arange(c), np.arange(c)] = 1.0
    kh, kw = kernel.shape[2:]
    matrix = np.zeros((co * oh * ow, c * h * w))
    oy, ox = np.meshgrid(np.arange(oh), np.arange(ow), indexing="ij")
    for i in range(kh):
        for j in range(kw):
            iy, ix = oy * sh - ph + i, ox * sw - pw + j
            ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
            rows = np.arange(co)[:, None, None] * (oh * ow) + (oy * ow + ox)[ok][None, None, :]
            cols = np.arange(c)[None, :, None] * (h * w) + (iy * w + ix)[ok][None, None, :]
            matrix[rows, cols] += kernel[:, :, i, j][:, :, None]
    if layer["op"] == "avgpool2d":
        counts = matrix.sum(axis=1, keepdims=True)
        matrix = matrix / (kh * kw if layer.get("count_include_pad", True) else np.maximum(counts, 1.0))
    return matrix, np.repeat(bias, oh * ow)


# ---- checks -----------------------------------------------------------------------------------------


def _shape(value: Any, what: str, length: int | None = None, lim: _limits.Limits | None = None) -> list[int]:
    if not isinstance(value, list) or not value or len(value) > 4 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise FormatError(f"plan: {what} must be a list of 1 to 4 non-negative integers")
    if length is not None and len(value) != length:
        raise FormatError(f"plan: {what} must have {length} entries")
    if lim is not None:
        _limits.check(max(value), lim.max_dim, f"plan: a dimension of {what}")
        _limits.check(math.prod(value), lim.max_features, f"plan: the number of features of {what}")
    return value


def expected_out_shape(layer: dict[str, Any], weights: dict[str, np.ndarray], lim: _limits.Limits) -> list[int]:
    """The output shape a layer must declare, computed from its input shape and parameters."""
    op, name = layer["op"], layer["name"]
    if op in ("reshape", "square", "poly", _composite.OP):
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
    _limits.check(max(kh, kw, sh, sw, ph, pw), lim.max_kernel, f"plan: the kernel, stride or padding of {name}")
    if h + 2 * ph < kh or w + 2 * pw < kw:
        raise FormatError(f"plan: the kernel of {name} is larger than its padded input")
    return [int(co), (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1]


def _check_weight(layer: dict[str, Any], key: str, weights: dict[str, np.ndarray], shape: tuple[int, ...]) -> None:
    ref = layer.get(key)
    if not isinstance(ref, str) or not _WEIGHT_NAME.match(ref) or ref not in weights:
        raise FormatError(f"plan: layer {layer.get('name')} names a missing weight section {ref!r}")
    if weights[ref].shape != shape:
        raise FormatError(f"plan: {ref} has shape {weights[ref].shape}, layer {layer['name']} needs {shape}")


def _check_poly(layer: dict[str, Any], shape: list[int], lim: _limits.Limits) -> None:
    name, c = layer["name"], layer.get("coeffs")
    groups = {1, math.prod(shape)} | ({shape[0]} if len(shape) == 3 else set())
    if not isinstance(c, list) or len(c) not in groups:
        raise FormatError(f"plan: poly layer {name} needs one coefficient list per group (one, per feature or per channel)")
    for g in c:
        if not isinstance(g, list) or not 2 <= len(g) <= lim.max_degree + 1 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in g
        ):
            raise FormatError(f"plan: poly layer {name} needs 2..{lim.max_degree + 1} finite coefficients per group")
    dom = layer.get("domain")
    if dom is not None and (not isinstance(dom, list) or len(dom) != len(c) or not all(
        isinstance(d, list) and len(d) == 2 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in d) and d[1] > 0
        for d in dom
    )):
        raise FormatError(f"plan: poly layer {name} has a malformed domain: one (mid, half > 0) per group")


def check_plan(plan: Any, weights: dict[str, np.ndarray], limits: _limits.Limits | None = None) -> None:
    """Validate schema, ops, shapes, weight references and every size against the limits; raise :class:`FormatError`."""
    lim = limits or _limits.current()
    if not isinstance(plan, dict) or plan.get("version") != PLAN_VERSION or not isinstance(plan.get("layers"), list):
        raise FormatError(f"plan.json is not a version-{PLAN_VERSION} CKKS plan: re-compile the bundle")
    shape = _shape(plan.get("input_shape"), "input_shape", lim=lim)
    if not plan["layers"]:
        raise FormatError("plan.json has no layers")
    _limits.check(len(plan["layers"]), lim.max_layers, "plan: the number of layers")
    for i, layer in enumerate(plan["layers"]):
        if not isinstance(layer, dict) or layer.get("op") not in OPS:
            raise FormatError(f"plan: layer {i} has unknown op {layer.get('op') if isinstance(layer, dict) else layer!r}")
        if not isinstance(layer.get("name"), str) or len(layer["name"]) > 200:
            raise FormatError(f"plan: layer {i} has no name")
        if _shape(layer.get("in_shape"), f"{layer['name']}.in_shape", lim=lim) != shape:
            raise FormatError(f"plan: layer {layer['name']} expects input {layer['in_shape']}, gets {shape}")
        out = _shape(layer.get("out_shape"), f"{layer['name']}.out_shape", lim=lim)
        op = layer["op"]
        if op == "linear":
            w = weights.get(layer["weight"]) if isinstance(layer.get("weight"), str) else None
            rows = w.shape[0] if w is not None and w.ndim == 2 else -1
            _check_weight(layer, "weight", weights, (rows, math.prod(shape)))  # raises unless w is such a matrix
            w = weights[layer["weight"]]
            _check_weight(layer, "bias", weights, (rows,))
            if not np.all(np.any(w != 0, axis=1)):
                raise FormatError(f"plan: linear layer {layer['name']} has an output with only zero weights")
        elif op == "conv2d":
            w = weights.get(layer["weight"]) if isinstance(layer.get("weight"), str) else None
            if w is None or w.ndim != 4 or w.shape[1] != shape[0] or len(shape) != 3:
                raise FormatError(f"plan: conv layer {layer['name']} weight does not match {shape[0]} input channels")
            _check_weight(layer, "bias", weights, (w.shape[0],))
        elif op == "reshape" and math.prod(out) != math.prod(shape):
            raise FormatError(f"plan: reshape {layer['name']} changes the number of features")
        elif op == "poly":
            _check_poly(layer, shape, lim)
        elif op == _composite.OP:
            _composite.check(layer, shape, lim)
        if out != expected_out_shape(layer, weights, lim):
            raise FormatError(f"plan: layer {layer['name']} declares output {out}, its parameters give another shape")
        if op in LINEAR_OPS:
            _limits.check(math.prod(shape) * math.prod(out), lim.max_matrix_entries,
                          f"plan: the matrix of layer {layer['name']} (outputs x inputs)")
        shape = out
    _limits.check(plan_depth(plan), lim.max_depth, "plan: the multiplicative depth")
    if _shape(plan.get("output_shape"), "output_shape") != [math.prod(shape)]:
        raise FormatError("plan: output_shape does not match the last layer")


def check_sections(sections: dict[str, bytes], limits: _limits.Limits | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Check a server part (``plan.json`` + ``.npy`` weights only); return the plan and weights."""
    lim = limits or _limits.current()
    if "plan.json" not in sections:
        raise FormatError("CKKS server part lacks plan.json: re-compile the bundle")
    extra = sorted(n for n in sections if n != "plan.json" and not _WEIGHT_NAME.match(n))
    if extra:
        raise UnsafeArtifactError(f"CKKS server part holds unexpected sections {extra}: only plan.json and .npy weights")
    _limits.check(len(sections) - 1, 2 * lim.max_layers, "CKKS server part: the number of weight sections")
    weights = {n: load_npy(v, n, lim) for n, v in sections.items() if n != "plan.json"}
    try:
        plan = json.loads(sections["plan.json"])
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise FormatError(f"plan.json is not valid JSON: {exc}") from exc
    check_plan(plan, weights, lim)
    used = {layer.get(k) for layer in plan["layers"] for k in ("weight", "bias") if isinstance(layer.get(k), str)}
    unused = sorted(set(weights) - used)
    if unused:
        raise UnsafeArtifactError(f"CKKS server part holds weights no layer uses: {unused}")
    return plan, weights
