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
from he_compute.client.run import KnownAnswers, Policy, RunOptions, run
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


def _honest_run(enc, server, evk, policy, q_url, b_url, *, workers=1, samples_per_job=None):
    """``run`` with ``workers`` honest workers in threads."""
    honest = [Worker(queue.connect(q_url), blobs.connect(b_url), name=f"honest-{i}", executor=InProcess(),
                     log=lambda m: None) for i in range(workers)]
    threads = [threading.Thread(target=w.run, kwargs={"poll_s": 0.01}, daemon=True) for w in honest]
    for t in threads:
        t.start()
    try:
        return run(enc, server, evk, queue=q_url, blobs=b_url, policy=policy,
                   options=RunOptions(timeout=300, samples_per_job=samples_per_job, resume=False, show_progress=False))
    finally:
        for w in honest:
            w.stop()
        for t in threads:
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


def test_tfhe_chunks_of_a_run_with_canaries_all_look_alike(compiled, cancer, tmp_path):
    """TFHE chunks hold one sample each, so a run's jobs, headers and blob sizes are alike without padding."""
    c = compiled("linear")
    X, X_known = cancer[1][:4], cancer[0][:40]
    known = KnownAnswers(c.client, X_known, c.model.predict_proba(X_known, fhe="disable"))
    q_url, b_url = f"sqlite://{tmp_path}/hec/queue.db", f"file://{tmp_path}/hec/blobs"
    report = _honest_run(c.client.encrypt(X), c.bundle.server_part(),
                         he_compute.read_evaluation_keys(c.client.evaluation_keys_path),
                         Policy(canaries=0.5, known_answers=known, decoys=0), q_url, b_url, samples_per_job=1)
    with queue.connect(q_url) as q, blobs.connect(b_url) as store:
        shapes = _shapes(q, store, report.run_id)
    assert len(shapes) == 4 + 2 and len(set(shapes.values())) == 1, set(shapes.values())


# -- results with flipped bits ------------------------------------------------------------------------------

FLIPPED_BIT = 63
"""The top bit of the first segment's size in a TFHE result's Cap'n Proto framing: flipped, Concrete's
``Value.deserialize`` allocates and zeroes 16 GB for a message of 10 KB before it fails (48 s here, with a
machine's memory to spare; the issue saw it loop for ever)."""
DECRYPT_TIMEOUT_S = "3"


def _flipped(payload: bytes) -> bytes:
    data = bytearray(payload)
    data[FLIPPED_BIT // 8] ^= 1 << (FLIPPED_BIT % 8)
    return bytes(data)


_TIMED = """
import sys, time
from he_compute.schemes._quiet import import_torch_quietly
import_torch_quietly()
from concrete import fhe  # loaded before the clock starts: a loaded machine takes seconds to import it
from he_compute.cli import commands, main
commands()
start = time.monotonic()
try:
    main(sys.argv[2:], prog_name="hec")
finally:
    open(sys.argv[1], "w").write(str(time.monotonic() - start))
"""


def _hec(args, tmp_path, timeout):
    """``hec ARGS`` in a fresh process: (the finished process, seconds it ran once loaded).

    A process still running after ``timeout`` seconds is killed and the test fails."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HEC_DECRYPT_TIMEOUT_S": DECRYPT_TIMEOUT_S}
    clock = tmp_path / f"{args[0]}.seconds"
    try:
        done = subprocess.run([sys.executable, "-c", _TIMED, str(clock), *args], env=env, capture_output=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"hec {args[0]} still ran after {timeout}s ({len(exc.stderr or b'')} bytes on stderr)")
    return done, float(clock.read_text())


@pytest.fixture
def tfhe_result(compiled, cancer):
    """A TFHE model, its encrypted inputs and an honest result of them."""
    c = compiled("linear")
    X = cancer[1][:3]
    enc = c.client.encrypt(X)
    ev = he_compute.Evaluator(c.bundle.server_part())
    keys = ev.load_keys(he_compute.read_evaluation_keys(c.client.evaluation_keys_path))
    return c, X, enc, ev.evaluate(enc, keys)


def test_hec_decrypt_of_a_result_with_a_flipped_bit_ends_with_one_line(tfhe_result, tmp_path):
    from he_compute.formats.container import Container

    c, X, enc, result = tfhe_result
    sections = dict(result.sections)
    sections["chunk/000001"] = _flipped(sections["chunk/000001"])
    Container("results", result.scheme, result.meta, sections).save(tmp_path / "y.enc")
    done, seconds = _hec(["decrypt", str(tmp_path / "y.enc"), "--keys", str(c.client.keys_dir), "-o",
                          str(tmp_path / "y.npy")], tmp_path, timeout=300)
    assert seconds < float(DECRYPT_TIMEOUT_S) + 10, seconds  # its deadline, and room for a loaded machine
    lines = done.stderr.decode().strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error: the result"), done.stderr[-2000:]
    assert "chunk/000001" in lines[0] or "did not decrypt within" in lines[0] or "could not be decrypted" in lines[0]
    assert not (tmp_path / "y.npy").exists()
    # The honest result still decrypts, in one child for the whole file.
    np.testing.assert_allclose(c.client.decrypt(result), c.model.predict_proba(X, fhe="disable"), rtol=0, atol=1e-9)


class FlippingWorker(threading.Thread):
    """Claims jobs like any worker and returns a well-signed result of the right size with one bit flipped."""

    def __init__(self, q_url: str, b_url: str, payload: bytes):
        from he_compute.worker.identity import WorkerIdentity

        super().__init__(daemon=True)
        self.q, self.store, self.payload = queue.connect(q_url), blobs.connect(b_url), _flipped(payload)
        self.me, self.done, self.stopping = WorkerIdentity.generate(), 0, threading.Event()

    def run(self) -> None:
        from he_compute.formats.receipt import sign_receipt

        while not self.stopping.is_set():
            lease = self.q.claim("flipper", devices=("cpu",), block_s=0.05)
            if lease is None:
                continue
            spec = lease.job.spec
            outs = [self.store.put(self.payload) for _ in spec["inputs"]]
            receipt = sign_receipt(self.me, job_id=lease.job.id, model_id=spec["model_id"], key_id=spec["key_id"],
                                   inputs=spec["inputs"], outputs=outs, timings={"eval_ms": 1})
            self.q.complete(lease, {"outputs": outs, "inputs": spec["inputs"], "receipt": receipt, "stats": {}})
            self.done += 1


def test_hec_run_with_canaries_facing_a_bit_flipping_worker_ends_with_one_line(tfhe_result, cancer, tmp_path):
    c, X, enc, result = tfhe_result
    enc.save(tmp_path / "x.enc")
    np.save(tmp_path / "known.npy", cancer[0][:40])
    q_url, b_url = f"sqlite://{tmp_path}/hec/queue.db", f"file://{tmp_path}/hec/blobs"
    flipper = FlippingWorker(q_url, b_url, result.sections["chunk/000000"])
    flipper.start()
    try:
        done, seconds = _hec(["run", str(tmp_path / "x.enc"), "--keys", str(c.client.keys_dir), "--queue", q_url,
                              "--blobs", b_url, "-o", str(tmp_path / "y.enc"), "--canaries", "0.5", "--canary-inputs",
                              str(tmp_path / "known.npy"), "--timeout", "30"], tmp_path, timeout=600)
    finally:
        flipper.stopping.set()
        flipper.join(10)
    assert flipper.done > 0 and seconds < 30 + 10, seconds  # its --timeout, and room for a loaded machine
    lines = done.stderr.decode().strip().splitlines()
    # (The exit status is left out: `hec run` exits 0 after this line when it evaluated the canaries itself,
    # before and after this change alike; reported, not fixed here.)
    assert lines[-1].startswith("Error: ") and flipper.me.short_id in lines[-1], (done.returncode, lines[-3:])
    assert not any("Premature EOF" in line for line in lines)
    assert not (tmp_path / "y.enc").exists()


def test_a_bit_flipping_worker_is_flagged_and_its_jobs_rerun_by_an_honest_one(tfhe_result, cancer, tmp_path,
                                                                              monkeypatch):
    monkeypatch.setenv("HEC_DECRYPT_TIMEOUT_S", DECRYPT_TIMEOUT_S)
    c, X, enc, result = tfhe_result
    known = KnownAnswers(c.client, cancer[0][:40], c.model.predict_proba(cancer[0][:40], fhe="disable"))
    q_url, b_url = f"sqlite://{tmp_path}/hec/queue.db", f"file://{tmp_path}/hec/blobs"
    flipper = FlippingWorker(q_url, b_url, result.sections["chunk/000000"])
    flipper.start()
    try:
        report = _honest_run(enc, c.bundle.server_part(),
                             he_compute.read_evaluation_keys(c.client.evaluation_keys_path),
                             Policy(replicas=2, canaries=0.5, known_answers=known, accept_sybil_risk=True),
                             q_url, b_url, workers=2, samples_per_job=1)
    finally:
        flipper.stopping.set()
        flipper.join(10)
    assert flipper.done > 0
    assert flipper.me.short_id in report.verification["flagged"], report.verification
    np.testing.assert_allclose(c.client.decrypt(report.result), c.model.predict_proba(X, fhe="disable"),
                               rtol=0, atol=1e-9)


# -- a worker that fails jobs "for good" ---------------------------------------------------------------------

class Failer(threading.Thread):
    """Claims every job it can and fails it at once, asking the queue not to retry it (dead letter)."""

    def __init__(self, q_url: str, error: str = "this job cannot be done"):
        super().__init__(daemon=True)
        self.q, self.error, self.failed, self.stopping = queue.connect(q_url), error, 0, threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            lease = self.q.claim("failer", devices=("cpu",), block_s=0.05)
            if lease is not None:
                self.q.fail(lease, self.error, retry=False)
                self.failed += 1


@pytest.mark.parametrize("engine", ["sqlite", "redis"])
def test_a_worker_failing_jobs_for_good_cannot_abort_a_verified_run(engine, compiled, cancer, tmp_path, request):
    c = compiled("linear")
    X, X_known = cancer[1][:3], cancer[0][:40]
    known = KnownAnswers(c.client, X_known, c.model.predict_proba(X_known, fhe="disable"))
    q_url = request.getfixturevalue("redis_url") if engine == "redis" else f"sqlite://{tmp_path}/hec/queue.db"
    b_url = f"file://{tmp_path}/hec/blobs"
    failer = Failer(q_url)
    failer.start()
    try:
        report = _honest_run(c.client.encrypt(X), c.bundle.server_part(),
                             he_compute.read_evaluation_keys(c.client.evaluation_keys_path),
                             Policy(replicas=2, canaries=0.3, known_answers=known, accept_sybil_risk=True),
                             q_url, b_url, workers=2, samples_per_job=1)
    finally:
        failer.stopping.set()
        failer.join(10)
    assert failer.failed > 0, "the failing worker never got a job: the test proved nothing"
    v = report.verification
    assert v["failed_by"] == {"failer": failer.failed} and v["flagged"] == {}, v
    np.testing.assert_allclose(c.client.decrypt(report.result), c.model.predict_proba(X, fhe="disable"),
                               rtol=0, atol=1e-9)


# -- a worker's words on the user's terminal -----------------------------------------------------------------

PAINT = ("\x1b]0;owned\x07\x1b]52;c;Y3VybCBldmlsLnNoIHwgc2g=\x07\x1b[2K\r"
         "All jobs verified OK\x1b[8m\u202e")
"""An OSC title, an OSC 52 clipboard write, a line erase and a carriage return that paints a fake verdict,
a hidden-text attribute and a right-to-left override."""
RAW = ("\x1b", "\x07", "\r", "\u202e")


class NamedFailer(Failer):
    """A failer that claims under a new crafted name each time (so the queue gives it every job of a group)."""

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            n += 1
            lease = self.q.claim(f"w{n}{PAINT}", devices=("cpu",), block_s=0.05)
            if lease is not None:
                self.q.fail(lease, f"bad input{PAINT}", retry=False)
                self.failed += 1


def test_a_workers_error_text_and_name_reach_the_terminal_escaped(compiled, cancer, tmp_path):
    from click.testing import CliRunner

    from he_compute.cli import main

    c = compiled("linear")
    c.client.encrypt(cancer[1][:1]).save(tmp_path / "x.enc")
    q_url, b_url = f"sqlite://{tmp_path}/hec/queue.db", f"file://{tmp_path}/hec/blobs"
    failer = NamedFailer(q_url)
    failer.start()
    try:
        res = CliRunner().invoke(main, ["run", str(tmp_path / "x.enc"), "--keys", str(c.client.keys_dir), "--queue",
                                        q_url, "--blobs", b_url, "-o", str(tmp_path / "y.enc"), "--timeout", "60"])
    finally:
        failer.stopping.set()
        failer.join(10)
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 1 and lines[-1].startswith("Error: job group 0 failed on 3 workers"), res.stderr
    assert "All jobs verified OK" in lines[-1] and "\\x1b]52;c;" in lines[-1]  # shown, as visible escapes
    job_id = queue.connect(q_url).jobs()[0].id
    shown = [res.stderr]
    for args in (["jobs", "--queue", q_url], ["status", job_id, "--queue", q_url]):
        out = CliRunner().invoke(main, args)
        assert out.exit_code == 0, out.output
        shown.append(out.output)
    assert "\\x1b]0;owned" in shown[2]
    for text in shown:
        assert not any(ch in text for ch in RAW), [ch for ch in RAW if ch in text]


# -- the same worker, through a coordinator -----------------------------------------------------------------

class RemoteFailer(threading.Thread):
    """An enrolled worker of its own operator that claims every job it can over the coordinator's signed API and
    fails it at once with ``retry=False``."""

    def __init__(self, session):
        from he_compute.transport.remote import RemoteConsumer

        super().__init__(daemon=True)
        self.consumer, self.failed, self.stopping = RemoteConsumer(session), 0, threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            lease = self.consumer.claim("failer", devices=["cpu"], block_s=0.2)
            if lease is not None:
                self.consumer.fail(lease, "this job cannot be done", retry=False)
                self.failed += 1


def test_a_worker_failing_jobs_for_good_through_a_coordinator_cannot_abort_a_verified_run(
        compiled, cancer, tmp_path, tls, monkeypatch):
    import httpx

    from coordinator_support import CoordinatorProc, stop_all, worker_proc
    from queue_support import wait_for
    from he_compute.transport.remote import RemoteBlobs, RemoteProducer, Session, enroll
    from he_compute.worker.identity import WorkerIdentity
    from tests.test_coordinator_attacks import _hec

    c = compiled("linear")
    X, X_known = cancer[1][:3], cancer[0][:40]
    known = KnownAnswers(c.client, X_known, c.model.predict_proba(X_known, fhe="disable"))
    coord = CoordinatorProc(tmp_path / "data", tls).start()
    tokens = {}
    for operator in ("lab-bad", "lab-a", "lab-b"):  # three operators: replicas need two honest ones
        tokens[operator] = tmp_path / f"{operator}.token"
        tokens[operator].write_text(_hec(coord, "enroll-token", "--operator", operator).stdout.strip() + "\n")
        tokens[operator].chmod(0o600)
    bad = WorkerIdentity.load_or_create(tmp_path / "bad")
    session = Session(coord.url, signer=bad, ca=str(coord.tls[0]))
    enroll(session, bad, tokens["lab-bad"].read_text().strip())
    failer = RemoteFailer(session)
    failer.start()
    honest = [worker_proc(coord, tmp_path / op, token_file=tokens[op], log=tmp_path / "workers.log")
              for op in ("lab-a", "lab-b")]
    monkeypatch.setenv("HEC_CHECKPOINTS", str(tmp_path / "checkpoints.json"))
    q = RemoteProducer(Session(coord.url, token=coord.token(), ca=str(coord.tls[0])))

    def operator_status():
        with httpx.Client(verify=str(coord.tls[0])) as h:
            return h.get(f"{coord.url}/v1/operator/status",
                         headers={"authorization": f"Bearer {coord.token('operator.token')}"}).json()

    try:
        # The run counts votes by the operators the coordinator vouches for when it starts: both honest
        # workers must be enrolled by then.
        wait_for(lambda: len(operator_status()["workers"]) == 3, timeout=120, what="three enrolled workers")
        report = run(c.client.encrypt(X), c.bundle.server_part(),
                     he_compute.read_evaluation_keys(c.client.evaluation_keys_path),
                     queue=q, blobs=RemoteBlobs(q.session),
                     options=RunOptions(timeout=400, samples_per_job=1, resume=False, show_progress=False),
                     policy=Policy(replicas=2, canaries=0.3, known_answers=known))
        status = operator_status()
    finally:
        failer.stopping.set()
        failer.join(10)
        stop_all(honest)
        coord.stop()
    assert failer.failed > 0, "the failing worker never got a job: the test proved nothing"
    counts = {w["worker"]: (w["operator"], w["done"], w["failed"]) for w in status["workers"]}
    assert counts[bad.worker_id] == ("lab-bad", 0, failer.failed), counts  # each failure counts against it
    assert all(failed == 0 for op, _, failed in counts.values() if op != "lab-bad"), counts
    assert report.verification["flagged"] == {}, report.verification
    np.testing.assert_allclose(c.client.decrypt(report.result), c.model.predict_proba(X, fhe="disable"),
                               rtol=0, atol=1e-9)
