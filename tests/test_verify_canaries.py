"""Canaries: counts, indistinguishable mixing, and the check after decryption on real TFHE ciphertexts."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import he_compute
from he_compute.client.run import KnownAnswers, canary_count, shuffle_in
from he_compute.errors import CanaryFailed, ConfigError, InputError
from he_compute.worker.identity import WorkerIdentity
from he_compute.client.run.canaries import check_all


def test_canary_count():
    assert canary_count(100, 0.05) == 5 and canary_count(10, 0.05) == 1 and canary_count(10, 0) == 0
    assert canary_count(0, 0.5) == 0
    for bad in (-0.1, 1.0, 2):
        with pytest.raises(ConfigError, match="--canaries"):
            canary_count(10, bad)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=60), st.integers(min_value=0, max_value=10))
def test_shuffle_in_keeps_every_slot_once(n_real, n_canary):
    slots = shuffle_in(n_real, n_canary)
    assert sorted(slots) == sorted(list(range(n_real)) + [-(j + 1) for j in range(n_canary)])


def test_canary_positions_are_spread_not_fixed():
    firsts = {shuffle_in(20, 2).index(-1) for _ in range(200)}
    assert len(firsts) > 10


@pytest.fixture(scope="module")
def setup(compiled, cancer):
    c = compiled("linear")
    evaluator = he_compute.Evaluator(he_compute.load_bundle(c.bundle_path).server_part())
    keys = evaluator.load_keys(he_compute.read_evaluation_keys(c.client.evaluation_keys_path))
    return c, evaluator, keys, cancer[1]


def test_canaries_look_like_real_chunks_and_honest_results_pass(setup):
    c, evaluator, keys, X_test = setup
    known = X_test[:20]
    source = KnownAnswers(c.client, known, c.model.predict_proba(known, fhe="disable"), rng=random.Random(1))
    real = c.client.encrypt(X_test[20:23])
    canaries = source.make([1, 1, 1])
    sizes = {len(p) for p in real.sections.values()}
    assert {len(k.payload) for k in canaries} == sizes  # same shape, same encryption
    assert len({k.payload for k in canaries}) == 3  # fresh encryptions, even of the same sample
    honest = WorkerIdentity.generate().worker_id
    for k in canaries:
        source.check(k, evaluator.evaluate_payload(k.payload, keys), worker=honest)
    check_all(source, canaries, [(evaluator.evaluate_payload(k.payload, keys), honest) for k in canaries])


def test_wrong_answers_are_caught_and_name_the_worker(setup):
    c, evaluator, keys, X_test = setup
    known = X_test[:20]
    Y = c.model.predict_proba(known, fhe="disable")
    source = KnownAnswers(c.client, known, Y)
    cheat, honest = WorkerIdentity.generate(), WorkerIdentity.generate()
    canaries = source.make([1, 1, 1, 1])
    # Another sample's honest result: well-formed, decrypts fine, wrong (pick one with other outputs).
    other = next(i for i in range(len(known)) if not np.allclose(Y[i], canaries[0].expected[0]))
    replay = evaluator.evaluate_payload(c.client.encrypt(known[other : other + 1]).sections["chunk/000000"], keys)
    wrong = {"random bytes": bytes(random.getrandbits(8) for _ in range(64)), "input echoed": canaries[0].payload,
             "replayed result": replay}
    for what, payload in wrong.items():
        with pytest.raises(CanaryFailed, match=f"worker {cheat.short_id} returned a wrong result") as info:
            source.check(canaries[0], payload, worker=cheat.worker_id)
        assert info.value.workers == (cheat.short_id,), what
    results = [(evaluator.evaluate_payload(k.payload, keys), honest.worker_id) for k in canaries]
    results[2] = (replay, cheat.worker_id)
    results[3] = (b"junk", cheat.worker_id)
    if np.allclose(canaries[2].expected, Y[other]):
        results[2] = (b"junk2", cheat.worker_id)
    with pytest.raises(CanaryFailed, match=f"worker\\(s\\) {cheat.short_id} returned wrong") as info:
        check_all(source, canaries, results)
    assert info.value.workers == (cheat.short_id,)


def test_known_outputs_can_come_from_a_local_evaluation(setup, compiled):
    c, evaluator, keys, X_test = setup
    bundle = he_compute.load_bundle(c.bundle_path)
    source = KnownAnswers(c.client, X_test[:5], server_part=bundle.server_part(),
                          evalkeys=he_compute.read_evaluation_keys(c.client.evaluation_keys_path))
    (k,) = source.make([1])
    clear = c.model.predict_proba(X_test[:5], fhe="disable")
    assert any(np.allclose(k.expected[0], row, atol=1e-9) for row in clear)
    source.check(k, evaluator.evaluate_payload(k.payload, keys), worker="f" * 64)


def test_misuse_is_one_line_of_the_error_tree(setup):
    c, _, _, X_test = setup
    with pytest.raises(InputError, match="2 rows but the known inputs 3"):
        KnownAnswers(c.client, X_test[:3], np.zeros((2, 2)))
    with pytest.raises(ConfigError, match="server_part and evalkeys"):
        KnownAnswers(c.client, X_test[:3])
