"""Read torch modules, ONNX graphs and scikit-learn linear models into raw plan layers.

Torch modules are exported to ONNX first, so there is one reader.  The graph
must be a chain.  Elementwise nodes (Relu, Sigmoid, Tanh, Erf, Gelu, and
Mul/Add/Sub/Div/Pow with scalars or with the same tensor) are collected into
one expression of the last layer's output, so that torch's decomposed GELU
(``x * 0.5 * (1 + erf(x / sqrt 2))``) or ``x * x`` become one activation.
A final Sigmoid or Softmax is left to the client, which applies it exactly
after decryption.

Raw layers are dicts: ``{"op": "linear"|"conv2d"|"avgpool2d"|"reshape"|"act", "name", ...}``
with numpy arrays for weights and, for ``act``, an expression tree (see :mod:`.approx`).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from ...errors import UnsupportedModelError
from .._onnx import load_onnx

X = ("x",)
_UNARY = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Erf": "erf", "Gelu": "gelu"}
_BINARY = {"Mul": "mul", "Add": "add", "Sub": "sub", "Div": "div", "Pow": "pow"}
SUPPORTED = "Gemm, MatMul, Add, Conv, AveragePool, Flatten, Reshape, BatchNormalization, Relu, Sigmoid, Tanh, Gelu, Mul, Pow"


def from_sklearn(model: Any) -> tuple[list[int], list[dict[str, Any]], str | None, str]:
    """A fitted linear model: one linear layer; classifiers get probabilities on the client."""
    if not hasattr(model, "coef_") or not hasattr(model, "intercept_"):
        raise UnsupportedModelError(
            f"{type(model).__name__} is not a fitted linear model: the CKKS backend takes linear models, torch or ONNX"
        )
    w = np.atleast_2d(np.asarray(model.coef_, dtype=np.float64))
    b = np.broadcast_to(np.asarray(model.intercept_, dtype=np.float64), (w.shape[0],)).copy()
    post = None
    if hasattr(model, "classes_"):
        if not hasattr(model, "predict_proba"):
            raise UnsupportedModelError(f"{type(model).__name__} has no probabilities: use LogisticRegression")
        post = "sigmoid2" if w.shape[0] == 1 else "softmax"
    layer = {"op": "linear", "name": type(model).__name__, "weight": w, "bias": b}
    return [w.shape[1]], [layer], post, "classifier" if post else "regressor"


def torch_to_onnx(model: Any, sample: np.ndarray) -> Any:
    """Export a torch module (eval mode) to an in-memory ONNX graph."""
    import onnx
    import torch

    buf = io.BytesIO()
    was_training = model.training
    model.eval()
    try:
        dummy = torch.tensor(sample[:1], dtype=torch.float32)
        torch.onnx.export(model, (dummy,), buf, opset_version=17, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, do_constant_folding=True)
    except Exception as exc:  # torch raises many types for untraceable modules
        raise UnsupportedModelError(f"torch could not export this module to ONNX: {exc}") from exc
    finally:
        model.train(was_training)
    return onnx.load_from_string(buf.getvalue())


class _Reader:
    """Walks the nodes of a chain-shaped ONNX graph once, emitting raw layers."""

    def __init__(self, graph: Any):
        from onnx import numpy_helper

        self.helper = numpy_helper
        self.const: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in graph.initializer}
        inputs = [i for i in graph.input if i.name not in self.const]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise UnsupportedModelError("the CKKS backend needs a graph with exactly one input and one output")
        dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim][1:]
        if not dims or any(d <= 0 for d in dims):
            raise UnsupportedModelError("the ONNX input needs fixed per-sample dimensions (only the batch may vary)")
        self.input_shape = [int(d) for d in dims]
        self.layers: list[dict[str, Any]] = []
        self.live: dict[str, tuple[int, Any]] = {inputs[0].name: (0, X)}  # tensor -> (base id, expression)
        self.base = 0
        self.output = graph.output[0].name
        self.origin: dict[str, str] = {}  # tensor -> name of the elementwise node that produced it

    def fail(self, node: Any, why: str = "") -> UnsupportedModelError:
        label = node.name or ",".join(node.output)
        return UnsupportedModelError(
            f"op {node.op_type} (node {label}) is not supported by the CKKS backend{why}; supported: {SUPPORTED}"
        )

    def attr(self, node: Any, name: str, default: Any) -> Any:
        from onnx import helper

        for a in node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    def value(self, node: Any, name: str) -> Any:
        """The expression of a live input, materialized onto the current base."""
        if name not in self.live:
            raise self.fail(node, " (input is neither the model input nor a constant)")
        base, expr = self.live[name]
        if base != self.base:
            raise self.fail(node, " (the graph branches; only chains are supported)")
        return expr

    def materialize(self, node: Any, name: str) -> None:
        """Emit an activation layer for a pending elementwise expression, so a linear op can consume it."""
        expr = self.value(node, name)
        if expr != X:
            # Name the activation after the node that computed it (e.g. /act/Relu), not the one consuming it.
            self.emit({"op": "act", "name": self.origin.get(name) or node.name or name, "expr": expr})

    def emit(self, layer: dict[str, Any]) -> None:
        self.layers.append(layer)
        self.base += 1

    def run(self, graph: Any) -> tuple[list[int], list[dict[str, Any]], str | None]:
        for node in graph.node:
            self.node(node)
        if self.output not in self.live:
            raise UnsupportedModelError("the graph output does not depend on its input")
        post = None
        base, expr = self.live[self.output]
        if base != self.base:
            raise UnsupportedModelError("the graph output is not the end of the chain")
        if isinstance(expr, tuple) and expr[0] in ("softmax", "sigmoid") and expr[1] == X:
            post, expr = expr[0], X  # exact on the client, after decryption
        if isinstance(expr, tuple) and expr[0] == "softmax":
            raise UnsupportedModelError("Softmax is only supported as the last op of the graph")
        if expr != X:
            self.emit({"op": "act", "name": "output_activation", "expr": expr})
        return self.input_shape, self.layers, post

    def node(self, node: Any) -> None:  # noqa: C901 - one branch per op
        op, ins, out = node.op_type, list(node.input), node.output[0]
        if op == "Constant":
            self.const[out] = self.helper.to_array(self.attr(node, "value", None)).astype(np.float64)
        elif all(i in self.const for i in ins if i):
            self.const_node(node)
        elif op in ("Identity", "Dropout"):
            self.live[out] = self.live[ins[0]]
            if ins[0] in self.origin:
                self.origin[out] = self.origin[ins[0]]
        elif op in _UNARY:
            self.live[out] = (self.base, (_UNARY[op], self.value(node, ins[0])))
            self.origin[out] = node.name or out
        elif op == "Softmax":
            self.live[out] = (self.base, ("softmax", self.value(node, ins[0])))
        elif op in _BINARY:
            self.binary(node)
        elif op in ("Gemm", "MatMul"):
            self.gemm(node)
        elif op == "Conv":
            self.conv(node)
        elif op == "AveragePool":
            self.avgpool(node)
        elif op in ("Flatten", "Reshape"):
            self.materialize(node, ins[0])
            target = [-1] if op == "Flatten" else [int(v) for v in self.const[ins[1]][1:]] if ins[1] in self.const else None
            if target is None or (op == "Flatten" and self.attr(node, "axis", 1) != 1):
                raise self.fail(node, " (reshape must keep the batch axis first and have a constant shape)")
            self.emit({"op": "reshape", "name": node.name or out, "target": target})
            self.live[out] = (self.base, X)
        elif op == "BatchNormalization":
            self.batchnorm(node)
        else:
            raise self.fail(node)

    def const_node(self, node: Any) -> None:
        a = [self.const[i] for i in node.input if i]
        ops: dict[str, np.ufunc] = {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract, "Div": np.divide,
                                    "Pow": np.power}
        fn = ops.get(node.op_type)
        if fn is None and node.op_type not in ("Identity", "Cast"):
            raise self.fail(node, " (on constants)")
        self.const[node.output[0]] = fn(a[0], a[1]) if fn else a[0]

    def binary(self, node: Any) -> None:
        op, (a, b), out = node.op_type, node.input, node.output[0]
        if op == "Add" and self.fold_bias(a, b, node):
            self.live[out] = (self.base, X)
            return
        terms = []
        for name in (a, b):
            if name in self.const:
                c = self.const[name]
                if c.size != 1:
                    raise self.fail(node, " (elementwise ops take scalars, or a bias right after a linear layer)")
                terms.append(("c", float(c.reshape(-1)[0])))
            else:
                terms.append(self.value(node, name))
        self.live[out] = (self.base, (_BINARY[op], *terms))
        self.origin[out] = node.name or out

    def fold_bias(self, a: str, b: str, node: Any) -> bool:
        """MatMul + Add and Conv + Add: add a constant vector to the previous layer's bias."""
        live, const = (a, b) if b in self.const else (b, a)
        if const not in self.const or self.const[const].size == 1 or not self.layers:
            return False
        last = self.layers[-1]
        if self.value(node, live) != X or last["op"] not in ("linear", "conv2d"):
            return False
        c = self.const[const].reshape(-1)
        if c.size != last["bias"].size:
            raise self.fail(node, " (bias shape does not match the previous layer)")
        last["bias"] = last["bias"] + c
        return True

    def gemm(self, node: Any) -> None:
        ins = list(node.input)
        self.materialize(node, ins[0])
        if ins[1] not in self.const or self.attr(node, "transA", 0):
            raise self.fail(node, " (the weight must be a constant and the input not transposed)")
        w = self.const[ins[1]] * float(self.attr(node, "alpha", 1.0))
        w = w if (node.op_type == "Gemm" and self.attr(node, "transB", 0)) else w.T
        bias = np.zeros(w.shape[0])
        if len(ins) > 2 and ins[2]:
            bias = bias + np.broadcast_to(self.const[ins[2]].reshape(-1) * float(self.attr(node, "beta", 1.0)), bias.shape)
        self.emit({"op": "linear", "name": node.name or node.output[0], "weight": w, "bias": bias})
        self.live[node.output[0]] = (self.base, X)

    def _pads(self, node: Any) -> list[int]:
        pads = [int(p) for p in self.attr(node, "pads", [0, 0, 0, 0])]
        if self.attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or pads[:2] != pads[2:]:
            raise self.fail(node, " (only symmetric explicit padding)")
        return pads[:2]

    def conv(self, node: Any) -> None:
        ins = list(node.input)
        self.materialize(node, ins[0])
        if ins[1] not in self.const or self.attr(node, "group", 1) != 1 or any(d != 1 for d in self.attr(node, "dilations", [1, 1])):
            raise self.fail(node, " (2-D conv with constant weights, group 1, no dilation)")
        w = self.const[ins[1]]
        if w.ndim != 4:
            raise self.fail(node, " (only 2-D convolutions)")
        bias = self.const[ins[2]].reshape(-1) if len(ins) > 2 and ins[2] else np.zeros(w.shape[0])
        stride = [int(s) for s in self.attr(node, "strides", [1, 1])]
        self.emit({"op": "conv2d", "name": node.name or node.output[0], "weight": w, "bias": bias,
                   "stride": stride, "padding": self._pads(node)})
        self.live[node.output[0]] = (self.base, X)

    def avgpool(self, node: Any) -> None:
        self.materialize(node, node.input[0])
        if self.attr(node, "ceil_mode", 0):
            raise self.fail(node, " (ceil_mode is not supported)")
        kernel = [int(k) for k in self.attr(node, "kernel_shape", [])]
        stride = [int(s) for s in self.attr(node, "strides", kernel)]
        self.emit({"op": "avgpool2d", "name": node.name or node.output[0], "kernel": kernel, "stride": stride,
                   "padding": self._pads(node), "count_include_pad": bool(self.attr(node, "count_include_pad", 0))})
        self.live[node.output[0]] = (self.base, X)

    def batchnorm(self, node: Any) -> None:
        """Fold ``scale * (x - mean) / sqrt(var + eps) + B`` into the previous linear or conv layer."""
        ins = list(node.input)
        last = self.layers[-1] if self.layers else None
        if self.value(node, ins[0]) != X or last is None or last["op"] not in ("linear", "conv2d"):
            raise self.fail(node, " (BatchNorm must directly follow a Linear or Conv layer)")
        scale, beta, mean, var = (self.const[i].reshape(-1) for i in ins[1:5])
        s = scale / np.sqrt(var + float(self.attr(node, "epsilon", 1e-5)))
        last["weight"] = last["weight"] * s.reshape(-1, *([1] * (last["weight"].ndim - 1)))
        last["bias"] = (last["bias"] - mean) * s + beta
        self.live[node.output[0]] = (self.base, X)


def from_onnx(model: Any) -> tuple[list[int], list[dict[str, Any]], str | None]:
    """Read an ONNX model (object or path) into (input shape, raw layers, client post-processing)."""
    proto = load_onnx(model)
    reader = _Reader(proto.graph)
    return reader.run(proto.graph)
