"""What a client reads from strangers, and what it writes for itself.

A worker writes the encrypted results a client decrypts: they are size-checked before Concrete or TenSEAL
parses them, in the process that holds the secret key.  Decrypted data is written 0600 whatever the umask.
"""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from click.testing import CliRunner

import he_compute
from he_compute.cli import main
from he_compute.errors import FormatError
from he_compute.formats.ciphertexts import chunk_name
from he_compute.formats.container import Container


def _results_like(enc: Container, payload: bytes) -> Container:
    meta = {k: enc.meta[k] for k in ("model_id", "key_id", "n_samples", "chunks", "output_shape")}
    return Container("results", enc.scheme, meta, {chunk_name(0): payload})


def test_an_oversized_tfhe_result_is_refused_before_it_is_parsed(compiled, cancer):
    c = compiled("linear")
    enc = c.client.encrypt(cancer[1][:1])
    with pytest.raises(FormatError, match="it is not a result of this model"):
        c.client.decrypt(_results_like(enc, os.urandom(8 << 20)))


def test_a_ckks_result_with_lying_counts_is_refused_before_it_is_parsed(cancer, tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from he_compute.schemes.ckks.payload import Payload, pack

    X_train, X_test, y_train, _ = cancer
    scaler = StandardScaler().fit(X_train)
    bundle = he_compute.compile(LogisticRegression(max_iter=500).fit(scaler.transform(X_train), y_train),
                                scaler.transform(X_train), scheme="ckks")
    client = he_compute.Client.keygen(bundle, tmp_path / "keys")
    enc = client.encrypt(scaler.transform(X_test[:3]))
    n = enc.meta["chunks"][0]  # 3 samples, in a chunk padded to the full size
    too_many = pack(Payload("output", "batch", n, [b"x"] * 50))
    with pytest.raises(FormatError, match="expected 1 batch-packed"):
        client.decrypt(_results_like(enc, too_many))
    oversized = pack(Payload("output", "batch", n, [os.urandom(3 << 20)]))
    with pytest.raises(FormatError, match="larger than these parameters allow"):
        client.decrypt(_results_like(enc, oversized))


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_hec_decrypt_writes_clear_outputs_readable_by_the_owner_only(compiled, cancer, tmp_path, umask):
    c = compiled("linear")
    X = cancer[1][:2]
    enc = c.client.encrypt(X)
    evaluator = he_compute.Evaluator(c.bundle.server_part())
    result = evaluator.evaluate(enc, evaluator.load_keys(he_compute.read_evaluation_keys(c.client.evaluation_keys_path)))
    result.save(tmp_path / "y.enc")
    old = os.umask(umask)
    try:
        for name in ("y.csv", "y.npy"):
            res = CliRunner().invoke(main, ["decrypt", str(tmp_path / "y.enc"), "--keys", str(c.client.keys_dir),
                                            "-o", str(tmp_path / name)])
            assert res.exit_code == 0, res.output
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    finally:
        os.umask(old)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), c.model.predict_proba(X, fhe="disable"), atol=1e-9)


def test_public_artefacts_honour_a_strict_umask(compiled, cancer, tmp_path):
    c = compiled("linear")
    old = os.umask(0o077)
    try:
        c.client.encrypt(cancer[1][:1]).save(tmp_path / "x.enc")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.enc").stat().st_mode) == 0o600
