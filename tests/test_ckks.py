"""CKKS backend end to end: real sklearn data, encrypted results compared with the clear models.

Every check goes through the public path (compile, Client.keygen, encrypt,
Evaluator with the server part and evaluation keys only, decrypt).  The
agreement thresholds are the issue's: >= 99% on breast cancer, >= 98% on digits.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import he_compute
from he_compute.errors import FormatError, SecurityError, UnsafeArtifactError, UnsupportedModelError

torch = pytest.importorskip("torch")
from torch_support import Square, standardized_cancer  # noqa: E402
from torch_support import clear as _clear  # noqa: E402
from torch_support import train as _train  # noqa: E402


@pytest.fixture(scope="module")
def cancer_std():
    """Standardized breast-cancer split (80/20, stratified, seeded)."""
    return standardized_cancer()


def _mlp(act, X, y):
    torch.manual_seed(0)
    return _train(torch.nn.Sequential(torch.nn.Linear(30, 16), act, torch.nn.Linear(16, 2)), X, y, epochs=40)


def _onnx(model, sample, path):
    torch.onnx.export(model, (torch.tensor(sample[:1], dtype=torch.float32),), str(path), opset_version=17,
                      input_names=["input"], output_names=["output"], dynamic_axes={"input": {0: "batch"}})
    return path


def encrypted_run(bundle, X, keys_dir):
    """The whole public path; the evaluator sees only the server part and the evaluation keys."""
    client = he_compute.Client.keygen(bundle, keys_dir)
    enc = client.encrypt(X)
    evaluator = he_compute.Evaluator(bundle.server_part())
    keys = evaluator.load_keys(he_compute.read_evaluation_keys(client.evaluation_keys_path))
    return client.decrypt(evaluator.evaluate(enc, keys))


def _report(name, clear_out, enc_out, y):
    agree = float(np.mean(clear_out.argmax(1) == enc_out.argmax(1)))
    acc_c, acc_e = float(np.mean(clear_out.argmax(1) == y)), float(np.mean(enc_out.argmax(1) == y))
    err = float(np.max(np.abs(clear_out - enc_out)))
    print(f"{name}: agreement {agree:.2%}, accuracy clear {acc_c:.2%} encrypted {acc_e:.2%}, max abs error {err:.3g}")
    return agree, acc_c, acc_e, err


def test_logistic_regression_batch(cancer_std, tmp_path):
    from sklearn.linear_model import LogisticRegression

    X_tr, X_te, y_tr, y_te = cancer_std
    model = LogisticRegression(max_iter=1000).fit(X_tr, y_tr)
    bundle = he_compute.compile(model, X_tr, scheme="ckks")
    assert bundle.manifest["ckks"]["packing"] == "batch" and bundle.manifest["output_shape"] == [2]
    out = encrypted_run(bundle, X_te, tmp_path / "keys")
    clear = model.predict_proba(X_te)
    agree, acc_c, acc_e, err = _report("logreg", clear, out, y_te)
    assert agree >= 0.99 and abs(acc_c - acc_e) <= 0.01
    assert err < 1e-3  # probabilities: a purely linear plan is nearly exact


def test_chunks_encrypted_in_forked_processes_come_back_complete_and_in_order(cancer_std, tmp_path, monkeypatch):
    """Batch encryption forks one child per other core; every chunk comes back in input order, and a
    child that fails (here: every forked child) costs only time: the parent encrypts its share itself."""
    import os

    from sklearn.linear_model import LogisticRegression

    from he_compute.schemes.ckks import client as ckks_client

    X_tr, X_te, y_tr, _ = cancer_std
    model = LogisticRegression(max_iter=1000).fit(X_tr, y_tr)
    bundle = he_compute.compile(model, X_tr, scheme="ckks")
    client = he_compute.Client.keygen(bundle, tmp_path / "keys")
    X = np.resize(X_te, (3 * bundle.manifest["ckks"]["slots"] + 5, X_te.shape[1]))  # 4 chunks, the last padded to full size
    monkeypatch.setattr(ckks_client.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(ckks_client.os, "sched_getaffinity", lambda _: {0, 1, 2, 3})
    forks = []
    real_fork = os.fork

    def counting_fork():
        forks.append(1)
        return real_fork()

    monkeypatch.setattr(ckks_client.os, "fork", counting_fork)
    ev = he_compute.Evaluator(bundle.server_part())
    keys = ev.load_keys(he_compute.read_evaluation_keys(client.evaluation_keys_path))
    enc = client.encrypt(X)
    assert len(forks) == 3 and enc.meta["chunks"] == [4096] * 4 and enc.meta["n_samples"] == len(X)
    np.testing.assert_allclose(client.decrypt(ev.evaluate(enc, keys)), model.predict_proba(X), atol=1e-4)

    parent = os.getpid()
    real_batch = ckks_client.CKKSClient._encrypt_batch

    def failing_in_children(self, enc, part):
        if os.getpid() != parent:
            raise RuntimeError("a forked child fails")
        return real_batch(self, enc, part)

    monkeypatch.setattr(ckks_client.CKKSClient, "_encrypt_batch", failing_in_children)
    forks.clear()  # (decrypting forked one more: the bounded child of he_compute.client.bounded)
    enc = client.encrypt(X)
    assert len(forks) == 3 and enc.meta["chunks"] == [4096] * 4 and enc.meta["n_samples"] == len(X)
    np.testing.assert_allclose(client.decrypt(ev.evaluate(enc, keys)), model.predict_proba(X), atol=1e-4)


@pytest.mark.parametrize("act_name", ["square", "relu"])
def test_mlp_onnx_batch(cancer_std, tmp_path, act_name):
    X_tr, X_te, y_tr, y_te = cancer_std
    model = _mlp(Square() if act_name == "square" else torch.nn.ReLU(), X_tr, y_tr)
    path = _onnx(model, X_tr, tmp_path / "mlp.onnx")
    bundle = he_compute.compile(path, X_tr, scheme="ckks")
    ckks = bundle.manifest["ckks"]
    if act_name == "relu":
        (fit,) = ckks["activations"]
        assert fit["activation"] == "relu" and fit["degree"] in (3, 7, 15, 31, 63) and fit["max_fit_error"] > 0
        assert fit["groups"] == 16  # one polynomial per neuron
    else:
        assert ckks["activations"] == [] and ckks["multiplicative_depth"] == 3
    out = encrypted_run(bundle, X_te, tmp_path / "keys")
    agree, acc_c, acc_e, err = _report(f"mlp-{act_name}", _clear(model, X_te), out, y_te)
    assert agree >= 0.99 and abs(acc_c - acc_e) <= 0.01


def test_mlp_single_packing_matches_batch(cancer_std, tmp_path):
    X_tr, X_te, y_tr, _ = cancer_std
    model = _mlp(Square(), X_tr, y_tr)
    bundle = he_compute.compile(model, X_tr, scheme="ckks", packing="single")
    assert bundle.manifest["ckks"]["packing"] == "single" and bundle.manifest["ckks"]["galois_keys"]
    X = X_te[:3]
    out = encrypted_run(bundle, X, tmp_path / "keys")
    clear = _clear(model, X)
    assert out.shape == (3, 2)
    assert np.max(np.abs(out - clear)) < 1e-2 * max(1.0, np.abs(clear).max())


def test_auto_packing_picks_single_for_tiny_batches(cancer_std):
    X_tr, _, y_tr, _ = cancer_std
    model = _mlp(Square(), X_tr, y_tr)
    assert he_compute.compile(model, X_tr, scheme="ckks", batch_size=1).manifest["ckks"]["packing"] == "single"
    assert he_compute.compile(model, X_tr, scheme="ckks").manifest["ckks"]["packing"] == "batch"


def test_digits_convnet(tmp_path):
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).reshape(-1, 1, 8, 8)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, stride=2, padding=1), torch.nn.BatchNorm2d(4), Square(), torch.nn.Flatten(),
        torch.nn.Linear(64, 10),
    )
    net = _train(net, X_tr, y_tr, epochs=60, lr=2e-2)
    bundle = he_compute.compile(net, X_tr, scheme="ckks")
    assert bundle.manifest["input_shape"] == [1, 8, 8]
    ops = [layer["op"] for layer in json.loads(bundle.server["plan.json"])["layers"]]
    assert ops == ["conv2d", "square", "reshape", "linear"]  # BatchNorm folded into the conv
    out = encrypted_run(bundle, X_te, tmp_path / "keys")
    agree, acc_c, _, _ = _report("digits-conv", _clear(net, X_te), out, y_te)
    assert acc_c > 0.9 and agree >= 0.98


def test_cli_round_trip(cancer_std, tmp_path):
    from click.testing import CliRunner

    from he_compute.cli import main

    X_tr, X_te, y_tr, _ = cancer_std
    model = _mlp(Square(), X_tr, y_tr)
    _onnx(model, X_tr, tmp_path / "x.onnx")
    np.save(tmp_path / "X.npy", X_tr)
    np.save(tmp_path / "Xte.npy", X_te[:20])
    runner = CliRunner()
    steps = [
        ["compile", str(tmp_path / "x.onnx"), "--scheme", "ckks", "--calibration", str(tmp_path / "X.npy"),
         "-o", str(tmp_path / "b.hec")],
        ["keygen", str(tmp_path / "b.hec"), "--keys", str(tmp_path / "keys")],
        ["encrypt", str(tmp_path / "b.hec"), str(tmp_path / "Xte.npy"), "--keys", str(tmp_path / "keys"),
         "-o", str(tmp_path / "x.enc")],
        ["eval", str(tmp_path / "x.enc"), "--bundle", str(tmp_path / "b.hec"), "--eval-keys",
         str(tmp_path / "keys" / "evaluation.keys"), "-o", str(tmp_path / "y.enc")],
        ["decrypt", str(tmp_path / "y.enc"), "--keys", str(tmp_path / "keys"), "-o", str(tmp_path / "y.npy")],
    ]
    for args in steps:
        result = runner.invoke(main, args)
        assert result.exit_code == 0, (args[0], result.output)
    out = np.load(tmp_path / "y.npy")
    clear = _clear(model, X_te[:20])
    assert np.array_equal(out.argmax(1), clear.argmax(1))
    assert np.max(np.abs(out - clear)) < 1e-2 * max(1.0, np.abs(clear).max())


def test_unsupported_op_names_op_and_node(cancer_std):
    X_tr, _, _, _ = cancer_std

    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(30, 4)

        def forward(self, x):
            return torch.exp(self.fc(x))

    with pytest.raises(UnsupportedModelError, match=r"op Exp \(node .*\)"):
        he_compute.compile(Odd(), X_tr, scheme="ckks")


def test_security_refusal(cancer_std):
    from sklearn.linear_model import LogisticRegression

    X_tr, _, y_tr, _ = cancer_std
    model = LogisticRegression(max_iter=1000).fit(X_tr, y_tr)
    with pytest.raises(SecurityError, match="exceed the 128-bit bound of 218 for N=8192"):
        he_compute.compile(model, X_tr, scheme="ckks", poly_modulus_degree=8192, coeff_mod_bit_sizes=[60, 40, 40, 40, 60])
    bundle = he_compute.compile(model, X_tr, scheme="ckks")
    assert bundle.manifest["security_level"] == 128
    # A tampered manifest cannot weaken the keys either: the client refuses to generate them, the worker to run.
    # The ring is shrunk to the largest degree whose 128-bit budget the chain exceeds (a linear model's one
    # 60-bit prime is still secure at N=4096: 2048 is the first ring too small for it).
    from he_compute.schemes.ckks.params import MAX_COEFF_BITS_128

    bits = sum(bundle.manifest["ckks"]["coeff_mod_bit_sizes"])
    bundle.manifest["ckks"]["poly_modulus_degree"] = max(n for n, b in MAX_COEFF_BITS_128.items() if b < bits)
    with pytest.raises(SecurityError):
        he_compute.schemes.client("ckks").open_client(bundle.manifest, bundle.client, None)
    with pytest.raises(SecurityError):
        he_compute.schemes.server("ckks").open_server(bundle.manifest, bundle.server)


def test_malformed_plan_refused(cancer_std):
    from sklearn.linear_model import LinearRegression

    from he_compute import schemes

    ckks = schemes.server("ckks")

    X_tr, _, y_tr, _ = cancer_std
    bundle = he_compute.compile(LinearRegression().fit(X_tr, y_tr), X_tr, scheme="ckks")
    ckks.check_server_part(bundle.manifest, bundle.server)  # the untouched part passes
    plan = json.loads(bundle.server["plan.json"])
    bad_op = json.loads(json.dumps(plan))
    bad_op["layers"][0]["op"] = "exec"
    with pytest.raises(FormatError, match="unknown op 'exec'"):
        ckks.check_server_part(bundle.manifest, {**bundle.server, "plan.json": json.dumps(bad_op).encode()})
    bad_shape = json.loads(json.dumps(plan))
    bad_shape["layers"][0]["out_shape"] = [7]
    with pytest.raises(FormatError):
        ckks.check_server_part(bundle.manifest, {**bundle.server, "plan.json": json.dumps(bad_shape).encode()})
    with pytest.raises(FormatError, match="not valid JSON"):
        ckks.check_server_part(bundle.manifest, {**bundle.server, "plan.json": b"{"})
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    weight = plan["layers"][0]["weight"]
    with pytest.raises(UnsafeArtifactError, match="object arrays are refused"):
        ckks.check_server_part(bundle.manifest, {**bundle.server, weight: buf.getvalue()})
    with pytest.raises(UnsafeArtifactError, match="unexpected sections"):
        ckks.check_server_part(bundle.manifest, {**bundle.server, "model.pkl": b"\x80\x04."})


def test_linear_regression_outputs(cancer_std, tmp_path):
    from sklearn.linear_model import LinearRegression

    X_tr, X_te, y_tr, _ = cancer_std
    model = LinearRegression().fit(X_tr, y_tr)
    bundle = he_compute.compile(model, X_tr, scheme="ckks")
    assert bundle.manifest["task"] == "regressor"
    out = encrypted_run(bundle, X_te, tmp_path / "keys")
    assert out.shape == (len(X_te), 1)
    assert np.max(np.abs(out[:, 0] - model.predict(X_te))) < 1e-3
