"""The CKKS engine on real data: accuracy by construction, packings, deeper models, operation counts.

Every encrypted result is compared with the clear float model on a full test
split of a scikit-learn dataset; the manifest's predicted error must bound the
error observed under encryption.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import he_compute
from he_compute.errors import KeyMismatchError, UnsupportedModelError

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # training here must give the same weights under any machine load
from torch_support import Square, clear, standardized_cancer, train  # noqa: E402


@pytest.fixture(scope="module")
def cancer():
    return standardized_cancer()


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=0.2, random_state=0, stratify=y)


def encrypted(bundle, X, keys_dir):
    client = he_compute.Client.keygen(bundle, keys_dir)
    ev = he_compute.Evaluator(bundle.server_part())
    keys = ev.load_keys(he_compute.read_evaluation_keys(client.evaluation_keys_path))
    return client.decrypt(ev.evaluate(client.encrypt(X), keys)), client


def seq(*layers):
    torch.manual_seed(0)
    return torch.nn.Sequential(*layers)


def test_relu_mlp_meets_its_max_error_and_names_the_relu(cancer, tmp_path):
    X_tr, X_te, y_tr, _ = cancer
    net = train(seq(torch.nn.Linear(30, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)), X_tr, y_tr, 40)
    path = tmp_path / "mlp.onnx"
    torch.onnx.export(net, (torch.tensor(X_tr[:1], dtype=torch.float32),), str(path), opset_version=17,
                      input_names=["input"], output_names=["output"], dynamic_axes={"input": {0: "batch"}})
    bundle = he_compute.compile(path, X_tr, scheme="ckks", max_error=0.5)
    ck = bundle.manifest["ckks"]
    (fit,) = ck["activations"]
    assert "Relu" in fit["layer"] and fit["groups"] == 16 and fit["degree"] >= 7
    assert ck["predicted_max_error"] <= 0.5 and ck["calibration_max_error"] <= ck["predicted_max_error"]
    out, _ = encrypted(bundle, X_te, tmp_path / "keys")
    ref = clear(net, X_te)
    err = float(np.abs(out - ref).max())
    assert err <= ck["predicted_max_error"]
    assert np.mean(out.argmax(1) == ref.argmax(1)) >= 0.99


def test_max_error_trades_depth_for_accuracy_and_unreachable_targets_are_refused(cancer):
    X_tr, _, y_tr, _ = cancer
    net = train(seq(torch.nn.Linear(30, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)), X_tr, y_tr, 40)
    loose = he_compute.compile(net, X_tr, scheme="ckks", max_error=1.0).manifest["ckks"]
    tight = he_compute.compile(net, X_tr, scheme="ckks", max_error=0.01).manifest["ckks"]
    assert tight["multiplicative_depth"] > loose["multiplicative_depth"]
    assert tight["predicted_max_error"] <= 0.01 < loose["predicted_max_error"] <= 1.0
    with pytest.raises(UnsupportedModelError, match=r"^max_error 1e-09 cannot be met: the best reachable bound"):
        he_compute.compile(net, X_tr, scheme="ckks", max_error=1e-9)
    with pytest.warns(UserWarning, match="exceeds max_error"):
        forced = he_compute.compile(net, X_tr, scheme="ckks", max_error=0.01, activation_degree=3)
    assert forced.manifest["ckks"]["warnings"] and forced.manifest["ckks"]["activations"][0]["degree"] == 3


def test_single_packing_digits_with_only_the_rotation_keys_it_needs(digits, tmp_path):
    from he_compute.schemes.ckks.payload import unpack

    X_tr, X_te, y_tr, _ = digits
    net = train(seq(torch.nn.Linear(64, 32), Square(), torch.nn.Linear(32, 10)), X_tr, y_tr, 60, 2e-2)
    bundle = he_compute.compile(net, X_tr, scheme="ckks", batch_size=1)
    ck = bundle.manifest["ckks"]
    assert ck["packing"] == "single" and "batch_size=1" in ck["packing_reason"]
    assert ck["block"] == 64 and ck["samples_per_ciphertext"] == ck["slots"] // 128
    assert -64 in ck["galois_steps"] and len(ck["galois_steps"]) <= 16  # baby, giant and duplication steps only
    assert he_compute.compile(net, X_tr, scheme="ckks").manifest["ckks"]["packing"] == "batch"
    out, client = encrypted(bundle, X_te, tmp_path / "keys")
    ref = clear(net, X_te)
    assert np.mean(out.argmax(1) == ref.argmax(1)) >= 0.99 and np.abs(out - ref).max() <= ck["predicted_max_error"]
    assert client.evaluation_keys_path.stat().st_size < 60e6
    keys = unpack(he_compute.read_evaluation_keys(client.evaluation_keys_path).sections["keys"], role="keys")
    assert keys.extra["galois_steps"] == ck["galois_steps"]
    # Keys made for the batch bundle have no rotations: the single-packing worker refuses them.
    batch = he_compute.compile(net, X_tr, scheme="ckks", packing="batch")
    other = he_compute.Client.keygen(batch, tmp_path / "batch-keys")
    server = he_compute.Evaluator(bundle.server_part())._backend
    with pytest.raises(KeyMismatchError, match="lack rotations"):
        server.load_keys(he_compute.read_evaluation_keys(other.evaluation_keys_path).sections["keys"])


@pytest.mark.slow
def test_digits_cnn_conv_relu_conv_relu_linear(digits, tmp_path):
    X_tr, X_te, y_tr, y_te = (a.reshape(-1, 1, 8, 8) if a.ndim == 2 else a for a in digits)
    net = train(seq(torch.nn.Conv2d(1, 4, 3, stride=2, padding=1), torch.nn.ReLU(),
                    torch.nn.Conv2d(4, 4, 3, stride=2, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                    torch.nn.Linear(16, 10)), X_tr, y_tr, 120, 2e-2)
    bundle = he_compute.compile(net, X_tr, scheme="ckks", max_error=2.0, packing="single")
    ck = bundle.manifest["ckks"]
    ops = [layer["op"] for layer in json.loads(bundle.server["plan.json"])["layers"]]
    assert ops == ["conv2d", "poly", "conv2d", "poly", "reshape", "linear"]
    assert [a["groups"] for a in ck["activations"]] == [4, 4]  # one polynomial per channel
    out, _ = encrypted(bundle, X_te, tmp_path / "keys")
    ref = clear(net, X_te)
    assert np.mean(ref.argmax(1) == y_te) > 0.85
    assert np.mean(out.argmax(1) == ref.argmax(1)) >= 0.98 and np.abs(out - ref).max() <= ck["predicted_max_error"]


def test_activation_after_pooling_maps_its_range_inside_the_polynomial(digits, tmp_path):
    X_tr, X_te, y_tr, _ = (a.reshape(-1, 1, 8, 8) if a.ndim == 2 else a for a in digits)
    net = train(seq(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.AvgPool2d(2), torch.nn.ReLU(), torch.nn.Flatten(),
                    torch.nn.Linear(32, 10)), X_tr, y_tr, 80, 2e-2)
    bundle = he_compute.compile(net, X_tr, scheme="ckks", max_error=2.0)
    poly = next(la for la in json.loads(bundle.server["plan.json"])["layers"] if la["op"] == "poly")
    assert len(poly["domain"]) == 2  # no linear layer right before: the map costs one level instead
    out, _ = encrypted(bundle, X_te, tmp_path / "keys")
    ref = clear(net, X_te)
    assert np.mean(out.argmax(1) == ref.argmax(1)) >= 0.98
    assert np.abs(out - ref).max() <= bundle.manifest["ckks"]["predicted_max_error"]


def deep_mlp(hidden: int, X, y):
    layers = [torch.nn.Linear(30, 16), torch.nn.ReLU()]
    for _ in range(hidden - 1):
        layers += [torch.nn.Linear(16, 16), torch.nn.ReLU()]
    return train(seq(*layers, torch.nn.Linear(16, 2)), X, y, 60)


@pytest.mark.slow
def test_four_hidden_layer_mlp_compiles_runs_and_too_deep_a_model_is_refused_with_its_depth(cancer, tmp_path):
    from he_compute.schemes.ckks.plan import check_sections, run_plan

    X_tr, X_te, y_tr, _ = cancer
    with pytest.raises(UnsupportedModelError, match=r"needs multiplicative depth 43, more than 128-bit"):
        he_compute.compile(deep_mlp(7, X_tr, y_tr), X_tr, scheme="ckks", activation_degree=31, engine="tenseal")
    from he_compute.schemes.ckks.boot_client import wanted

    assert wanted("auto", 43, 8)  # without engine="tenseal" it goes to the bootstrapping engine instead
    net = deep_mlp(4, X_tr, y_tr)
    ref = clear(net, X_te)
    span = np.maximum(np.ptp(X_tr, 0), np.median(np.ptp(X_tr, 0)))
    X_in = np.clip(X_te, X_tr.min(0) - 0.5 * span, X_tr.max(0) + 0.5 * span)  # as the client does
    # At a tight target the plan compiles to N=32768 (checked in the clear: encrypting it takes minutes here)
    # and agrees, or the target is refused in one line with the best bound reachable.
    try:
        full = he_compute.compile(net, X_tr, scheme="ckks", max_error=0.03 * np.ptp(clear(net, X_tr)))
    except UnsupportedModelError as exc:
        assert "cannot be met: the best reachable bound is" in str(exc)
    else:
        plan, weights = check_sections(full.server)
        sim = run_plan(plan, weights, X_in)
        # Errors of 3% of the logit span still flip a few close calls through four ReLU layers.
        assert np.mean(sim.argmax(1) == ref.argmax(1)) >= 0.95
        assert np.abs(sim - ref).max() <= full.manifest["ckks"]["predicted_max_error"]
    # A loose target fits N=16384 and runs encrypted, in one single-packed ciphertext for the whole split.
    bundle = he_compute.compile(net, X_tr, scheme="ckks", max_error=40.0, packing="single")
    ck = bundle.manifest["ckks"]
    assert ck["multiplicative_depth"] >= 13 and ck["poly_modulus_degree"] <= 16384
    out, _ = encrypted(bundle, X_te, tmp_path / "keys")
    plan, weights = check_sections(bundle.server)
    assert np.abs(out - ref).max() <= ck["predicted_max_error"]
    # What encryption adds to the plan's own arithmetic is CKKS noise, amplified by every polynomial's slope:
    # 0.9 to 3.2 in runs here (random from run to run), against a bound of about 30. A wrong scale or level
    # gives errors of the order of the outputs themselves, far above a quarter of the bound.
    assert np.abs(out - run_plan(plan, weights, X_in)).max() <= 0.25 * ck["predicted_max_error"]


def test_op_counts_one_rescale_per_output(cancer):
    from he_compute.schemes.ckks.opcount import op_counts
    from he_compute.schemes.ckks.plan import check_sections

    X_tr, _, y_tr, _ = cancer
    net = train(seq(torch.nn.Linear(30, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)), X_tr, y_tr, 40)
    bundle = he_compute.compile(net, X_tr, scheme="ckks", packing="batch", max_error=4.0)
    plan, weights = check_sections(bundle.server)
    counts = op_counts(plan, weights, "batch")
    # The 30 -> 16 layer: 480 plaintext products at the top level, 16 rescales (not 480), no rotation.
    assert counts["by_level"]["mul_plain", 0] == 480 and counts["by_level"]["rescale", 0] == 16
    assert "rotate" not in counts["counts"] and counts["counts"]["relin"] <= 16 + 2


def test_linear_models_use_one_prime_half_the_bytes_and_match_the_clear_model(cancer, tmp_path):
    """A batch-packed linear model's one product stays unrescaled in a single 60-bit prime: no rescale,
    no key switching, every ciphertext half the size of a [outer, scale, special] chain's; the decrypted
    scores still match scikit-learn on the whole test split within the predicted error."""
    from sklearn.linear_model import LinearRegression, LogisticRegression

    from he_compute.schemes.ckks.opcount import op_counts
    from he_compute.schemes.ckks.plan import check_sections

    X_tr, X_te, y_tr, _ = cancer
    logreg = LogisticRegression(max_iter=1000).fit(X_tr, y_tr)
    clients = {}
    for model in (logreg, LinearRegression().fit(X_tr, 3.0 * y_tr)):
        bundle = he_compute.compile(model, X_tr, scheme="ckks")
        ck = bundle.manifest["ckks"]
        assert ck["coeff_mod_bit_sizes"] == [60] and ck["relin_keys"] is False and not ck["galois_steps"]
        assert ck["scale_bits"] >= 26 and ck["weight_scale_bits"] >= 20
        out, clients[type(model).__name__] = encrypted(bundle, X_te, tmp_path / type(model).__name__)
        if isinstance(model, LogisticRegression):
            ref, got = model.decision_function(X_te), np.log(out[:, 1] / out[:, 0])
            assert np.array_equal(out.argmax(1), model.predict(X_te))
        else:
            ref, got = model.predict(X_te), out.ravel()
        assert float(np.abs(got - ref).max()) <= ck["predicted_max_error"]
        plan, weights = check_sections(bundle.server)
        counts = op_counts(plan, weights, "batch", chain=ck["coeff_mod_bit_sizes"])["counts"]
        assert counts.get("rescale", 0) == 0 and counts["mul_plain"] == 30
    # Raw features (up to ~4,000): the weights' rounding (to 2**-weight_scale) now shows, and is predicted.
    from sklearn.datasets import load_breast_cancer

    X_raw, y_raw = load_breast_cancer(return_X_y=True)
    raw = LinearRegression().fit(X_raw[:400], y_raw[:400])
    bundle = he_compute.compile(raw, X_raw[:400], scheme="ckks")
    out, _ = encrypted(bundle, X_raw[400:], tmp_path / "raw")
    err = float(np.abs(out.ravel() - raw.predict(X_raw[400:])).max())
    assert bundle.manifest["ckks"]["coeff_mod_bit_sizes"] == [60] and err <= bundle.manifest["ckks"]["predicted_max_error"]
    # Forced onto the usual three-prime chain, the same data take about twice the bytes.
    three = he_compute.compile(logreg, X_tr, scheme="ckks", scale_bits=40)
    assert len(three.manifest["ckks"]["coeff_mod_bit_sizes"]) == 3
    one = len(clients["LogisticRegression"].encrypt(X_te).to_bytes())
    assert 1.5 < len(he_compute.Client.keygen(three, tmp_path / "three").encrypt(X_te).to_bytes()) / one < 2.3


def test_a_tampered_one_prime_manifest_is_refused_on_both_sides(cancer):
    """One prime holds one product without key switching, and only below the prime: a manifest that asks
    more of it (a deeper plan, keys, single packing, a product scale above the prime) is refused before
    SEAL sees it, by the client and by the worker."""
    from sklearn.linear_model import LogisticRegression

    from he_compute import schemes
    from he_compute.errors import FormatError, SecurityError

    X_tr, _, y_tr, _ = cancer
    bundle = he_compute.compile(LogisticRegression(max_iter=1000).fit(X_tr, y_tr), X_tr, scheme="ckks")
    good = json.loads(json.dumps(bundle.manifest))
    for change in ({"weight_scale_bits": 40}, {"weight_scale_bits": 8}, {"relin_keys": True},
                   {"galois_steps": [1]}, {"packing": "single"}, {"multiplicative_depth": 2}):
        manifest = json.loads(json.dumps(good))
        manifest["ckks"].update(change)
        with pytest.raises((SecurityError, UnsupportedModelError, FormatError)):
            schemes.client("ckks").open_client(manifest, bundle.client, None)
        with pytest.raises((SecurityError, UnsupportedModelError, FormatError)):
            schemes.server("ckks").open_server(manifest, bundle.server)
