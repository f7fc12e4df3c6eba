"""The CKKS evaluation keys, server part and ciphertexts carry no secret key.

Positive controls show each check can fail: the secret key's bytes are found
in the secret file they come from, and that key does decrypt the ciphertexts.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import he_compute
from he_compute.client import keys as keyfiles
from he_compute.errors import UnsafeArtifactError

pytest.importorskip("tenseal")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    bundle = he_compute.compile(LogisticRegression(max_iter=1000).fit(X, y), X, scheme="ckks")
    root = tmp_path_factory.mktemp("ckks-sec")
    client = he_compute.Client.keygen(bundle, root / "keys")
    secret = keyfiles.read_secret(client.keys_dir, client.info)
    evaluation = he_compute.read_evaluation_keys(client.evaluation_keys_path).sections["keys"]
    enc = client.encrypt(X[:5])
    evaluator = he_compute.Evaluator(bundle.server_part())
    res = evaluator.evaluate(enc, evaluator.load_keys(he_compute.read_evaluation_keys(client.evaluation_keys_path)))
    return bundle, secret, evaluation, enc, res


def _windows(key: bytes, n: int = 16, width: int = 32) -> list[bytes]:
    """Windows spread over the key's body (past SEAL's header), each almost surely unique to the key."""
    body = key[64:]
    step = max(1, (len(body) - width) // n)
    return [body[i : i + width] for i in range(0, len(body) - width, step)][:n]


def _decrypt_first(bundle, secret, payload: bytes) -> np.ndarray:
    from he_compute.schemes.ckks.client import CKKSClient
    from he_compute.schemes.ckks.payload import unpack
    from he_compute.schemes.ckks.seal import load, sealapi

    c = CKKSClient(bundle.manifest, bundle.client_part().sections, secret)
    s = sealapi()
    ct = c.engine.ciphertext(unpack(payload, role="input").ciphertexts[0])
    pt = s.Plaintext()
    s.Decryptor(c.engine.context, load("SecretKey", c.engine.context, secret, "key")).decrypt(ct, pt)
    return np.asarray(c.engine.encoder.decode_double(pt))


def test_secret_key_decrypts_and_its_bytes_appear_nowhere_outside_the_key_directory(setup):
    bundle, secret, evaluation, enc, res = setup
    windows = _windows(secret)
    assert len(windows) == 16 and len(secret) > 10_000
    # Positive controls: the windows are in the secret file, and that file's key decrypts the inputs.
    assert all(w in secret for w in windows)
    X = StandardScaler().fit_transform(load_breast_cancer(return_X_y=True)[0])
    assert np.allclose(_decrypt_first(bundle, secret, enc.sections["chunk/000000"])[:5], X[:5, 0], atol=1e-4)
    for blob in [evaluation, bundle.server_part().to_bytes(), enc.to_bytes(), res.to_bytes()]:
        assert not any(w in blob for w in windows)


def test_worker_refuses_keys_that_carry_anything_but_evaluation_keys(setup):
    from he_compute.schemes.ckks.payload import Payload, pack, unpack

    bundle, secret, evaluation, *_ = setup
    evaluator = he_compute.Evaluator(bundle.server_part())
    p = unpack(evaluation, role="keys")
    smuggled = pack(Payload("keys", p.packing, 1, [*p.ciphertexts, secret], {"parts": [*p.extra["parts"], "secret"]}))
    with pytest.raises(UnsafeArtifactError, match="parts other than relin/galois"):
        evaluator._backend.load_keys(smuggled)
