"""The CKKS evaluation keys, server part and ciphertexts carry no secret key.

Positive controls show each check can fail: the secret key bytes extracted
from the client's context are found in that context, and they do decrypt.
"""

from __future__ import annotations

import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import he_compute
from he_compute.client import keys as keyfiles
from he_compute.errors import UnsafeArtifactError

ts = pytest.importorskip("tenseal")


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
    # The secret key as SEAL saves it, extracted from the client's context.
    sk_path = root / "sk.bin"
    ts.context_from(secret).secret_key().data.save(str(sk_path))
    return bundle, secret, evaluation, enc, res, sk_path.read_bytes(), sk_path


def _windows(key: bytes, n: int = 16, width: int = 32) -> list[bytes]:
    """Windows spread over the key's body (past SEAL's header), each almost surely unique to the key."""
    body = key[64:]
    step = max(1, (len(body) - width) // n)
    return [body[i : i + width] for i in range(0, len(body) - width, step)][:n]


def test_evaluation_context_is_public(setup):
    _, secret, evaluation, enc, _, _, _ = setup
    public = ts.context_from(evaluation)
    assert not public.is_private() and public.has_relin_keys() and not public.has_galois_keys()
    private = ts.context_from(secret)
    assert private.is_private()  # positive control
    ct = enc.sections["chunk/000000"]
    from he_compute.schemes.ckks.payload import unpack

    raw = unpack(ct, role="input").ciphertexts[0]
    with pytest.raises(ValueError, match="secret_key"):
        ts.ckks_vector_from(public, raw).decrypt()
    assert len(ts.ckks_vector_from(private, raw).decrypt()) == 5  # positive control


def test_secret_key_bytes_appear_nowhere_outside_the_key_directory(setup):
    bundle, secret, evaluation, enc, res, sk, sk_path = setup
    windows = _windows(sk)
    assert len(windows) == 16 and len(sk) > 10_000
    # Positive control: the extracted bytes are in the secret context, and they are the key (they decrypt).
    assert all(w in secret for w in windows)
    public = ts.context_from(evaluation)
    key = ts.enc_context.SecretKey(ts._ts_cpp.SecretKey())
    key.data.load(public.seal_context().data, str(sk_path))
    from he_compute.schemes.ckks.payload import unpack

    raw = unpack(enc.sections["chunk/000000"], role="input").ciphertexts[0]
    assert len(ts.ckks_vector_from(public, raw).decrypt(key)) == 5
    shared = [evaluation, bundle.server_part().to_bytes(), enc.to_bytes(), res.to_bytes()]
    for blob in shared:
        assert not any(w in blob for w in windows)


def test_worker_refuses_keys_that_carry_a_secret(setup):
    bundle, secret, *_ = setup
    evaluator = he_compute.Evaluator(bundle.server_part())
    with pytest.raises(UnsafeArtifactError, match="secret key"):
        evaluator._backend.load_keys(secret)
