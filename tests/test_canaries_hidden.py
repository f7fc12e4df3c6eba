"""A worker that watches the blob store cannot tell canaries from real chunks.

The attacker sees what any worker with the store's credentials sees: every input blob and when it was
written, and the digests of an earlier run of the same input file.  It ranks the chunks of a run by
"written last" and by "digest never seen before" and guesses the top ones are canaries.  Over two runs of
100 real chunks and 10 canaries each, its hits must stay within a binomial bound of chance.
"""

from __future__ import annotations

import json
import threading

from scipy.stats import binom

import he_compute
from he_compute.client.run import KnownAnswers, Policy, RunOptions, run
from he_compute.transport import blobs, queue
from he_compute.worker.executor import InProcess
from he_compute.worker.loop import Worker

N_REAL, FRACTION = 100, 0.1


def _run_once(c, enc, known, q_url, b_url):
    with queue.connect(q_url) as q, blobs.connect(b_url) as store:
        worker = Worker(q, store, executor=InProcess(), log=lambda m: None)
        t = threading.Thread(target=worker.run, kwargs={"poll_s": 0.01}, daemon=True)
        t.start()
        try:
            report = run(enc, c.bundle.server_part(), he_compute.read_evaluation_keys(c.client.evaluation_keys_path),
                         queue=q_url, blobs=b_url, policy=Policy(canaries=FRACTION, known_answers=known, decoys=0),
                         options=RunOptions(timeout=600, samples_per_job=1, resume=False, show_progress=False))
        finally:
            worker.stop()
            t.join(30)
    return report


def _truth(state, run_id) -> tuple[list[str], set[str]]:
    """All input digests of a run and which are canaries, from the client's own run record."""
    for path in (state / "runs").glob("*.json"):
        record = json.loads(path.read_text())
        if record["run_id"] == run_id:
            digests, canaries = [], set()
            for g in record["groups"]:
                for slot, digest in zip(g["slots"], g["spec"]["inputs"]):
                    digests.append(digest)
                    if slot < 0:
                        canaries.add(digest)
            return digests, canaries
    raise AssertionError(f"no record of run {run_id}")


def _mtime(root, digest: str) -> float:
    hexd = digest.split(":")[1]
    return (root / hexd[:2] / hexd).stat().st_mtime_ns


def test_canaries_cannot_be_told_from_real_chunks_by_order_or_novelty(compiled, cancer, tmp_path):
    c = compiled("linear")
    X_train, X_test = cancer[0], cancer[1]
    enc = c.client.encrypt(X_test[:N_REAL])
    known = KnownAnswers(c.client, X_train[:50], c.model.predict_proba(X_train[:50], fhe="disable"))
    q_url, b_root = f"sqlite://{tmp_path / 'hec' / 'queue.db'}", tmp_path / "hec" / "blobs"
    state = tmp_path / "hec"

    first = _run_once(c, enc, known, q_url, f"file://{b_root}")
    digests1, canaries1 = _truth(state, first.run_id)
    second = _run_once(c, enc, known, q_url, f"file://{b_root}")
    digests2, canaries2 = _truth(state, second.run_id)
    k = len(canaries1)
    assert k == len(canaries2) == 10 and len(digests1) == N_REAL + k

    # Strategy 1, first run: canaries were written last?
    by_time = sorted(digests1, key=lambda d: _mtime(b_root, d))
    hits_order = len(set(by_time[-k:]) & canaries1)
    # Strategy 2, second run: canaries are the digests the first run did not have (then the newest ones).
    seen = set(digests1)
    by_novelty = sorted(digests2, key=lambda d: (d not in seen, _mtime(b_root, d)))
    hits_novelty = len(set(by_novelty[-k:]) & canaries2)

    chance = k / (N_REAL + k)
    bound = int(binom.ppf(0.999, k, chance))  # hits a blind guess exceeds once in a thousand runs
    assert hits_order <= bound and hits_novelty <= bound, (hits_order, hits_novelty, bound)
    for report in (first, second):
        assert report.verification["canaries"] == k and report.verification["flagged"] == {}
    y = c.client.decrypt(second.result)
    assert (y.argmax(axis=1) == c.model.predict_proba(X_test[:N_REAL], fhe="disable").argmax(axis=1)).all()
