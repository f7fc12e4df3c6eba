"""The pipeline API: EncryptedModel and the scikit-learn EncryptedPredictor, on real data."""

from __future__ import annotations

import numpy as np
import pytest

import he_compute
from he_compute.client.sklearn import EncryptedPredictor


def test_encrypted_model_in_process_matches_clear(compiled, cancer, tmp_path):
    _, X_test, _, _ = cancer
    c = compiled("linear")
    model = he_compute.EncryptedModel(c.bundle_path, keys=tmp_path / "keys", in_process=True)
    X = X_test[:6]
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba, c.model.predict_proba(X, fhe="disable"), atol=1e-9)
    np.testing.assert_array_equal(model.predict(X), c.model.predict(X, fhe="disable"))
    assert model.predict(X).shape == (6,)
    # The key directory was created on first use and is reused afterwards.
    again = he_compute.EncryptedModel(c.bundle_path, keys=tmp_path / "keys", in_process=True)
    assert again.client.key_id == model.client.key_id


def test_submit_and_map_stream_in_order(compiled, cancer, tmp_path):
    _, X_test, _, _ = cancer
    c = compiled("linear")
    with he_compute.EncryptedModel(c.bundle, keys=tmp_path / "k", in_process=True) as model:
        job = model.submit(X_test[:3])
        np.testing.assert_allclose(job.result(timeout=300), c.model.predict_proba(X_test[:3], fhe="disable"),
                                   atol=1e-9)
        assert job.done() and job.job_ids == []  # in-process: no queue jobs
        batches = [X_test[i:i + 4] for i in range(0, 20, 4)]
        outs = list(model.map(iter(batches), max_in_flight=2))
    assert [o.shape[0] for o in outs] == [4] * 5
    np.testing.assert_allclose(np.concatenate(outs), c.model.predict_proba(X_test[:20], fhe="disable"), atol=1e-9)


@pytest.mark.slow
def test_keys_for_another_bundle_are_refused(compiled, tmp_path):
    with pytest.raises(he_compute.KeyMismatchError):
        he_compute.EncryptedModel(compiled("tree").bundle, keys=compiled("linear").client.keys_dir, in_process=True)


def test_sklearn_pipeline_with_encrypted_last_step(cancer, tmp_path):
    from concrete.ml.sklearn import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X_train, X_test, y_train, y_test = cancer
    pipe = make_pipeline(StandardScaler(), EncryptedPredictor(LogisticRegression(n_bits=8), keys=tmp_path / "k",
                                                              in_process=True))
    pipe.fit(X_train, y_train)
    X = X_test[:15]
    clear = make_pipeline(StandardScaler(), LogisticRegression(n_bits=8)).fit(X_train, y_train)
    np.testing.assert_array_equal(pipe.predict(X), clear.predict(X))
    assert pipe.score(X, y_test[:15]) == pytest.approx(clear.score(X, y_test[:15]))
    assert pipe.predict_proba(X).shape == (15, 2)


def test_encrypted_model_through_the_embedded_queue(compiled, cancer, tmp_path):
    """Progress comes from the queue's job records: 0 while no worker runs, 1 once a worker has done the jobs."""
    import threading

    from he_compute.transport import blobs, queue
    from he_compute.worker.loop import Worker

    from queue_support import wait_for

    _, X_test, _, _ = cancer
    c = compiled("linear")
    q_url = f"sqlite://{tmp_path}/q/queue.db"
    with he_compute.EncryptedModel(c.bundle, keys=tmp_path / "k", queue=q_url, timeout=300) as model:
        job = model.submit(X_test[:4])
        wait_for(lambda: job.job_ids, 60, what="the jobs to be submitted")
        assert job.progress() == 0.0 and not job.done()
        with queue.connect(q_url) as q, blobs.connect(f"file://{tmp_path}/q/blobs") as store:
            worker = Worker(q, store, log=lambda m: None)
            thread = threading.Thread(target=worker.run, kwargs={"poll_s": 0.05}, daemon=True)
            thread.start()
            try:
                out = job.result(timeout=300)
                assert job.progress() == 1.0
            finally:
                worker.stop()
                thread.join(30)
    np.testing.assert_allclose(out, c.model.predict_proba(X_test[:4], fhe="disable"), atol=1e-9)
