"""Compile a model into a CKKS bundle: read it, measure activation ranges, fit polynomials, pick parameters."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from ...formats.bundle import Bundle
from ...errors import InputError, UnsupportedModelError, warn
from .. import library_versions
from .._onnx import is_onnx, is_torch, model_type
from .._onnx_ml import as_sklearn
from .._kind import decide
from . import accuracy, approx, composite, frontend, limits, params
from .plan import LINEAR_OPS, PLAN_VERSION, check_plan, needs_relin, npy_bytes, one_product, plan_depth, run_layer, run_plan

# Unless max_error is given, the compiler aims for a worst-case output error of this fraction of the
# span of the model's outputs on the calibration data: chosen from bench/results/ckks_tradeoff.png
# (bench/bench_ckks_tradeoff.py), where it keeps 100% argmax agreement at the throughput knee.
DEFAULT_RELATIVE_ERROR = 0.05
# Batch packing costs the same per slot at any ring degree, but each chunk pays Python and serialization
# overheads: below N=8192 they dominate (measured: logistic regression 2x faster per sample at 8192 than 4096).
BATCH_MIN_DEGREE = 8192
# With polynomial activations the client clips each feature to its calibration range widened by this
# fraction of its span: far outliers would blow up through a high-degree polynomial, and a box this wide
# leaves in-distribution samples (and so agreement with the clear model) untouched.
CLIP_MARGIN = 0.5


def _read_model(model: Any, X: np.ndarray) -> tuple[list[int], list[dict[str, Any]], str | None, str | None]:
    if is_torch(model):
        return (*frontend.from_onnx(frontend.torch_to_onnx(model, X)), None)
    if is_onnx(model):
        return (*frontend.from_onnx(model), None)
    return frontend.from_sklearn(model)


def _next_linear(raw: list[dict[str, Any]], i: int) -> str | None:
    """The op of the first non-reshape layer after ``i`` (None at the end)."""
    return next((r["op"] for r in raw[i + 1 :] if r["op"] != "reshape"), None)


def build_plan(model: Any, X_calib: np.ndarray, *, activation_degree: int | None = None,
               max_error: float | None = None, range_margin: float = approx.DEFAULT_MARGIN,
               max_degree: int = approx.MAX_DEGREE, relu: str = "poly") -> tuple[dict[str, Any], dict[str, bytes], dict[str, Any]]:
    """Return (plan, weight sections, info) for ``model``; ``info`` holds post-processing, fits and error bounds.

    Each non-polynomial activation gets, per neuron (per channel after a conv),
    the affine map of its calibration range onto [-1, 1] folded into the layer
    before it and its output scale folded into the layer after it; the degree
    of its minimax polynomial is the cheapest meeting ``max_error`` on the outputs.
    ``relu="composite"``: each ReLU after a Linear/Conv layer is scaled by its
    calibration peak instead (symmetric about 0) and becomes a composite
    (:mod:`.composite`), the cheapest rung of its ladder meeting ``max_error``.
    """
    X = np.asarray(X_calib, dtype=np.float64)
    input_shape, raw, post, task = _read_model(model, X)
    if X.ndim < 2 or X.shape[0] < 2 or int(np.prod(X.shape[1:])) != int(np.prod(input_shape)):
        raise InputError(f"calibration data must hold 2+ samples of {int(np.prod(input_shape))} features")
    x = X.reshape(X.shape[0], *input_shape)
    layers: list[dict[str, Any]] = []
    weights: dict[str, np.ndarray] = {}
    acts: dict[int, dict[str, Any]] = {}
    peaks: dict[int, np.ndarray] = {}
    fold: tuple[np.ndarray, np.ndarray] | None = None  # (per feature, per channel) factors for the next linear op
    for i, r in enumerate(raw):
        layer: dict[str, Any] = {"op": r["op"], "name": str(r["name"]), "in_shape": list(x.shape[1:])}
        if r["op"] in ("linear", "conv2d"):
            w, b = np.array(r["weight"], dtype=np.float64), np.array(r["bias"], dtype=np.float64)
            if fold is not None:
                w = w * (fold[0][None, :] if r["op"] == "linear" else fold[1][None, :, None, None])
                fold = None
            layer["weight"], layer["bias"] = f"l{i}_weight.npy", f"l{i}_bias.npy"
            weights[layer["weight"]], weights[layer["bias"]] = w, b
        for key in ("stride", "padding", "kernel", "count_include_pad"):
            if key in r:
                layer[key] = r[key]
        y = None
        if r["op"] == "reshape":
            layer["out_shape"] = list(np.empty((1, *x.shape[1:]))[0].reshape(r["target"]).shape)
        elif r["op"] == "act" and approx.is_square(r["expr"]):
            layer["op"] = "square"
            peaks[len(layers)] = np.abs(x.reshape(x.shape[0], -1)).max(axis=0) * (1 + range_margin)
        elif r["op"] == "act":
            shape = list(x.shape[1:])
            groups = approx.groups_of(shape)
            mid, half = approx.ranges(x, shape, range_margin)
            prev = layers[-1] if layers and layers[-1]["op"] in ("linear", "conv2d") else None
            sign = relu == "composite" and prev is not None and r["expr"] == ("relu", approx.X)
            if sign:  # relu(x) / R = relu(x / R): scaled by the peak, the kink stays at 0 for the sign stages
                peak = np.abs(x.reshape(x.shape[0], -1)).max(axis=0)
                half = np.maximum(np.array([peak[groups == g].max() for g in range(half.size)]), 1e-6) * composite.HEADROOM
                mid = np.zeros_like(half)
            if prev is not None:  # fold u = (x - mid) / half into the previous layer
                pw = weights[prev["weight"]]
                weights[prev["weight"]] = pw / half.reshape(-1, *([1] * (pw.ndim - 1)))
                weights[prev["bias"]] = (weights[prev["bias"]] - mid) / half
            else:
                layer["domain"] = [[float(m), float(h)] for m, h in zip(mid, half)]
            nxt = _next_linear(raw, i)
            folds = nxt == "linear" or (nxt == "conv2d" and len(shape) == 3)
            u = (x.reshape(x.shape[0], -1) - mid[groups]) / half[groups]
            scale = half if folds else np.ones_like(half)
            acts[len(layers)] = {"expr": r["expr"], "mid": mid, "half": half, "fold": folds, "u_peak": np.abs(u).max(),
                                 "composite": sign}
            y = (approx.evaluate(r["expr"], x.reshape(x.shape[0], -1)) / scale[groups]).reshape(x.shape)
            if folds:
                fold = (half[groups], half)
            layer |= {"op": "poly", "activation": approx.label(r["expr"]), "coeffs": [[0.0, 1.0]] * half.size}
            if prev is not None:
                x = u.reshape(x.shape)
        if y is None:
            y = run_layer(layer, x, weights)
        layer["out_shape"] = list(y.shape[1:])
        layers.append(layer)
        x = y
    if not any(layer["op"] in ("linear", "conv2d") for layer in layers):
        raise UnsupportedModelError("the model has no Linear or Conv layer: nothing to compute")
    if relu == "composite" and not any(a["composite"] for a in acts.values()):
        raise UnsupportedModelError("no ReLU after a Linear or Conv layer: nothing for composite polynomials")
    cache: dict[tuple[int, int], dict[str, Any]] = {}
    degrees = [d for d in accuracy.CANDIDATES if d <= max_degree]

    def fit_at(idx: int, key: int) -> dict[str, Any]:
        if (idx, key) not in cache:
            a = acts[idx]
            if a["composite"]:  # key: a rung of the composite ladder
                bits = composite.EPS_BITS[min(key, len(composite.EPS_BITS) - 1)]
                cache[idx, key] = composite.fit(a["half"], bits, a["fold"], accuracy.COMPOSITE_NOISE)
            else:  # key: a degree, or in composite mode a rung of the degrees
                degree = degrees[min(key, len(degrees) - 1)] if relu == "composite" else key
                cache[idx, key] = approx.fit_layer(a["expr"], a["mid"], a["half"], degree, a["fold"])
        return cache[idx, key]

    exact = x.reshape(x.shape[0], -1)
    if max_error is None:
        max_error = DEFAULT_RELATIVE_ERROR * max(float(exact.max() - exact.min()), 1e-3)
    X_plan = X.reshape(X.shape[0], *input_shape)

    def calibration_error(fits: dict[int, dict[str, Any]]) -> float:
        trial = [_with_fit(layer, fits[i]) if i in fits else layer for i, layer in enumerate(layers)]
        return float(np.abs(run_plan({"layers": trial}, weights, X_plan) - exact).max())

    ladder = (accuracy.Ladder(list(range(len(composite.EPS_BITS))), f"composite ReLU down to eps 2**-{composite.EPS_BITS[-1]}")
              if relu == "composite" else accuracy.Ladder.degrees(max_degree))
    fits, errors = accuracy.choose_degrees(layers, weights, fit_at, peaks, max_error, activation_degree,
                                           calibration_error, ladder)
    records = []
    for idx, f in fits.items():
        layers[idx] = _with_fit(layers[idx], f)
        degree = max(f["degrees"]) if "stages" in f else len(f["coeffs"][0]) - 1
        extra = {"composite": f["degrees"], "eps": 2.0 ** -f["bits"]} if "stages" in f else {}
        records.append({"layer": layers[idx]["name"], "activation": layers[idx]["activation"], "degree": degree, **extra,
                        "depth": f.get("depth", approx.depth_of_degree(degree)), "groups": int(acts[idx]["half"].size),
                        "range": [float((acts[idx]["mid"] - acts[idx]["half"]).min()),
                                  float((acts[idx]["mid"] + acts[idx]["half"]).max())],
                        "max_fit_error": float(f["errors"].max())})
    plan = {"version": PLAN_VERSION, "input_shape": list(input_shape), "output_shape": [int(np.prod(x.shape[1:]))],
            "layers": layers}
    # The depth a worker accepts is a limit for strangers' plans; here the 128-bit parameters decide (compile()).
    check_plan(plan, weights, dataclasses.replace(limits.current(), max_depth=1 << 20))
    peak = float(np.abs(exact).max())
    if peak >= 2 ** (params.INT_BITS + 16):
        raise UnsupportedModelError("model outputs on the calibration data exceed 2**28: rescale the model's outputs")
    info = {"post": post, "task": task, "fits": records, "predicted_max_error": errors["predicted"],
            "worst_case_bound": errors["worst_case_bound"], "max_error": max_error,
            "calibration_max_error": errors["calibration"], "output_peak": peak}
    return plan, {k: npy_bytes(v) for k, v in weights.items()}, info


def _with_fit(layer: dict[str, Any], fit: dict[str, Any]) -> dict[str, Any]:
    """A poly layer with a fit's coefficients, or turned into the composite a composite fit describes."""
    if "stages" in fit:
        return {k: v for k, v in layer.items() if k != "coeffs"} | composite.layer_fields(fit)
    return dict(layer, coeffs=fit["coeffs"])


def _choose_params(plan: dict[str, Any], depth: int, **options: Any) -> dict[str, Any]:
    """:func:`.params.choose`; a composite plan must also keep the scale its noise was predicted at."""
    if not any(layer["op"] == composite.OP for layer in plan["layers"]):
        return params.choose(depth, **options)
    need = accuracy.COMPOSITE_SCALE_BITS
    ckks = None
    # The smallest ring whose scale stays at or above ``need`` (params.choose alone stops at 26 bits).
    given = options.pop("poly_modulus_degree", None)
    rings = [given] if given else list(params.DEGREES)
    for n in rings:
        try:
            ckks = params.choose(depth, poly_modulus_degree=n, **options)
        except UnsupportedModelError:
            continue
        if ckks["scale_bits"] >= need:
            break
    if ckks is None or ckks["scale_bits"] < need:
        raise UnsupportedModelError(
            f"composite ReLU for this max_error needs multiplicative depth {depth}, more than one 128-bit modulus "
            f"chain holds at a {need}-bit scale (N=32768 holds about {params.MAX_COEFF_BITS_128[32768] // need - 2}): "
            f"loosen max_error or pass engine='bootstrap' (--engine bootstrap)")
    return ckks


def input_box(X_calib: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each feature's calibration range widened by ``CLIP_MARGIN`` of its span: what the client clips to."""
    Xc = np.asarray(X_calib, dtype=np.float64).reshape(len(X_calib), -1)
    # A feature constant on the calibration data still gets room: the median span of the others.
    span = np.maximum(np.ptp(Xc, axis=0), float(np.median(np.ptp(Xc, axis=0))) + 1e-9)
    return Xc.min(axis=0) - CLIP_MARGIN * span, Xc.max(axis=0) + CLIP_MARGIN * span


def _box_peak(plan: dict[str, Any], weights: dict[str, np.ndarray], lo: np.ndarray, hi: np.ndarray) -> float | None:
    """The largest |output| a plan of linear ops alone can reach on the box ``[lo, hi]`` (interval arithmetic:
    the output at the centre plus |weights| times the half-widths), or ``None`` for other plans."""
    if not all(layer["op"] in (*LINEAR_OPS, "reshape") for layer in plan["layers"]):
        return None
    shape = (1, *plan["input_shape"])
    mid, half = ((hi + lo) / 2).reshape(shape), ((hi - lo) / 2).reshape(shape)
    names = {layer.get(k) for layer in plan["layers"] for k in ("weight", "bias")} - {None}
    radius = {k: (np.abs(v) if any(layer.get("weight") == k for layer in plan["layers"]) else np.zeros_like(v))
              for k, v in weights.items() if k in names}
    return float((np.abs(run_plan(plan, weights, mid)) + run_plan(plan, {**weights, **radius}, half)).max())


def _block(plan: dict[str, Any]) -> int:
    """Single packing's block: the smallest power of two holding every layer's features."""
    widest = max(int(np.prod(layer[k])) for layer in plan["layers"] for k in ("in_shape", "out_shape"))
    return 1 << max(0, (widest - 1).bit_length())


def choose_packing(packing: str, plan: dict[str, Any], weights: dict[str, np.ndarray], batch_size: int | None,
                   slots: int) -> tuple[str, str]:
    """``(packing, reason)``: for ``auto``, the packing with the lower predicted cost for ``batch_size`` samples.

    The cost is :func:`.opcount.op_counts` of each packing times the relative
    per-operation costs, times the chunks the batch needs.
    """
    from . import opcount

    if packing not in ("auto", "batch", "single"):
        raise InputError(f"packing must be 'auto', 'batch' or 'single', not {packing!r}")
    block = _block(plan)
    fits_single = 2 * block <= slots
    if packing != "auto":
        if packing == "single" and not fits_single:
            raise UnsupportedModelError(f"a layer of {block} features is too wide for single packing with {slots} slots: "
                                        f"use packing='batch'")
        return packing, f"packing={packing} was asked for"
    if batch_size is None:
        return "batch", "no batch_size given: batch packing (one sample per slot) for throughput"
    if not fits_single:
        return "batch", f"layers of {block} features do not fit single packing's blocks in {slots} slots"
    n = max(1, int(batch_size))
    per = slots // (2 * block)
    cost_b = opcount.relative_cost(opcount.op_counts(plan, weights, "batch")) * -(-n // slots)
    cost_s = opcount.relative_cost(opcount.op_counts(plan, weights, "single", block, slots)) * -(-n // per)
    chosen = "single" if cost_s < cost_b else "batch"
    return chosen, (f"batch_size={n}: predicted cost single {cost_s:.0f} vs batch {cost_b:.0f} "
                    f"(mul_plain units; single holds {per} samples per ciphertext, batch {slots})")


def compile(  # noqa: A001 - mirrors he_compute.compile
    model: Any,
    X_calib: np.ndarray,
    *,
    packing: str = "auto",
    batch_size: int | None = None,
    max_error: float | None = None,
    activation_degree: int | None = None,
    range_margin: float = approx.DEFAULT_MARGIN,
    poly_modulus_degree: int | None = None,
    scale_bits: int | None = None,
    coeff_mod_bit_sizes: list[int] | None = None,
    task: str | None = None,
    relu: str = "auto",
    engine: str = "auto",
) -> Bundle:
    """Compile ``model`` for CKKS (SEAL through TenSEAL) and return its bundle.

    ``max_error``: the worst-case absolute error allowed on the outputs (logits
    for classifiers) for inputs within the calibration ranges (default:
    ``DEFAULT_RELATIVE_ERROR`` of the outputs' calibration span); activation degrees, and so depth and speed, follow
    from it, and a target no 128-bit parameters reach is refused.
    ``activation_degree`` forces one degree instead (a warning says when the
    predicted error then exceeds ``max_error``).  ``packing``: ``"batch"``
    (samples across slots, throughput), ``"single"`` (``[x, x]`` blocks, few
    samples, rotations) or ``"auto"`` (the cheaper for ``batch_size`` expected
    samples per request; batch when it is not given); the reason is recorded.
    Encryption parameters are chosen from the plan's depth unless given.
    ``engine``: ``"tenseal"`` (SEAL, one modulus chain), ``"bootstrap"`` (OpenFHE with bootstrapping, see
    :mod:`.boot`) or ``"auto"`` (the bootstrapping engine only when one SEAL chain cannot hold the plan well).
    Scikit-learn classifiers decrypt to ``predict_proba``-like probabilities
    (computed on the client from the decrypted decision scores); a torch/ONNX
    graph ending in Sigmoid/Softmax gets that op applied on the client too.
    ``relu``: ``"auto"`` fits one minimax polynomial per ReLU and turns to
    composite sign polynomials (:mod:`.composite`) only when no single degree
    meets ``max_error``; ``"poly"`` or ``"composite"`` asks for one of them.
    """
    if max_error is not None and not float(max_error) > 0:
        raise InputError(f"max_error must be positive, not {max_error!r}")
    model, X_calib, onnx_ml = as_sklearn(model, X_calib, "ckks")  # skl2onnx graph -> scikit-learn model
    if relu not in ("auto", "poly", "composite"):
        raise InputError(f"relu must be 'auto', 'poly' or 'composite', not {relu!r}")
    options: dict[str, Any] = {"activation_degree": activation_degree, "max_error": max_error,
                               "range_margin": range_margin}
    unmet: UnsupportedModelError | None = None  # why one polynomial per ReLU could not do, if it could not
    try:
        plan, weight_sections, info = build_plan(model, X_calib, **options,
                                                 relu="composite" if relu == "composite" else "poly")
    except UnsupportedModelError as exc:
        # One polynomial per ReLU cannot meet the target: composite sign polynomials can, deeper.
        if relu != "auto" or activation_degree is not None or "cannot be met" not in str(exc):
            raise
        unmet = exc
        try:
            plan, weight_sections, info = build_plan(model, X_calib, **options, relu="composite")
        except UnsupportedModelError:
            raise unmet from None  # no ReLU to compose, or no rung meets it either: the first refusal says why
    target = info["max_error"]
    from .plan import load_npy

    weights = {k: load_npy(v, k) for k, v in weight_sections.items()}
    depth = plan_depth(plan)
    int_bits = max(params.INT_BITS, int(np.ceil(np.log2(info["output_peak"] * (1 + range_margin) + 1))) + 3)
    lo, hi = input_box(X_calib)
    box_peak = _box_peak(plan, weights, lo, hi)
    if box_peak is not None:
        # A linear plan's outputs are bounded over the whole clip box: every slot then stays below what the
        # first prime holds, so one outlier cannot wrap its slot and, through decoding, spread to every other.
        int_bits = max(int_bits, int(np.ceil(np.log2(box_peak + 1))) + 2)
    from . import boot_client

    explicit = poly_modulus_degree is not None or coeff_mod_bit_sizes is not None or scale_bits is not None
    has_composite = any(layer["op"] == composite.OP for layer in plan["layers"])
    # A composite plan goes to the bootstrapping engine when asked for (it bootstraps between sign stages).
    if engine == "bootstrap" if has_composite else \
            boot_client.wanted("tenseal" if explicit and engine == "auto" else engine, depth, int_bits):
        return boot_client.bundle(model, plan, weights, weight_sections, info, task, onnx_ml, (lo, hi))
    try:
        ckks = _choose_params(plan, depth, poly_modulus_degree=poly_modulus_degree, scale_bits=scale_bits,
                              coeff_mod_bit_sizes=coeff_mod_bit_sizes, int_bits=int_bits)
    except UnsupportedModelError:
        if unmet is None:
            raise
        raise UnsupportedModelError(f"{unmet} (composite ReLU polynomials would need multiplicative depth {depth}, "
                                    "more than one 128-bit modulus chain holds)") from None
    chosen, reason = choose_packing(packing, plan, weights, batch_size, ckks["slots"])
    automatic = poly_modulus_degree is None and coeff_mod_bit_sizes is None and scale_bits is None
    if chosen == "batch" and automatic and one_product(plan):  # a linear model: one prime, half the bytes
        one = params.one_prime(depth, int_bits=int_bits, min_degree=BATCH_MIN_DEGREE)
        if one is not None:
            ckks = one
            # Its weights are rounded to multiples of 2**-weight_scale: each output may move by half of that
            # times the sum of |x| (the calibration data's largest, with the range margin).
            Xc = np.abs(np.asarray(X_calib, dtype=np.float64).reshape(len(X_calib), -1))
            rounding = 2.0 ** -(one["weight_scale_bits"] + 1) * float(Xc.sum(axis=1).max()) * (1 + range_margin)
            info["predicted_max_error"] += rounding
            info["worst_case_bound"] += rounding
    if chosen == "batch" and ckks["poly_modulus_degree"] < BATCH_MIN_DEGREE and poly_modulus_degree is None \
            and coeff_mod_bit_sizes is None:
        ckks = params.choose(depth, scale_bits=scale_bits, int_bits=int_bits, min_degree=BATCH_MIN_DEGREE)
    steps: list[int] = []
    block = 0
    if chosen == "single":
        from .kernels import rotation_steps
        from .server import build_steps

        block = _block(plan)
        steps = sorted({s for st in build_steps(plan, weights, "single", block, ckks["slots"]) if st[0] == "diag"
                        for s in rotation_steps(list(st[2]), st[1], block)})
    n_out = plan["output_shape"][0]
    post = info["post"]
    out_shape = [2] if post == "sigmoid2" else [n_out]
    warned = []
    if info["predicted_max_error"] > target:
        warned.append(f"predicted output error {info['predicted_max_error']:.3g} exceeds max_error {target:g}: "
                      f"raise activation_degree or drop it to let max_error choose")
    for message in warned:
        warn(message, stacklevel=2)
    ckks |= {
        "multiplicative_depth": depth,
        "packing": chosen,
        "packing_reason": reason,
        "block": block,
        "samples_per_ciphertext": ckks["slots"] if chosen == "batch" else ckks["slots"] // (2 * block),
        "galois_keys": bool(steps),
        "galois_steps": steps,
        "relin_keys": needs_relin(plan),
        "postprocess": post,
        "activations": info["fits"],
        "max_error_target": target,
        "input_clip_margin": CLIP_MARGIN,
        "predicted_max_error": info["predicted_max_error"],
        "calibration_max_error": info["calibration_max_error"],
        "worst_case_error_bound": info["worst_case_bound"],
        "warnings": warned,
    }
    manifest = {
        "model_type": model_type(model),  # a path compiled from the CLI is "ONNX", not "PosixPath"
        **decide(task, known=info["task"], n_outputs=n_out, final=post),  # one rule for both schemes
        "input_shape": plan["input_shape"],
        "input_dtype": "float64",
        "output_shape": out_shape,
        "library_versions": library_versions("tenseal"),
        "security_level": params.SECURITY_LEVEL,
        "ckks": ckks,
        **onnx_ml,  # what an skl2onnx graph was rebuilt as, and its client-side preprocessing
    }
    # Every plan gets its inputs clipped: fitted polynomials blow up outside their ranges, and any slot past
    # what the modulus holds wraps and corrupts every other sample of its ciphertext when decoded.
    encoding: dict[str, Any] = {"plan_outputs": n_out, "postprocess": post,
                                "input_clip": [lo.tolist(), hi.tolist()]}
    client = {"encoding.json": json.dumps(encoding).encode()}
    server = {"plan.json": json.dumps(plan, sort_keys=True).encode(), **weight_sections}
    return Bundle.create("ckks", manifest, client, server)
