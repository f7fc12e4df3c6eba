"""Issue 22 item 5: ``hec run --replicas 2`` with one operator's workers no longer waits in silence.

Through a real coordinator on loopback (TLS, as the README's walk-through), with one operator's worker
enrolled, the run says in one line what it waits for, keeps waiting, and finishes once a second operator's
worker enrols.  An allow-list whose workers answer to one operator can never supply two replicas: refused
at submit, in one line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

import he_compute
from coordinator_support import CoordinatorProc, coordinator_env, stop_all, worker_proc
from he_compute.worker.identity import WorkerIdentity

PYTHON = sys.executable


@pytest.fixture(scope="module")
def ckks_linear(cancer, tmp_path_factory):
    """A scikit-learn logistic regression under CKKS (seconds per job even on a loaded machine), with keys."""
    from sklearn.linear_model import LogisticRegression

    X_train, _, y_train, _ = cancer
    model = LogisticRegression(max_iter=5000).fit(X_train, y_train)
    root = tmp_path_factory.mktemp("ckks-linear")
    he_compute.compile(model, X_train, scheme="ckks").save(root / "model.hec")
    client = he_compute.Client.keygen(he_compute.load_bundle(root / "model.hec"), root / "keys")
    return SimpleNamespace(model=model, bundle_path=root / "model.hec", client=client)


@pytest.mark.slow
def test_replicas_with_one_operator_say_what_they_wait_for_then_finish_when_a_second_enrols(
        ckks_linear, cancer, tls, tmp_path):
    c = ckks_linear
    coord = CoordinatorProc(tmp_path / "data", tls).start()
    procs = [worker_proc(coord, tmp_path / "worker-a", token_file=coord.data / "enroll.token",
                         log=tmp_path / "workers.log")]
    run = None
    try:
        env = coordinator_env(coord, tmp_path)
        np.save(tmp_path / "x.npy", cancer[1][:2])
        subprocess.run([PYTHON, "-m", "he_compute", "encrypt", str(c.bundle_path), str(tmp_path / "x.npy"),
                        "--keys", str(c.client.keys_dir), "-o", str(tmp_path / "x.enc")],
                       env=env, check=True, capture_output=True, timeout=300)
        # Worker A must be admitted first, so that the coordinator knows one operator when the run starts.
        deadline = time.monotonic() + 120
        while "admitted" not in (tmp_path / "workers.log").read_text(errors="replace"):
            assert time.monotonic() < deadline, (tmp_path / "workers.log").read_text()[-2000:]
            time.sleep(0.5)
        run = subprocess.Popen([PYTHON, "-m", "he_compute", "run", str(tmp_path / "x.enc"), "--bundle",
                                str(c.bundle_path), "--keys", str(c.client.keys_dir), "-o", str(tmp_path / "y.enc"),
                                "--replicas", "2", "--timeout", "600"],
                               env={**env, "HEC_PROGRESS": "off"}, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(run.stderr), daemon=True)
        reader.start()
        deadline = time.monotonic() + 120
        while not any("waiting for a second operator" in line for line in lines):
            assert run.poll() is None and time.monotonic() < deadline, "".join(lines)[-2000:]
            time.sleep(0.2)
        said = next(line for line in lines if "waiting for a second operator" in line)
        assert said.startswith("Warning: ") and "admitted workers of 1" in said and "resumes" in said, said
        # The run goes on waiting: a second operator's worker enrols, and the same run finishes.
        lab = tmp_path / "lab-b.token"
        subprocess.run([PYTHON, "-m", "he_compute", "coordinator", "enroll-token", "--operator", "lab-b", "--data",
                        str(coord.data), "-o", str(lab)], check=True, capture_output=True, timeout=120)
        procs.append(worker_proc(coord, tmp_path / "worker-b", token_file=lab, log=tmp_path / "workers.log"))
        assert run.wait(timeout=600) == 0, "".join(lines)[-3000:] + (tmp_path / "workers.log").read_text()[-3000:]
        reader.join(10)
        assert sum("waiting for" in line for line in lines) == 1, lines
        y = c.client.decrypt(he_compute.read_container(tmp_path / "y.enc"))
        np.testing.assert_allclose(y, c.model.predict_proba(cancer[1][:2]), atol=1e-3)  # CKKS noise
    finally:
        if run is not None and run.poll() is None:
            run.kill()
            run.wait(30)
        stop_all(procs)
        coord.stop()


def test_replicas_the_allow_list_cannot_supply_are_refused_before_upload(ckks_linear, cancer, tmp_path):
    c = ckks_linear
    allow = tmp_path / "workers.allow"
    allow.write_text("".join(WorkerIdentity.load_or_create(str(tmp_path / f"w{i}")).public_line("operator=lab-a")
                             + "\n" for i in range(2)))
    c.client.encrypt(cancer[1][:2]).save(tmp_path / "x.enc")
    queue = f"sqlite://{tmp_path / 'queue.db'}"
    out = subprocess.run([PYTHON, "-m", "he_compute", "run", str(tmp_path / "x.enc"), "--bundle", str(c.bundle_path),
                          "--keys", str(c.client.keys_dir), "-o", str(tmp_path / "y.enc"), "--queue", queue,
                          "--replicas", "2", "--allow-workers", str(allow), "--timeout", "30"],
                         env={**os.environ, "HEC_PROGRESS": "off"}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert "needs workers of 2 distinct operators" in out.stderr and "answer to 1" in out.stderr, out.stderr
    assert not (tmp_path / "y.enc").exists()


def test_a_worker_admitted_after_the_run_started_votes_as_its_operator_and_unknown_ids_ask_once_each():
    from he_compute.client.run.votes import Voters

    admitted = {"wa": "default"}
    asked = []

    def operators():
        asked.append(1)
        return dict(admitted)

    voters = Voters({"wa": "default"}, keys_vote=False, refresh=operators)
    admitted["wb"] = "lab-b"  # enrolled while the run waited
    assert voters.voter("wb") == "op:lab-b" and len(asked) == 1
    assert voters.voter("wa") == "op:default" and len(asked) == 1  # known ones never ask
    # A stranger's ids: each asks once, then stays unattributed without asking again.
    assert [voters.voter("x") for _ in range(5)] == [None] * 5 and len(asked) == 2
