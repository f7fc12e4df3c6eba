"""A stranger's plan or payload cannot make a worker allocate without bound; errors stay what they are.

The first test is the attack from the security issue: a 225-byte plan whose
weightless ``avgpool2d`` over a 316x316 input passed the old checks and then
asked ``np.eye(99856)`` (74 GiB).  It is built with the module's own plan
version, so it reaches the size checks (the old code accepted it).
"""

from __future__ import annotations

import io
import json
import tracemalloc

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import he_compute
from he_compute.errors import ConfigError, FormatError, KeyMismatchError
from he_compute import schemes
from he_compute.schemes.ckks import plan as plan_mod

ckks = schemes.server("ckks")

pytest.importorskip("tenseal")


@pytest.fixture(scope="module")
def logreg_bundle():
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    return he_compute.compile(LogisticRegression(max_iter=1000).fit(X, y), X, scheme="ckks"), X


def crafted_plan() -> bytes:
    layer = {"op": "avgpool2d", "name": "p", "in_shape": [1, 316, 316], "out_shape": [1, 316, 316],
             "kernel": [1, 1], "stride": [1, 1], "padding": [0, 0]}
    plan = {"version": plan_mod.PLAN_VERSION, "input_shape": [1, 316, 316], "output_shape": [99856], "layers": [layer]}
    return json.dumps(plan).encode()


def test_crafted_225_byte_plan_is_refused_before_allocating(logreg_bundle):
    bundle, _ = logreg_bundle
    data = crafted_plan()
    assert len(data) == 225
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="above the limit") as info:
            ckks.check_server_part(bundle.manifest, {"plan.json": data})
        with pytest.raises(FormatError, match="above the limit"):
            ckks.open_server(bundle.manifest, {"plan.json": data})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20 and "\n" not in str(info.value)


def test_every_plan_size_is_bounded(logreg_bundle):
    bundle, _ = logreg_bundle
    plan = json.loads(bundle.server["plan.json"])
    lim = plan_mod._limits.Limits(max_layers=1, max_matrix_entries=10, max_degree=3)
    weights = {k: plan_mod.load_npy(v, k) for k, v in bundle.server.items() if k.endswith(".npy")}
    with pytest.raises(FormatError, match="matrix of layer .* above the limit of 10"):
        plan_mod.check_plan(plan, weights, lim)
    two = {**plan, "layers": plan["layers"] * 2}
    with pytest.raises(FormatError, match="number of layers is 2, above the limit of 1"):
        plan_mod.check_plan(two, weights, lim)
    poly = {"op": "poly", "name": "act", "in_shape": [2], "out_shape": [2], "activation": "relu",
            "coeffs": [[0.0] * 9]}
    with pytest.raises(FormatError, match="2..4 finite coefficients"):
        plan_mod._check_poly(poly, [2], lim)


def test_npy_and_payload_headers_are_checked_before_reading():
    from he_compute.schemes.ckks.payload import _LEN, _PREFIX, MAGIC, PAYLOAD_VERSION, unpack

    buf = io.BytesIO()
    np.save(buf, np.zeros(4))
    huge = buf.getvalue().replace(b"(4,)", b"(1000000000,)")
    with pytest.raises(FormatError, match="number of values is 1000000000, above the limit"):
        plan_mod.load_npy(huge, "w.npy")
    header = json.dumps({"role": "input", "packing": "batch", "n_samples": 1, "n_ciphertexts": 10**9}).encode()
    payload = _PREFIX.pack(MAGIC, PAYLOAD_VERSION, len(header)) + header + _LEN.pack(8) + b"x" * 8
    with pytest.raises(FormatError, match="number of ciphertexts is 1000000000, above the limit"):
        unpack(payload, role="input")


def test_limits_are_configurable(logreg_bundle, monkeypatch):
    bundle, _ = logreg_bundle
    ckks.check_server_part(bundle.manifest, bundle.server)
    monkeypatch.setenv("HEC_CKKS_LIMITS", '{"max_features": 10}')
    with pytest.raises(FormatError, match="above the limit of 10"):
        ckks.check_server_part(bundle.manifest, bundle.server)
    monkeypatch.setenv("HEC_CKKS_LIMITS", '{"max_fetaures": 10}')
    with pytest.raises(ConfigError, match="HEC_CKKS_LIMITS is invalid"):
        ckks.check_server_part(bundle.manifest, bundle.server)


def test_conv_and_pool_matrices_match_the_layers_without_an_identity():
    rng = np.random.default_rng(0)
    conv = {"op": "conv2d", "name": "c", "in_shape": [2, 5, 6], "out_shape": [3, 3, 3], "weight": "w.npy",
            "bias": "b.npy", "stride": [2, 2], "padding": [1, 1]}
    pool = {"op": "avgpool2d", "name": "p", "in_shape": [2, 5, 6], "out_shape": [2, 3, 3], "kernel": [2, 3],
            "stride": [2, 2], "padding": [1, 1], "count_include_pad": False}
    weights = {"w.npy": rng.normal(size=(3, 2, 3, 3)), "b.npy": rng.normal(size=3)}
    x = rng.normal(size=(4, 2, 5, 6))
    for layer in (conv, pool):
        matrix, bias = plan_mod.affine_matrix(layer, weights)
        expected = plan_mod.run_layer(layer, x, weights).reshape(4, -1)
        assert np.allclose(x.reshape(4, -1) @ matrix.T + bias, expected)


def test_only_known_key_errors_become_key_mismatch(logreg_bundle, tmp_path, monkeypatch):
    from he_compute.schemes.ckks import server

    bundle, X = logreg_bundle
    client = he_compute.Client.keygen(bundle, tmp_path / "keys")
    evaluator = he_compute.Evaluator(bundle.server_part())
    keys = evaluator.load_keys(he_compute.read_evaluation_keys(client.evaluation_keys_path))
    enc = client.encrypt(X[:3])

    def boom(*args, **kwargs):
        raise RuntimeError("a bug, not a key problem")

    monkeypatch.setattr(server, "run", boom)
    with pytest.raises(RuntimeError, match="a bug"):
        evaluator.evaluate(enc, keys)

    def missing(*args, **kwargs):
        raise ValueError("Galois key not present")

    monkeypatch.setattr(server, "run", missing)
    with pytest.raises(KeyMismatchError, match="do not fit this model"):
        evaluator.evaluate(enc, keys)
