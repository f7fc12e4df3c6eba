"""A new user's first hour (issue 22): no silent wrong answers, no silent hangs, accuracy known before encrypting.

Each test is what a user did, and failed on the code before issue 22: one outlier garbled a whole CKKS batch,
TFHE saturated inputs without a word, nothing said how accurate a compiled model is, ``hec run`` with no worker
showed 0/N for ever, onnxruntime's errors came out as "internal error", and so on.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.datasets import load_diabetes

import he_compute
from he_compute.cli import main
from he_compute.errors import HECWarning


def hec(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def encrypted_outputs(bundle, keys_dir, X):
    """Encrypt X, evaluate as a worker would, decrypt; also return the HECWarnings raised on the way."""
    client = he_compute.Client.keygen(bundle, keys_dir, register=False)
    worker = he_compute.Evaluator(bundle.server_part())
    keys = worker.load_keys(he_compute.read_evaluation_keys(client.evaluation_keys_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = client.decrypt(worker.evaluate(client.encrypt(X), keys))
    return out, [str(w.message) for w in caught if issubclass(w.category, HECWarning)]


# ---- item 1: one outlier must not corrupt the other rows of its CKKS batch ----------------------------


@pytest.mark.parametrize("outlier", [1e5, 1e7])
def test_ckks_ridge_outlier_leaves_the_other_rows_correct(tmp_path, outlier):
    from sklearn.linear_model import Ridge

    X, y = load_diabetes(return_X_y=True)
    model = Ridge(alpha=0.1).fit(X[:300], y[:300])  # outputs in the hundreds
    bundle = he_compute.compile(model, X[:300], scheme="ckks")
    X_new = X[300:].copy()
    X_new[5, 2] = outlier
    out, said = encrypted_outputs(bundle, tmp_path / "keys", X_new)
    others = np.delete(np.arange(len(X_new)), 5)
    assert np.abs(out[others, 0] - model.predict(X_new[others])).max() < 0.05  # before: off by ~2e6
    assert len(said) == 1 and "row 5 feature 2" in said[0], said


def test_ckks_logistic_outlier_leaves_the_other_rows_correct(cancer, tmp_path):
    from sklearn.linear_model import LogisticRegression

    X_train, X_test, y_train, _ = cancer
    model = LogisticRegression(max_iter=5000).fit(X_train, y_train)
    bundle = he_compute.compile(model, X_train, scheme="ckks")
    X_new = X_test.copy()
    X_new[[3, 40], [7, 0]] = 1e7
    out, said = encrypted_outputs(bundle, tmp_path / "keys", X_new)
    others = np.setdiff1d(np.arange(len(X_new)), [3, 40])
    assert np.abs(out[others] - model.predict_proba(X_new[others])).max() < 1e-3
    assert len(said) == 1 and "row 3 feature 7" in said[0] and "row 40 feature 0" in said[0], said


def test_hec_encrypt_says_which_cells_it_clipped(tmp_path):
    from sklearn.linear_model import Ridge

    X, y = load_diabetes(return_X_y=True)
    bundle = he_compute.compile(Ridge().fit(X, y), X, scheme="ckks")
    bundle.save(tmp_path / "m.hec")
    assert hec("keygen", tmp_path / "m.hec", "--keys", tmp_path / "keys").exit_code == 0
    X_new = X[:20].copy()
    X_new[11, 4] = -1e7
    np.save(tmp_path / "x.npy", X_new)
    result = hec("encrypt", tmp_path / "m.hec", tmp_path / "x.npy", "--keys", tmp_path / "keys", "-o", tmp_path / "x.enc")
    assert result.exit_code == 0, result.output
    warned = [line for line in result.output.splitlines() if line.startswith("Warning: ")]
    assert len(warned) == 1 and "row 11 feature 4" in warned[0], result.output


# ---- item 2: TFHE says which inputs it saturates -------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "tree"])
def test_tfhe_encrypt_names_the_rows_it_saturates(compiled, cancer, kind):
    X_train, _, _, _ = cancer  # rows the models were quantized on: in range but for the cells set below
    client = compiled(kind).client
    X_new = X_train[:6].copy()
    X_new[2, 3] = 1e6
    X_new[4, 0] = -1e3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("ignore")  # what importing concrete.ml.sklearn does to every warning
        client.encrypt(X_new)
    said = [str(w.message) for w in caught if issubclass(w.category, HECWarning)]
    assert len(said) == 1 and "row 2 feature 3" in said[0] and "row 4 feature 0" in said[0], said
    assert said[0].startswith("2 input value(s)") and "row 1 " not in said[0]
    with warnings.catch_warnings(record=True) as caught:  # in-range data: nothing to say
        warnings.simplefilter("always")
        client.encrypt(X_train[:6])
    assert not [w for w in caught if issubclass(w.category, HECWarning)]
