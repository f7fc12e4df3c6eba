"""scikit-learn models exported with skl2onnx (``ai.onnx.ml`` graphs), turned back into scikit-learn models.

skl2onnx is the usual way to ship a scikit-learn model, but its graphs use the
``ai.onnx.ml`` operator domain, which neither Concrete ML (torch-style ONNX only)
nor the CKKS frontend reads.  Both schemes already compile fitted scikit-learn
models, so :func:`to_sklearn` rebuilds the equivalent one from the ONNX
attributes and the compilers go on from there:

==========================================  ==================================================  ========
ONNX-ML                                     rebuilt as                                          schemes
==========================================  ==================================================  ========
LinearRegressor                             ``LinearRegression``                                 both
LinearClassifier (LOGISTIC / SOFTMAX)       ``LogisticRegression`` (binary, one-vs-rest, softmax)  both
TreeEnsembleRegressor / Classifier          ``DecisionTree*`` (one tree) / ``RandomForest*``     TFHE
Scaler before any of them                   client-side preprocessing (manifest ``preprocess``)   as above
Cast, Identity, Normalizer, ZipMap          nothing to compute (types and output formatting)
==========================================  ==================================================  ========

A leading Scaler (a StandardScaler in a Pipeline) is not folded into the
model: folding is exact in CKKS but would hand TFHE's quantizer raw features of
very different ranges.  It becomes ``manifest["preprocess"]``, an affine map the
client applies before encrypting (:func:`preprocess`), as a Pipeline's clear
steps run on the client.  Anything else (boosted trees, imputers, encoders, ...)
is refused in one line that says what to do instead.  The rebuilt model is
checked against the graph itself, run by onnxruntime on the calibration data,
before it is compiled.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError, UnsupportedModelError
from ._onnx import run_onnx

DOMAIN = "ai.onnx.ml"
_PASS = {"Cast", "Identity", "Normalizer", "ZipMap"}
_MODELS = {"LinearRegressor", "LinearClassifier", "TreeEnsembleRegressor", "TreeEnsembleClassifier"}
_TREES = {"TreeEnsembleRegressor", "TreeEnsembleClassifier"}
INSTEAD = "compile the fitted scikit-learn model with he_compute.compile() in Python"
MATCH_ATOL = 1e-4
"""Largest difference allowed between the rebuilt model and onnxruntime on the calibration data."""


def is_onnx_ml(proto: Any) -> bool:
    """Whether an ONNX graph uses the ``ai.onnx.ml`` domain (an skl2onnx export)."""
    return any(node.domain == DOMAIN for node in proto.graph.node)


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    values = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, list):
            v = [x.decode() if isinstance(x, bytes) else x for x in v]
        values[a.name] = v.decode() if isinstance(v, bytes) else v
    return values


def _walk(proto: Any) -> tuple[Any, list[tuple[np.ndarray, np.ndarray]]]:
    """The one model node and the Scalers before it, ``(offset, scale)`` each; one-line error for anything else."""
    model, scalers = None, []
    for node in proto.graph.node:
        if node.op_type in _MODELS and model is None:
            model = node
        elif node.op_type == "Scaler" and model is None:
            a = _attrs(node)
            scalers.append((np.asarray(a.get("offset", [0.0]), float), np.asarray(a.get("scale", [1.0]), float)))
        elif node.op_type not in _PASS:
            raise UnsupportedModelError(
                f"ONNX-ML op {node.op_type} (node {node.name or node.output[0]}) is not supported: he_compute reads "
                f"Scaler, LinearRegressor, LinearClassifier and scikit-learn tree ensembles; {INSTEAD}")
    if model is None:
        raise UnsupportedModelError(f"this ai.onnx.ml graph holds no linear model or tree ensemble; {INSTEAD}")
    return model, scalers


def _affine(scalers: list[tuple[np.ndarray, np.ndarray]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """The Scalers as ``x -> x * s + t`` per feature."""
    s, t = np.ones(n), np.zeros(n)
    for offset, scale in scalers:
        offset, scale = np.broadcast_to(offset, (n,)), np.broadcast_to(scale, (n,))
        s, t = s * scale, (t - offset) * scale
    return s, t


def _labels(a: dict[str, Any], ints: str) -> list[Any]:
    """A classifier node's class labels (integers or strings); a graph without any is not a classifier."""
    labels = a.get(ints) or a.get("classlabels_strings")
    if not labels:
        raise UnsupportedModelError(f"an ONNX classifier without class labels ({ints} or classlabels_strings) "
                                    "cannot be rebuilt: export the fitted model again with skl2onnx")
    return list(labels)


def _linear(node: Any) -> Any:
    from sklearn.linear_model import LinearRegression, LogisticRegression

    a = _attrs(node)
    intercepts = np.asarray(a.get("intercepts", [0.0]), float)
    coef = np.asarray(a["coefficients"], float).reshape(len(intercepts), -1)
    post = a.get("post_transform", "NONE")
    if node.op_type == "LinearRegressor":
        if post != "NONE" or coef.shape[0] != 1:
            raise UnsupportedModelError(f"LinearRegressor with {post} / {coef.shape[0]} targets is not supported; {INSTEAD}")
        est: Any = LinearRegression()
        est.coef_, est.intercept_ = coef[0], float(intercepts[0])
    else:
        labels = _labels(a, "classlabels_ints")
        if post not in ("LOGISTIC", "SOFTMAX") or a.get("classlabels_strings"):
            raise UnsupportedModelError(f"LinearClassifier with {post} and string labels or without probabilities "
                                        f"(e.g. LinearSVC) is not supported; {INSTEAD}")
        binary = len(labels) == 2 and coef.shape[0] == 2 and np.allclose(coef[0], -coef[1])
        if post == "LOGISTIC" and not binary:
            raise UnsupportedModelError("a one-vs-rest LogisticRegression (LOGISTIC scores normalized) is not "
                                        "supported: fit it with multi_class='multinomial' (scikit-learn's default)")
        # skl2onnx writes a binary model as two opposite rows; scikit-learn keeps the second one and applies a
        # logistic to it (its "multinomial" binary case would take a softmax of [-z, z], a different function).
        est = LogisticRegression(multi_class="ovr" if binary else "multinomial")
        est.coef_, est.intercept_ = (coef[1:], intercepts[1:]) if binary else (coef, intercepts)
        est.classes_ = np.asarray(labels)
    est.n_features_in_ = coef.shape[1]
    return est


def _tree_arrays(a: dict[str, Any], tree: int, value_keys: tuple[str, str, str, str],
                 n_values: int) -> tuple[list[tuple[int, int, int, float]], np.ndarray]:
    """One tree's nodes ``(left, right, feature, threshold)`` by node id, and its leaf values."""
    ids = [i for i, t in enumerate(a["nodes_treeids"]) if t == tree]
    index = {a["nodes_nodeids"][i]: k for k, i in enumerate(ids)}
    nodes, values = [], np.zeros((len(ids), n_values))
    for i in ids:
        if a["nodes_modes"][i] == "LEAF":
            nodes.append((-1, -1, -2, -2.0))
        else:
            nodes.append((index[a["nodes_truenodeids"][i]], index[a["nodes_falsenodeids"][i]],
                          int(a["nodes_featureids"][i]), float(a["nodes_values"][i])))
    trees, nodeids, targets, weights = (a[k] for k in value_keys)
    for t, n, c, w in zip(trees, nodeids, targets, weights):
        if t == tree:
            values[index[n], int(c)] += float(w)
    return nodes, values


def _sk_tree(nodes: list[tuple[int, int, int, float]], values: np.ndarray, n_features: int, classifier: bool) -> Any:
    from sklearn.tree._tree import NODE_DTYPE, Tree

    arr = np.zeros(len(nodes), dtype=NODE_DTYPE)
    for k, (left, right, feature, threshold) in enumerate(nodes):
        arr[k]["left_child"], arr[k]["right_child"], arr[k]["feature"], arr[k]["threshold"] = left, right, feature, threshold
        arr[k]["n_node_samples"], arr[k]["weighted_n_node_samples"] = 1, 1.0
    if classifier:  # leaf class weights as probabilities, the form scikit-learn trees predict
        values = values / np.maximum(values.sum(axis=1, keepdims=True), 1e-300)
    depth = _depth(nodes)
    tree = Tree(n_features, np.array([values.shape[1] if classifier else 1], dtype=np.intp), 1)
    tree.__setstate__({"max_depth": depth, "node_count": len(nodes), "nodes": arr,
                       "values": values.reshape(len(nodes), 1, -1)})
    return tree


def _depth(nodes: list[tuple[int, int, int, float]]) -> int:
    depth, stack = 0, [(0, 0)]
    while stack:
        k, d = stack.pop()
        depth = max(depth, d)
        if nodes[k][0] >= 0:
            stack += [(nodes[k][0], d + 1), (nodes[k][1], d + 1)]
    return depth


def _trees(node: Any, n_features: int) -> Any:
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    a = _attrs(node)
    classifier = node.op_type == "TreeEnsembleClassifier"
    modes = set(a["nodes_modes"]) - {"LEAF"}
    boosted = [why for why, found in ((f"{'/'.join(sorted(modes - {'BRANCH_LEQ'}))} splits", modes != {"BRANCH_LEQ"}),
                                      ("base values", any(a.get("base_values", []))),
                                      (f"a {a.get('post_transform')} transform", a.get("post_transform", "NONE") != "NONE"))
               if found]
    if boosted:
        xgb = "XGBClassifier" if classifier else "XGBRegressor"
        raise UnsupportedModelError(f"{node.op_type} with {' and '.join(boosted)}: boosted trees (GradientBoosting, "
                                    f"xgboost, LightGBM) are not supported through ONNX; use a decision tree or random "
                                    f"forest, or train Concrete ML's {xgb} in Python and pass it to he_compute.compile()")
    tree_ids = sorted(set(a["nodes_treeids"]))
    if classifier:
        labels = _labels(a, "classlabels_int64s")
        keys, n_values = ("class_treeids", "class_nodeids", "class_ids", "class_weights"), len(labels)
    else:
        if int(a.get("n_targets", 1)) != 1:
            raise UnsupportedModelError(f"tree ensembles with several targets are not supported; {INSTEAD}")
        keys, n_values = ("target_treeids", "target_nodeids", "target_ids", "target_weights"), 1
    # Sum-aggregated forests store each tree's share (value / trees); scikit-learn averages whole values.
    share = len(tree_ids) if a.get("aggregate_function", "SUM") == "SUM" else 1
    estimators = []
    # A binary classifier may carry one weight column: ONNX reads it as P(class 1), whatever its class id.
    one_column = classifier and n_values == 2 and len(set(a["class_ids"])) == 1
    for tree in tree_ids:
        nodes, values = _tree_arrays(a, tree, keys, n_values)
        values = values * share  # each tree's own prediction
        if one_column:
            leaves = np.array([n[0] < 0 for n in nodes])
            values[:, 1] = values.sum(axis=1)
            values[:, 0] = np.where(leaves, 1.0 - values[:, 1], 0.0)
        est = (DecisionTreeClassifier if classifier else DecisionTreeRegressor)()
        est.tree_ = _sk_tree(nodes, values, n_features, classifier)
        est.n_features_in_, est.n_outputs_, est.max_features_ = n_features, 1, n_features
        if classifier:
            est.classes_, est.n_classes_ = np.asarray(labels), len(labels)
        estimators.append(est)
    if len(estimators) == 1:
        return estimators[0]
    forest = (RandomForestClassifier if classifier else RandomForestRegressor)(
        n_estimators=len(estimators), max_depth=max(e.tree_.max_depth for e in estimators))
    forest.estimators_, forest.estimator_ = estimators, estimators[0]
    forest.n_features_in_, forest.n_outputs_ = n_features, 1
    if classifier:
        forest.classes_, forest.n_classes_ = np.asarray(labels), len(labels)
    return forest


def _n_features(proto: Any) -> int:
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    if len(proto.graph.input) != 1 or len(dims) != 2 or dims[1].dim_value <= 0:
        raise UnsupportedModelError(f"the ONNX-ML graph needs one input of shape (N, features); {INSTEAD}")
    return int(dims[1].dim_value)


def _check(proto: Any, est: Any, X: np.ndarray, Xp: np.ndarray) -> None:
    """The rebuilt model on the preprocessed data ``Xp`` must give what the graph gives on ``X`` (onnxruntime)."""
    outputs = run_onnx(proto, X)  # one-line errors for a newer opset or data of the wrong width
    if hasattr(est, "predict_proba"):
        got = est.predict_proba(Xp)
        want = outputs[-1]  # ZipMap's dicts come back in sorted class order, which is est.classes_'
    else:
        got, want = est.predict(Xp), outputs[0]
    err = float(np.max(np.abs(np.asarray(got, float).reshape(len(X), -1) - np.asarray(want, float).reshape(len(X), -1))))
    if err > MATCH_ATOL:
        raise UnsupportedModelError(f"the model rebuilt from this ONNX-ML graph differs from it by {err:.3g} on the "
                                    f"calibration data; {INSTEAD}")


def preprocess(X: np.ndarray, manifest: dict[str, Any]) -> np.ndarray:
    """Apply the bundle's client-side preprocessing (a graph's leading Scalers), if any, to validated samples."""
    spec = manifest.get("preprocess")
    if not spec:
        return X
    scale, shift = (np.asarray(spec[k], dtype=np.float64) for k in ("scale", "shift"))
    flat = X.reshape(X.shape[0], -1)
    if scale.shape != shift.shape or scale.shape != flat.shape[1:] or not np.all(np.isfinite(scale * shift)):
        raise UnsupportedModelError("the bundle's preprocess entry does not fit its input: re-compile the bundle")
    return (flat * scale + shift).reshape(X.shape)


def to_sklearn(proto: Any, X_calib: np.ndarray, *, scheme: str) -> tuple[Any, dict[str, Any]]:
    """The fitted scikit-learn model an skl2onnx graph encodes and the manifest entries it needs (``preprocess``),
    checked against onnxruntime on ``X_calib``."""
    model, scalers = _walk(proto)
    n_features = _n_features(proto)
    width = int(np.prod(np.shape(X_calib)[1:]))
    if width != n_features:
        raise InputError(f"the calibration data has {width} features per row but the ONNX model takes "
                         f"{n_features}: pass the columns the model was trained on")
    if model.op_type in _TREES:
        if scheme != "tfhe":
            raise UnsupportedModelError(f"{model.op_type}: CKKS cannot evaluate trees (comparisons are not "
                                        "polynomials); compile with --scheme tfhe")
        est = _trees(model, n_features)
    else:
        est = _linear(model)
    extra: dict[str, Any] = {"onnx_ml": type(est).__name__}
    if scalers:
        scale, shift = _affine(scalers, n_features)
        extra["preprocess"] = {"scale": scale.tolist(), "shift": shift.tolist()}
    X = np.asarray(X_calib, dtype=np.float64).reshape(len(X_calib), -1)
    _check(proto, est, X, preprocess(X, extra))
    return est, extra


def as_sklearn(model: Any, X_calib: np.ndarray, scheme: str) -> tuple[Any, np.ndarray, dict[str, Any]]:
    """``(model, X_calib, {})`` unless ``model`` is an skl2onnx graph (object or ``.onnx`` path): then its
    scikit-learn twin, the calibration data preprocessed for it, and the manifest entries it needs."""
    from ._onnx import is_onnx, load_onnx

    if not is_onnx(model):
        return model, X_calib, {}
    proto = load_onnx(model)
    if not is_onnx_ml(proto):
        return model, X_calib, {}
    est, extra = to_sklearn(proto, X_calib, scheme=scheme)
    X = np.asarray(X_calib, dtype=np.float64)
    return est, preprocess(X.reshape(len(X), -1), extra), extra
