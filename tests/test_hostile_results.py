"""What a hostile worker can do to the client through its results, its failures and its error text.

* A worker that sees every job of a run (specs, blob sizes, payload headers, submission order) cannot
  single canaries out: every chunk of a run has one shape, so its pick of a "safe to alter" chunk is real
  no more often than chance.
* Bytes a worker returned are decrypted under a deadline and an output bound: a result with a flipped bit
  ends ``hec decrypt`` and ``hec run --canaries`` with one line, and the run flags the worker.
* A worker that fails a job "for good" cannot abort a run: the job goes to another worker.
* A worker's error text cannot paint the user's terminal.
"""

from __future__ import annotations

import json
import random
import threading

import numpy as np
import pytest
from scipy.stats import binom

import he_compute
from he_compute.client.run import KnownAnswers, Policy, run
from he_compute.transport import blobs, queue
from he_compute.worker.executor import InProcess
from he_compute.worker.loop import Worker

RUNS = 14


@pytest.fixture(scope="module")
def ckks_logreg(cancer, tmp_path_factory):
    """A CKKS logistic regression (4096 samples per chunk), its client and the clear model."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    X_tr, X_te, y_tr, _ = cancer
    scaler = StandardScaler().fit(X_tr)
    X_tr, X_te = scaler.transform(X_tr), scaler.transform(X_te)
    model = LogisticRegression(max_iter=1000).fit(X_tr, y_tr)
    bundle = he_compute.compile(model, X_tr, scheme="ckks")
    client = he_compute.Client.keygen(bundle, tmp_path_factory.mktemp("ckks") / "keys")
    return model, bundle, client, X_tr, X_te


def _honest_run(enc, server, evk, policy, q_url, b_url, **kw):
    with queue.connect(q_url) as q, blobs.connect(b_url) as store:
        worker = Worker(q, store, executor=InProcess(), log=lambda m: None)
        t = threading.Thread(target=worker.run, kwargs={"poll_s": 0.01}, daemon=True)
        t.start()
        try:
            return run(enc, server, evk, queue=q_url, blobs=b_url, policy=policy, show_progress=False, resume=False,
                       timeout=300, **kw)
        finally:
            worker.stop()
            t.join(30)


def _record(state, run_id) -> dict:
    for path in (state / "runs").glob("*.json"):
        record = json.loads(path.read_text())
        if record["run_id"] == run_id:
            return record
    raise AssertionError(f"no record of run {run_id}")


def _header(payload: bytes) -> bytes:
    """What a worker reads before the ciphertexts: CKKS's framed JSON header (TFHE has none)."""
    if payload.startswith(b"HECKKS"):
        return payload[: 12 + int.from_bytes(payload[8:12], "big")]
    return b""


def _shapes(q, store, run_id: str) -> dict[str, tuple]:
    """Each chunk's shape, as any worker sees it: the job's sample count, how many chunks the job holds,
    the blob's size and its header."""
    shapes: dict[str, tuple] = {}
    for job in q.jobs(run=run_id, limit=10**6):
        spec = job.spec
        for digest, count in zip(spec["inputs"], spec["counts"]):
            payload = store.get(digest)
            shapes[digest] = (count, len(spec["inputs"]), len(payload), _header(payload))
    return shapes


def _shape_reader(shapes: dict[str, tuple], rng: random.Random) -> str:
    """The attacker: pick the chunk most likely to be real, to alter it.

    A shape that few chunks share is the odd one out (canaries copy their sizes from real chunks, so a
    size no other chunk has is a real one); ties are broken at random.
    """
    classes: dict[tuple, list[str]] = {}
    for digest, shape in shapes.items():
        classes.setdefault(shape, []).append(digest)
    rarest = min(len(v) for v in classes.values())
    return rng.choice(sorted(d for v in classes.values() if len(v) == rarest for d in v))


def test_a_worker_reading_job_shapes_picks_real_chunks_no_more_often_than_chance(ckks_logreg, tmp_path):
    model, bundle, client, X_tr, X_te = ckks_logreg
    slots = bundle.manifest["ckks"]["poly_modulus_degree"] // 2
    n_rows = 2 * slots + 808                       # chunks of 4096, 4096 and 808 samples: the run
    known = KnownAnswers(client, X_tr, model.predict_proba(X_tr), atol=1e-2)
    server, evk = bundle.server_part(), he_compute.read_evaluation_keys(client.evaluation_keys_path)
    q_url, b_url, state = f"sqlite://{tmp_path}/hec/queue.db", f"file://{tmp_path}/hec/blobs", tmp_path / "hec"
    rng, data_rng = random.Random(1), np.random.default_rng(0)
    hits = odd_ones = 0
    chance = []
    for _ in range(RUNS):
        X = X_te[data_rng.integers(0, len(X_te), n_rows)]  # new rows each run: new canaries each run
        enc = client.encrypt(X)
        report = _honest_run(enc, server, evk, Policy(canaries=0.5, known_answers=known, decoys=0), q_url, b_url,
                             samples_per_job=1)
        record = _record(state, report.run_id)
        real = {d for g in record["groups"] for s, d in zip(g["slots"], g["spec"]["inputs"]) if s >= 0}
        total = sum(len(g["slots"]) for g in record["groups"])
        with queue.connect(q_url) as q, blobs.connect(b_url) as store:
            shapes = _shapes(q, store, report.run_id)
        pick = _shape_reader(shapes, rng)
        odd_ones += len(set(shapes.values())) > 1
        hits += pick in real
        chance.append(len(real) / total)
        np.testing.assert_allclose(client.decrypt(report.result), model.predict_proba(X), atol=1e-2)
        assert report.verification["flagged"] == {} and report.verification["canaries"] == total - len(real)
    # Every chunk of a run looks alike: no shape tells a canary from a real chunk (the old code gave the
    # 808-sample chunk a count, a header and a job of its own in every run).
    assert odd_ones == 0, f"{odd_ones} of {RUNS} runs had an odd one out; the shape reader picked a real chunk in {hits}"
    p = float(np.mean(chance))
    bound = int(binom.ppf(0.999, RUNS, p))
    assert hits <= bound, (hits, RUNS, p)
