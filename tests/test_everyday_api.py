"""Everyday Python use (issue 14): one notion of task for both schemes, honest predict_proba, lasting workers.

Each test fails on the code before issue 14: a torch net without a final Softmax was a regressor under TFHE
and a classifier returning logits under CKKS; ``EncryptedModel(local_workers=N)`` started new workers (and
compiled the circuit again) on every call.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

import he_compute
from he_compute.cli import main


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ---- item 2: task and predict_proba ----------------------------------------------------------------------


@pytest.mark.parametrize("scheme", [pytest.param("tfhe", marks=pytest.mark.slow), "ckks"])
def test_a_logits_net_is_a_classifier_and_predict_proba_gives_probabilities(scheme, tiny_mlp, tmp_path):
    import torch

    net, Xtr, Xte = tiny_mlp  # 30-4-2, no final Softmax: it outputs logits
    # Few bits (TFHE) and a low degree (CKKS) keep keys and evaluation small; the point is what the outputs are.
    options = {"n_bits": 3, "rounding_threshold_bits": 3} if scheme == "tfhe" else {"activation_degree": 2}
    bundle = he_compute.compile(net, Xtr, scheme=scheme, **options)
    assert (bundle.manifest["task"], bundle.manifest["outputs"]) == ("classifier", "logits")
    X = Xte[:2]
    with he_compute.EncryptedModel(bundle, keys=tmp_path / "keys", in_process=True) as model:
        raw = model.decision_function(X)
        proba = model.predict_proba(X)
        labels = model.predict(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    # Two evaluations: CKKS decryptions differ by its noise (about 1e-8 here), TFHE ones not at all.
    np.testing.assert_allclose(proba, softmax(raw), atol=1e-9 if scheme == "tfhe" else 1e-6)
    clear = net(torch.tensor(X, dtype=torch.float32)).detach().numpy()
    assert labels.shape == (2,) and (labels == clear.argmax(axis=1)).mean() >= 0.5


def test_a_regressor_refuses_predict_proba_in_one_line(tmp_path):
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    X, y = load_diabetes(return_X_y=True)
    ridge = Ridge(alpha=1.0).fit(X, y)
    bundle = he_compute.compile(ridge, X, scheme="ckks")
    assert (bundle.manifest["task"], bundle.manifest["outputs"]) == ("regressor", "values")
    with he_compute.EncryptedModel(bundle, keys=tmp_path / "keys", in_process=True) as model:
        with pytest.raises(he_compute.HECError, match="predict_proba needs a classifier") as exc:
            model.predict_proba(X[:2])
        assert "\n" not in str(exc.value)
        np.testing.assert_allclose(model.predict(X[:5]), ridge.predict(X[:5]), atol=1e-2)


def test_task_can_be_said_in_python_and_on_the_command_line(tiny_mlp, tmp_path):
    import torch

    net, Xtr, _ = tiny_mlp
    assert he_compute.compile(net, Xtr, scheme="ckks", task="regressor").manifest["task"] == "regressor"
    with pytest.raises(he_compute.InputError, match="task must be"):
        he_compute.compile(net, Xtr, scheme="ckks", task="ranking")
    torch.onnx.export(net, torch.zeros(1, 30), tmp_path / "m.onnx", input_names=["x"], output_names=["y"])
    np.save(tmp_path / "calib.npy", Xtr)
    r = CliRunner().invoke(main, ["compile", str(tmp_path / "m.onnx"), "--scheme", "ckks", "--task", "regressor",
                                  "--calibration", str(tmp_path / "calib.npy"), "-o", str(tmp_path / "m.hec")])
    assert r.exit_code == 0, r.output
    assert he_compute.load_bundle(tmp_path / "m.hec").manifest["task"] == "regressor"


def test_an_onnx_graph_ending_in_softmax_compiles_for_tfhe_with_the_softmax_on_the_client(tiny_mlp, tmp_path):
    import torch

    net, Xtr, _ = tiny_mlp
    torch.onnx.export(torch.nn.Sequential(net, torch.nn.Softmax(dim=1)), torch.zeros(1, 30), tmp_path / "s.onnx",
                      input_names=["x"], output_names=["y"], opset_version=14)
    for scheme in ("tfhe", "ckks"):
        m = he_compute.compile(tmp_path / "s.onnx", Xtr, scheme=scheme).manifest
        assert m["task"] == "classifier" and m["model_type"] == "ONNX", (scheme, m["task"])
        # CKKS applies the Softmax on the client after decryption; TFHE decrypts logits and predict_proba does.
        assert m["outputs"] == ("probabilities" if scheme == "ckks" else "logits")


# ---- item 3: workers live as long as the model ------------------------------------------------------------


def test_encrypted_model_keeps_its_workers_and_their_caches(compiled, cancer, tmp_path):
    from he_compute.transport import queue

    c = compiled("linear")
    url = f"sqlite://{tmp_path}/hec/queue.db"
    X = cancer[1][:3]
    with he_compute.EncryptedModel(c.bundle, keys=c.client.keys_dir, queue=url, local_workers=1,
                                   timeout=600) as model:
        jobs = []
        for _ in range(3):
            job = model.submit(X)
            np.testing.assert_allclose(job.result(600), c.model.predict_proba(X, fhe="disable"), atol=1e-9)
            jobs.append(job.job_ids)
        pids = model.local_worker_pids
        assert len(pids) == 1
    with queue.connect(url) as q:
        stats = [[q.status(j).result["stats"] for j in ids] for ids in jobs]
    workers = {s["worker_id"] for call in stats for s in call}
    assert len(workers) == 1, "one worker served every call"
    # After the first job, the worker had the circuit and the keys: every later job is a cache hit.
    later = [s for call in stats for s in call][1:]
    assert all(s["server"] == "hit" and s["keys"] == "hit" for s in later), later
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)  # the with block stopped the worker
