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


# ---- item 3: accuracy known before encrypting; a keyless simulated run ---------------------------------


@pytest.fixture(scope="module")
def skl2onnx_pipeline(cancer, tmp_path_factory):
    """A StandardScaler + LogisticRegression pipeline exported by skl2onnx with its defaults, and its data."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X_train, X_test, y_train, _ = cancer
    root = tmp_path_factory.mktemp("pipe")
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X_train, y_train)
    graph = convert_sklearn(pipe, initial_types=[("X", FloatTensorType([None, 30]))])
    (root / "pipe.onnx").write_bytes(graph.SerializeToString())
    np.save(root / "X_train.npy", X_train)
    np.save(root / "X_test.npy", X_test)
    return root


@pytest.mark.parametrize("scheme", ["tfhe", "ckks"])
def test_hec_compile_reports_agreement_and_max_error(skl2onnx_pipeline, scheme):
    root = skl2onnx_pipeline
    result = hec("compile", root / "pipe.onnx", "--scheme", scheme, "--calibration", root / "X_train.npy",
                 "--validation", root / "X_test.npy", "-o", root / f"{scheme}.hec", "--no-estimate")
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("accuracy on "))
    assert "114 validation rows" in line and "agreement" in line and "max output error" in line, line
    agreement = float(line.split("agreement ")[1].split("%")[0])
    assert agreement >= 95.0, line


def test_simulated_tfhe_run_equals_the_decrypted_encrypted_run(compiled, cancer, tmp_path):
    _, X_test, _, _ = cancer
    c = compiled("tree")
    X = X_test[:4]
    worker = he_compute.Evaluator(c.bundle.server_part())
    keys = worker.load_keys(he_compute.read_evaluation_keys(c.client.evaluation_keys_path))
    decrypted = c.client.decrypt(worker.evaluate(c.client.encrypt(X), keys))
    simulated = he_compute.simulate(he_compute.load_bundle(c.bundle_path), X)  # no keys
    np.testing.assert_array_equal(simulated, decrypted)
    np.testing.assert_allclose(simulated, c.model.predict_proba(X, fhe="disable"), atol=1e-9)


def test_simulated_ckks_run_matches_the_decrypted_encrypted_run(tiny_mlp, tmp_path):
    net, Xtr, Xte = tiny_mlp
    bundle = he_compute.compile(net, Xtr, scheme="ckks")
    decrypted, _ = encrypted_outputs(bundle, tmp_path / "keys", Xte)
    simulated = he_compute.simulate(bundle, Xte)
    # Only CKKS noise separates them: a small fraction of the approximation error the compiler predicts
    # (measured: 0.15 to 0.33 against a predicted 3.6 on logits up to 56; fresh encryptions are random, so the
    # noise varies from run to run), which the simulation does show.
    predicted = bundle.manifest["ckks"]["predicted_max_error"]
    assert np.abs(simulated - decrypted).max() < 0.2 * predicted
    assert np.mean(simulated.argmax(axis=1) == decrypted.argmax(axis=1)) >= 0.99
    clear = net(__import__("torch").tensor(Xte, dtype=__import__("torch").float32)).detach().numpy()
    assert np.abs(simulated - clear).max() > 5 * np.abs(simulated - decrypted).max()  # it shows the approximation


def test_hec_simulate_writes_what_decrypt_would(skl2onnx_pipeline, tmp_path):
    root = skl2onnx_pipeline
    assert hec("compile", root / "pipe.onnx", "--scheme", "ckks", "--calibration", root / "X_train.npy",
               "-o", tmp_path / "m.hec", "--no-estimate", "--no-accuracy").exit_code == 0
    result = hec("simulate", tmp_path / "m.hec", root / "X_test.npy", "-o", tmp_path / "y.csv")
    assert result.exit_code == 0, result.output
    simulated = np.loadtxt(tmp_path / "y.csv", delimiter=",", ndmin=2)
    assert hec("keygen", tmp_path / "m.hec", "--keys", tmp_path / "keys").exit_code == 0
    assert hec("encrypt", tmp_path / "m.hec", root / "X_test.npy", "--keys", tmp_path / "keys",
               "-o", tmp_path / "x.enc").exit_code == 0
    assert hec("eval", tmp_path / "x.enc", "--bundle", tmp_path / "m.hec", "--eval-keys",
               tmp_path / "keys" / "evaluation.keys", "-o", tmp_path / "y.enc").exit_code == 0
    assert hec("decrypt", tmp_path / "y.enc", "--keys", tmp_path / "keys", "-o", tmp_path / "d.csv").exit_code == 0
    decrypted = np.loadtxt(tmp_path / "d.csv", delimiter=",", ndmin=2)
    assert simulated.shape == decrypted.shape == (114, 2)
    assert np.abs(simulated - decrypted).max() < 1e-3


# ---- item 6: onnxruntime's errors say what is wrong; skl2onnx's default opset is accepted ----------------


def test_calibration_with_the_wrong_feature_count_is_one_line(skl2onnx_pipeline, tmp_path):
    root = skl2onnx_pipeline
    np.save(tmp_path / "narrow.npy", np.load(root / "X_train.npy")[:, :5])
    result = hec("compile", root / "pipe.onnx", "--scheme", "ckks", "--calibration", tmp_path / "narrow.npy",
                 "-o", tmp_path / "m.hec")
    assert result.exit_code == 1 and "internal error" not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "has 5 features" in lines[0] and "takes 30" in lines[0], result.output


@pytest.mark.parametrize("scheme", ["ckks", "tfhe"])
def test_skl2onnx_default_export_at_the_newest_opset_compiles(tmp_path, scheme):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import Ridge

    X, y = load_diabetes(return_X_y=True)
    graph = convert_sklearn(Ridge().fit(X, y), initial_types=[("X", FloatTensorType([None, 10]))])
    (tmp_path / "ridge.onnx").write_bytes(graph.SerializeToString())
    np.save(tmp_path / "X.npy", X)
    result = hec("compile", tmp_path / "ridge.onnx", "--scheme", scheme, "--calibration", tmp_path / "X.npy",
                 "-o", tmp_path / "r.hec", "--no-estimate")
    assert result.exit_code == 0, result.output
    assert "max output error" in result.output


# ---- item 7: hec keygen --force keeps the old secret key unless told otherwise --------------------------


def test_keygen_force_keeps_the_old_keys_so_old_results_still_decrypt(tmp_path):
    from sklearn.linear_model import Ridge

    X, y = load_diabetes(return_X_y=True)
    he_compute.compile(Ridge().fit(X, y), X, scheme="ckks").save(tmp_path / "m.hec")
    np.save(tmp_path / "x.npy", X[:8])
    keys = tmp_path / "keys"
    assert hec("keygen", tmp_path / "m.hec", "--keys", keys).exit_code == 0
    assert hec("encrypt", tmp_path / "m.hec", tmp_path / "x.npy", "--keys", keys, "-o", tmp_path / "x.enc").exit_code == 0
    again = hec("keygen", tmp_path / "m.hec", "--keys", keys)
    assert again.exit_code == 1 and "--rotate" in again.output and "--discard-old" in again.output, again.output
    forced = hec("keygen", tmp_path / "m.hec", "--keys", keys, "--force")
    assert forced.exit_code == 0 and "retired the old keys to" in forced.output, forced.output
    # The run made with the old keys still decrypts, found by its key id (no --keys).
    assert hec("eval", tmp_path / "x.enc", "--bundle", tmp_path / "m.hec", "--eval-keys",
               next((keys / "retired").iterdir()) / "evaluation.keys", "-o", tmp_path / "y.enc").exit_code == 0
    result = hec("decrypt", tmp_path / "y.enc", "-o", tmp_path / "y.csv")
    assert result.exit_code == 0, result.output
    discarded = hec("keygen", tmp_path / "m.hec", "--keys", keys, "--force", "--discard-old")
    assert discarded.exit_code == 0 and len(list((keys / "retired").iterdir())) == 1, discarded.output


# ---- item 8: EncryptedPredictor takes regressors; boosted trees are refused plainly ---------------------


def test_encrypted_predictor_with_a_ridge_regressor_predicts_values():
    from sklearn.linear_model import Ridge

    from he_compute.client.sklearn import EncryptedPredictor

    X, y = load_diabetes(return_X_y=True)
    model = EncryptedPredictor(Ridge(), scheme="ckks", in_process=True).fit(X[:300], y[:300])
    try:
        got = model.predict(X[300:340])
        want = Ridge().fit(X[:300], y[:300]).predict(X[300:340])
        assert got.shape == want.shape and np.abs(got - want).max() < 0.05
        assert model.score(X[300:340], y[300:340]) == pytest.approx(
            Ridge().fit(X[:300], y[:300]).score(X[300:340], y[300:340]), abs=1e-3)
    finally:
        model.close()


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_gradient_boosting_through_onnx_is_refused_plainly(tmp_path, kind):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

    X, y = load_diabetes(return_X_y=True)
    est = (GradientBoostingClassifier(n_estimators=3).fit(X, y > 140) if kind == "classifier"
           else GradientBoostingRegressor(n_estimators=3).fit(X, y))
    graph = convert_sklearn(est, initial_types=[("X", FloatTensorType([None, 10]))],
                            options={id(est): {"zipmap": False}} if kind == "classifier" else None)
    (tmp_path / "gb.onnx").write_bytes(graph.SerializeToString())
    np.save(tmp_path / "X.npy", X)
    result = hec("compile", tmp_path / "gb.onnx", "--calibration", tmp_path / "X.npy", "-o", tmp_path / "gb.hec")
    assert result.exit_code == 1, result.output
    line = result.output.strip()
    assert "not supported" in line and "GradientBoosting" in line
    assert ("XGBRegressor" in line) == (kind == "regressor") and ("XGBClassifier" in line) == (kind == "classifier")


# ---- item 4: hec run with no worker anywhere says so, once, and keeps waiting ---------------------------


def test_hec_run_with_no_worker_says_how_to_start_one(tmp_path, monkeypatch):
    import time

    from sklearn.linear_model import Ridge

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HEC_QUEUE", raising=False)
    monkeypatch.setenv("HEC_IDLE_NOTICE_S", "1")
    X, y = load_diabetes(return_X_y=True)
    he_compute.compile(Ridge().fit(X, y), X, scheme="ckks").save(tmp_path / "m.hec")
    np.save(tmp_path / "x.npy", X[:8])
    assert hec("keygen", "m.hec", "--keys", "keys").exit_code == 0
    assert hec("encrypt", "m.hec", "x.npy", "-o", "x.enc").exit_code == 0
    start = time.monotonic()
    result = hec("run", "x.enc", "-o", "y.enc", "--timeout", "4")
    assert time.monotonic() - start > 3.5  # it went on waiting after saying so
    notices = [line for line in result.output.splitlines() if "no worker has claimed" in line]
    assert len(notices) == 1 and "hec worker --queue sqlite://" in notices[0], result.output
    assert notices[0].startswith("Warning: ") and "resumes" in notices[0]


# ---- items 9 and 10: small things a new user trips on ---------------------------------------------------


def test_hec_encrypt_says_which_key_directory_it_found(tmp_path, monkeypatch):
    from sklearn.linear_model import Ridge

    monkeypatch.chdir(tmp_path)
    X, y = load_diabetes(return_X_y=True)
    he_compute.compile(Ridge().fit(X, y), X, scheme="ckks").save(tmp_path / "m.hec")
    np.save(tmp_path / "x.npy", X[:4])
    assert hec("keygen", "m.hec", "--keys", "project-a/keys").exit_code == 0
    result = hec("encrypt", "m.hec", "x.npy", "-o", "x.enc")
    assert result.exit_code == 0, result.output
    assert f"using keys in {(tmp_path / 'project-a' / 'keys').resolve()}" in result.output, result.output


def test_a_usage_error_is_one_line_with_the_exit_status_the_readme_gives(tmp_path):
    result = hec("encrypt", tmp_path / "m.hec")  # INPUT and -o missing
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "encrypt --help" in lines[0] and "Missing argument" in lines[0]
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "exit status 2" in readme and "usage error" in readme


@pytest.mark.parametrize("args", [["--bogus"], ["--debug", "--bogus", "info"], ["--debug=yes", "info"]])
def test_a_usage_error_before_the_command_name_is_one_line_too(args):
    result = hec(*args)  # an option hec itself does not know, before any command
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "--help)" in lines[0] and "Usage:" not in result.output
    assert hec().exit_code == 2 and "Commands:" in hec().output  # bare hec still shows its help


def test_hec_worker_with_two_processes_says_who_it_is_once(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HEC_QUEUE": f"sqlite:///{tmp_path}/queue.db"}
    done = subprocess.run([sys.executable, "-m", "he_compute", "worker", "--concurrency", "2", "--burst",
                           "--state", str(tmp_path / "state")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sum("identity" in line for line in done.stderr.splitlines()) == 1, done.stderr
    assert sum("hec worker: devices" in line for line in done.stderr.splitlines()) == 1, done.stderr


def test_a_coordinator_runs_idle_and_timeout_lines_name_the_coordinator_worker_command():
    """Item 9 (found later): through a coordinator the line said ``hec worker --queue https://...``, a command
    that cannot work (a coordinator's workers never see its queue)."""
    from types import SimpleNamespace

    from he_compute.client.run.supervisor import Supervisor, Verification

    remote = Supervisor(SimpleNamespace(url="https://coord:8443"), None, Verification(), device="cpu", audit=None)
    local = Supervisor(SimpleNamespace(url="sqlite://.hec/queue.db"), None, Verification(), device="cpu", audit=None)
    assert remote._worker_command() == "hec worker --coordinator https://coord:8443"
    assert local._worker_command() == "hec worker --queue sqlite://.hec/queue.db"
