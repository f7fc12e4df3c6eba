"""End to end through the CLI: hec run with local workers on the embedded queue, then hec decrypt.

Decrypted results must equal Concrete ML's clear quantized model (``fhe="disable"``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import he_compute
from he_compute.cli import main


def _hec(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.stdout, r.stderr


def _encrypt(c, X, path):
    c.client.encrypt(c.prepare(X)).save(path)


def _check_decrypt(c, X, result_path, tmp_path):
    code, _, err = _hec("decrypt", str(result_path), "--keys", str(c.client.keys_dir), "-o", str(tmp_path / "y.npy"))
    assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), c.model.predict_proba(c.prepare(X), fhe="disable"),
                               atol=1e-9)


def test_hec_run_with_two_local_workers_matches_the_clear_model(workdir, compiled, cancer):
    c = compiled("linear")
    X = cancer[1][:6]
    _encrypt(c, X, workdir / "x.enc")
    code, out, err = _hec("run", "x.enc", "--bundle", str(c.bundle_path), "--keys", str(c.client.keys_dir),
                          "-o", "y.enc", "--local-workers", "2", "--timeout", "300", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["uploaded"] == {"server": 1, "keys": 1, "inputs": 6} and len(summary["jobs"]) == 6
    assert len({w["worker"] for w in summary["workers"]}) >= 1
    assert (workdir / ".hec" / "queue.db").is_file() and (workdir / ".hec" / "blobs").is_dir()
    result = he_compute.read_container(workdir / "y.enc", expect="results")
    assert result.meta["n_samples"] == 6 and sorted(result.sections) == [f"chunk/{i:06d}" for i in range(6)]
    _check_decrypt(c, X, workdir / "y.enc", workdir)

    # A second run reuses the server part and the evaluation keys already in the blob store.
    code, out, err = _hec("run", "x.enc", "--bundle", str(c.bundle_path), "--keys", str(c.client.keys_dir),
                          "-o", "y2.enc", "--local-workers", "1", "--samples-per-job", "3", "--json")
    assert code == 0, err
    again = json.loads(out)
    assert again["uploaded"] == {} and again["reused"] == {"server": 1, "keys": 1, "inputs": 6}
    assert len(again["jobs"]) == 2
    _check_decrypt(c, X, workdir / "y2.enc", workdir)

    code, out, _ = _hec("status", "--json")
    assert json.loads(out)["counts"] == {"done": 8}
    code, out, _ = _hec("jobs", "--json")
    assert code == 0 and len(json.loads(out)) == 8
    code, out, _ = _hec("status", summary["jobs"][0], "--json")
    assert json.loads(out)["state"] == "done"


@pytest.mark.slow
def test_hec_run_decision_tree(workdir, compiled, cancer):
    c = compiled("tree")
    X = cancer[1][:2]
    _encrypt(c, X, workdir / "x.enc")
    code, _, err = _hec("run", "x.enc", "--bundle", str(c.bundle_path), "--eval-keys",
                        str(c.client.evaluation_keys_path), "-o", "y.enc", "--local-workers", "2", "--timeout", "600")
    assert code == 0, err
    _check_decrypt(c, X, workdir / "y.enc", workdir)


def test_hec_run_errors_are_one_line(workdir, compiled, cancer, monkeypatch):
    from concrete.ml.sklearn import LogisticRegression

    lin = compiled("linear")
    other = he_compute.compile(LogisticRegression(n_bits=4).fit(cancer[0], cancer[2]), cancer[0])
    other.save(workdir / "other.hec")
    _encrypt(lin, cancer[1][:1], workdir / "x.enc")
    code, _, err = _hec("run", "x.enc", "--bundle", str(workdir / "other.hec"), "--keys", str(lin.client.keys_dir),
                        "-o", "y.enc")
    assert code == 1 and err.strip() == ("Error: the ciphertexts were encrypted for another model than this bundle: "
                                         "encrypt with keys made for this bundle")
    # Without --keys, hec run looks the key id up in the user's key registry; an empty one names the flag.
    monkeypatch.setenv("HEC_HOME", str(workdir / "empty-home"))
    code, _, err = _hec("run", "x.enc", "--bundle", str(lin.bundle_path), "-o", "y.enc")
    assert code == 1 and err.strip().startswith("Error: no key directory on this machine holds key ")
    assert err.strip().endswith("that x.enc was made with: pass --keys DIR")
    code, _, err = _hec("run", "x.enc", "--bundle", str(lin.bundle_path), "--keys", str(lin.client.keys_dir),
                        "-o", "y.enc", "--timeout", "0.5")
    assert code == 1 and err.strip().startswith("Error: timed out with 0/1 jobs done (group 0: 0 result(s), 1 job(s) waiting")
    assert "the jobs were cancelled: start workers (hec worker --queue" in err
    assert not (workdir / "y.enc").exists()


def test_status_jobs_cancel_commands(workdir):
    from he_compute.transport import queue

    q = queue.connect()
    job_id = q.submit({"op": "noop"})
    code, out, _ = _hec("status", job_id)
    assert code == 0 and "queued" in out
    code, _, err = _hec("cancel", job_id)
    assert code == 0 and "cancelled" in err
    assert q.status(job_id).state is queue.JobState.CANCELLED
    code, _, err = _hec("cancel", job_id)
    assert code == 1 and err.strip() == f"Error: job {job_id} already ended (cancelled); nothing to cancel"
    code, _, err = _hec("status", "jnope")
    assert code == 1 and err.startswith("Error: no job jnope")
    code, out, _ = _hec("jobs", "--state", "cancelled")
    assert code == 0 and job_id in out


def test_every_queue_command_has_help_with_an_example():
    for cmd in ("run", "worker", "status", "jobs", "cancel"):
        code, out, _ = _hec(cmd, "--help")
        assert code == 0 and "Example: hec " in out
