"""What a model is (classifier or regressor) and what its decrypted outputs are, decided alike for both schemes.

A bundle's manifest records ``task`` (``classifier`` | ``regressor``) and
``outputs``: ``probabilities`` (what Concrete ML classifiers and graphs ending
in Softmax/Sigmoid decrypt to), ``logits`` (class scores that need a softmax,
or a sigmoid for one column) or ``values`` (regression).  The rule:

1. ``task`` given by the user (``--task``, ``task=``) wins;
2. a model that knows (scikit-learn / Concrete ML: it has ``classes_``) says it;
3. a torch/ONNX graph ending in Softmax or Sigmoid is a classifier with probabilities;
   without one, several outputs are class logits, a single output is a regression value.

``to_probabilities`` is what ``EncryptedModel.predict_proba`` applies on the client.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import HECError, InputError

TASKS = ("classifier", "regressor")
OUTPUTS = ("probabilities", "logits", "values")
_FINAL = {"Softmax": "softmax", "Sigmoid": "sigmoid"}


def check_task(task: str | None) -> str | None:
    """``task`` if it is ``None`` or one of :data:`TASKS`; one-line error otherwise."""
    if task is not None and task not in TASKS:
        raise InputError(f"task must be 'classifier' or 'regressor', not {task!r}")
    return task


def final_activation(proto: Any) -> str | None:
    """``"softmax"`` or ``"sigmoid"`` when the node producing an ONNX graph's output is one, else ``None``."""
    if proto is None or len(proto.graph.output) != 1:
        return None
    out = proto.graph.output[0].name
    for node in proto.graph.node:
        if out in node.output:
            return _FINAL.get(node.op_type)
    return None


def decide(requested: str | None, *, known: str | None = None, n_outputs: int,
           final: str | None = None) -> dict[str, str]:
    """``{"task", "outputs"}`` for a manifest (see the module docstring for the rule).

    ``known``: the task the model itself declares (``None`` for a graph); ``final``: the graph's final
    Softmax/Sigmoid, already applied to the decrypted outputs.
    """
    check_task(requested)
    if known is not None:
        natural = known
        outputs = "probabilities" if known == "classifier" else "values"
    elif final is not None:
        natural, outputs = "classifier", "probabilities"
    else:
        natural = "classifier" if n_outputs > 1 else "regressor"
        outputs = "logits" if n_outputs > 1 else "values"
    task = requested or natural
    if task == "regressor":
        outputs = "values"
    elif outputs == "values":
        outputs = "logits"  # the user says these single scores are a classifier's: a sigmoid makes them P(class 1)
    return {"task": task, "outputs": outputs}


def outputs_of(manifest: dict[str, Any]) -> str:
    """The manifest's ``outputs``, inferred for bundles made before it was recorded."""
    recorded = manifest.get("outputs")
    if recorded in OUTPUTS:
        return str(recorded)
    if manifest.get("task") != "classifier":
        return "values"
    if manifest.get("scheme") == "ckks":
        return "probabilities" if manifest.get("ckks", {}).get("postprocess") else "logits"
    return "logits" if manifest.get("model_type") == "QuantizedModule" else "probabilities"


def require_classifier(manifest: dict[str, Any]) -> None:
    """Raise a one-line error unless the bundle is a classifier (checked before anything is encrypted)."""
    if manifest.get("task") != "classifier":
        raise HECError("predict_proba needs a classifier and this bundle is a regressor: use predict(), or "
                       "compile with task='classifier' (hec compile --task classifier) if its outputs are class scores")


def to_probabilities(out: np.ndarray, manifest: dict[str, Any]) -> np.ndarray:
    """Class probabilities ``(n, n_classes)`` from decrypted outputs; one-line error for a regressor."""
    require_classifier(manifest)
    out = np.asarray(out, dtype=np.float64)
    if outputs_of(manifest) == "logits":
        if out.shape[1] == 1:
            out = 1.0 / (1.0 + np.exp(-out))
        else:
            shifted = np.exp(out - out.max(axis=1, keepdims=True))
            return shifted / shifted.sum(axis=1, keepdims=True)
    if out.shape[1] == 1:  # P(class 1) alone: give both columns, as scikit-learn does
        return np.concatenate([1.0 - out, out], axis=1)
    return out
