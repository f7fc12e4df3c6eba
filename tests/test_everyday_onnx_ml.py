"""scikit-learn models exported with skl2onnx (issue 14, item 7), on scikit-learn's own datasets.

On the code before issue 14, TFHE refused every ``ai.onnx.ml`` graph ("onnx version information is not as
expected") and CKKS refused ``LinearRegressor`` without saying why.
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import he_compute
from he_compute.cli import main


def to_onnx(model, X):
    from skl2onnx import to_onnx as convert

    return convert(model, X[:1].astype(np.float32), target_opset={"": 14, "ai.onnx.ml": 3})


def encrypted(bundle, X, keys):
    with he_compute.EncryptedModel(bundle, keys=keys, in_process=True) as model:
        return model.decision_function(X)


def test_a_scaled_linear_regression_pipeline_runs_under_ckks_from_the_cli(tmp_path):
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = load_diabetes(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), Ridge(alpha=0.5)).fit(X, y)
    (tmp_path / "ridge.onnx").write_bytes(to_onnx(pipe, X).SerializeToString())
    np.save(tmp_path / "calib.npy", X)
    r = CliRunner().invoke(main, ["compile", str(tmp_path / "ridge.onnx"), "--scheme", "ckks", "--calibration",
                                  str(tmp_path / "calib.npy"), "-o", str(tmp_path / "ridge.hec")])
    assert r.exit_code == 0, r.output
    bundle = he_compute.load_bundle(tmp_path / "ridge.hec")
    assert bundle.manifest["task"] == "regressor"
    out = encrypted(bundle, X[:20], tmp_path / "keys")
    np.testing.assert_allclose(out[:, 0], pipe.predict(X[:20]), atol=0.05)


def test_a_scaled_logistic_regression_pipeline_runs_under_tfhe(cancer, tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X_train, X_test, y_train, _ = cancer
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(X_train, y_train)
    bundle = he_compute.compile(to_onnx(pipe, X_train), X_train, scheme="tfhe")
    m = bundle.manifest
    assert (m["task"], m["outputs"], m["onnx_ml"]) == ("classifier", "probabilities", "LogisticRegression")
    assert len(m["preprocess"]["scale"]) == 30  # the Scaler runs on the client, before quantization
    proba = encrypted(bundle, X_test[:8], tmp_path / "keys")
    assert np.abs(proba - pipe.predict_proba(X_test[:8])).max() < 0.05
    assert (proba.argmax(axis=1) == pipe.predict(X_test[:8])).all()


@pytest.mark.slow
def test_a_random_forest_runs_under_tfhe_and_ckks_says_what_to_do(tmp_path):
    from sklearn.datasets import load_wine
    from sklearn.ensemble import RandomForestClassifier

    X, y = load_wine(return_X_y=True)
    forest = RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0).fit(X, y)
    proto = to_onnx(forest, X)
    bundle = he_compute.compile(proto, X, scheme="tfhe", n_bits=4)
    assert bundle.manifest["task"] == "classifier"
    # The rebuilt forest, quantized by Concrete ML, is what the encrypted outputs must equal.
    from concrete.ml.sklearn import RandomForestClassifier as CMLForest

    from he_compute.schemes._onnx_ml import to_sklearn

    clear = CMLForest.from_sklearn_model(to_sklearn(proto, X, scheme="tfhe")[0], X, n_bits=4)
    np.testing.assert_allclose(encrypted(bundle, X[:1], tmp_path / "keys"), clear.predict_proba(X[:1]), atol=1e-9)
    with pytest.raises(he_compute.UnsupportedModelError, match="CKKS cannot evaluate trees.*--scheme tfhe"):
        he_compute.compile(proto, X, scheme="ckks")


def test_unsupported_onnx_ml_is_named_in_one_line(cancer):
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline

    X_train, _, y_train, _ = cancer
    boosted = GradientBoostingClassifier(n_estimators=3).fit(X_train, y_train)
    with pytest.raises(he_compute.UnsupportedModelError, match="boosted trees.*he_compute.compile") as exc:
        he_compute.compile(to_onnx(boosted, X_train), X_train, scheme="tfhe")
    assert "\n" not in str(exc.value)
    imputed = make_pipeline(SimpleImputer(), LinearRegression()).fit(X_train, y_train)
    with pytest.raises(he_compute.UnsupportedModelError, match="ONNX-ML op Imputer .* is not supported"):
        he_compute.compile(to_onnx(imputed, X_train), X_train, scheme="ckks")
