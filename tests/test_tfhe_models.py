"""Encrypted TFHE outputs equal Concrete ML's own clear quantized outputs on real data."""

from __future__ import annotations

import numpy as np
import pytest

import he_compute

N = {"linear": 10, "tree": 4, "nn": 3}


def _roundtrip(c, X):
    enc = c.client.encrypt(X)
    evaluator = he_compute.Evaluator(he_compute.load_bundle(c.bundle_path).server_part())
    keys = evaluator.load_keys(he_compute.read_evaluation_keys(c.client.evaluation_keys_path))
    return c.client.decrypt(evaluator.evaluate(enc, keys))


@pytest.mark.parametrize("kind", ["linear", "tree", "nn"])
def test_encrypted_equals_clear_quantized(kind, compiled, cancer):
    _, X_test, _, _ = cancer
    c = compiled(kind)
    X = c.prepare(X_test[: N[kind]])
    decrypted = _roundtrip(c, X)
    clear = c.model.predict_proba(X.astype(np.float32) if kind == "nn" else X, fhe="disable")
    assert decrypted.shape == clear.shape == (N[kind], 2)
    np.testing.assert_allclose(decrypted, clear, rtol=0, atol=1e-9)
    # The model is not trivial on these samples: it predicts both classes somewhere in the test set.
    assert len(set(c.model.predict(c.prepare(X_test), fhe="disable"))) == 2


def test_manifest_describes_the_model(compiled):
    b = compiled("tree").bundle
    m = b.manifest
    assert (m["scheme"], m["model_type"], m["task"]) == ("tfhe", "DecisionTreeClassifier", "classifier")
    assert m["input_shape"] == [30] and m["output_shape"] == [2]
    assert m["security_level"] == 128 and 0 < m["tfhe"]["p_error"] < 1e-6
    assert m["library_versions"]["concrete-ml"] == "1.9.0"
    assert len(b.model_id) == 64


def test_bundle_round_trip_keeps_model_id(compiled, tmp_path):
    b = compiled("linear").bundle
    b.save(tmp_path / "again.hec")
    assert he_compute.load_bundle(tmp_path / "again.hec").model_id == b.model_id


def test_torch_module_post_training_quantization(tiny_mlp, tmp_path):
    """A torch module compiles with explicit PTQ settings and matches Concrete's clear quantized run."""
    from concrete.ml.torch.compile import compile_torch_model

    net, Xtr, Xte = tiny_mlp
    bundle = he_compute.compile(net, Xtr, scheme="tfhe", n_bits=4, rounding_threshold_bits=4)
    assert bundle.manifest["quantization"] == {"n_bits": 4, "rounding_threshold_bits": 4}
    client = he_compute.Client.keygen(bundle, tmp_path / "keys")
    evaluator = he_compute.Evaluator(bundle.server_part())
    keys = evaluator.load_keys(he_compute.read_evaluation_keys(client.evaluation_keys_path))
    out = client.decrypt(evaluator.evaluate(client.encrypt(Xte[:2]), keys))
    clear = compile_torch_model(net, Xtr, n_bits=4, rounding_threshold_bits=4).forward(Xte[:2], fhe="disable")
    np.testing.assert_allclose(out, clear, atol=1e-9)


def test_plain_sklearn_model_is_converted(cancer):
    from sklearn.linear_model import LogisticRegression

    X_train, _, y_train, _ = cancer
    bundle = he_compute.compile(LogisticRegression(max_iter=5000).fit(X_train, y_train), X_train, scheme="tfhe")
    assert bundle.manifest["model_type"] == "LogisticRegression"


def test_unsupported_model_is_refused(cancer):
    from sklearn.svm import SVC

    X_train, _, y_train, _ = cancer
    with pytest.raises(he_compute.UnsupportedModelError, match="SVC has no Concrete ML counterpart"):
        he_compute.compile(SVC().fit(X_train[:50], y_train[:50]), X_train, scheme="tfhe")
