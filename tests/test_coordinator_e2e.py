"""An encrypted run end to end through a real coordinator over TLS and real ``hec worker --coordinator``
processes: the decrypted result equals the clear model; the ``hec`` commands work with a token and refuse
without one; the operator's status page shows it all in a real headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import he_compute
from coordinator_support import CoordinatorProc, coordinator_env, stop_all, worker_proc
from queue_support import wait_for

PYTHON = sys.executable


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, tls):  # noqa: F811
    root = tmp_path_factory.mktemp("e2e")
    coord = CoordinatorProc(root / "data", tls).start()
    # Two operators, so that replicas of one job can go to both (one operator never gets two of them).
    lab = root / "lab-b.token"
    out = subprocess.run([PYTHON, "-m", "he_compute", "coordinator", "enroll-token", "--operator", "lab-b", "--data",
                          str(coord.data), "-o", str(lab)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and oct(lab.stat().st_mode & 0o777) == "0o600", out.stderr
    procs = [worker_proc(coord, root / f"worker{i}", token_file=token, log=root / "workers.log")
             for i, token in enumerate((coord.data / "enroll.token", lab))]
    yield coord, root
    stop_all(procs)
    coord.stop()


def _hec(env, *args, check=True):
    out = subprocess.run([PYTHON, "-m", "he_compute", *args], env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert out.returncode == 0, out.stderr[-2000:]
    return out


def test_encrypted_model_through_the_coordinator_matches_the_clear_model(deployment, compiled, cancer, tmp_path):
    coord, root = deployment
    c = compiled("linear")
    X = cancer[1][:6]
    os.environ["HEC_CHECKPOINTS"] = str(tmp_path / "checkpoints.json")
    tenant = he_compute.TenantAccess(coord.url, token=coord.token(), ca_file=str(coord.tls[0]))
    with he_compute.EncryptedModel(c.bundle_path, keys=c.client.keys_dir, queue=tenant, timeout=300) as model:
        np.testing.assert_allclose(model.predict_proba(X), c.model.predict_proba(X, fhe="disable"), atol=1e-9)
    kept = json.loads((tmp_path / "checkpoints.json").read_text())
    assert list(kept.values())[0]["size"] >= 2  # submissions and receipts, in this tenant's log at the coordinator


@pytest.mark.slow
def test_hec_commands_through_the_coordinator(deployment, compiled, cancer, tmp_path):
    coord, root = deployment
    c = compiled("linear")
    env = coordinator_env(coord, tmp_path)
    np.save(tmp_path / "x.npy", cancer[1][6:10])
    _hec(env, "encrypt", str(c.bundle_path), str(tmp_path / "x.npy"), "--keys", str(c.client.keys_dir),
         "-o", str(tmp_path / "x.enc"))
    _hec(env, "run", str(tmp_path / "x.enc"), "--bundle", str(c.bundle_path), "--keys", str(c.client.keys_dir),
         "-o", str(tmp_path / "y.enc"), "--replicas", "2", "--timeout", "300")
    y = c.client.decrypt(he_compute.read_container(tmp_path / "y.enc"))
    np.testing.assert_allclose(y, c.model.predict_proba(cancer[1][6:10], fhe="disable"), atol=1e-9)
    jobs = json.loads(_hec(env, "jobs", "--json").stdout)
    assert jobs and {j["state"] for j in jobs} <= {"done", "cancelled"}
    assert "done" in _hec(env, "status", jobs[0]["id"]).stdout
    out = _hec(env, "audit", "verify")
    assert "entries intact" in out.stdout
    ended = _hec(env, "cancel", jobs[0]["id"], check=False)
    assert ended.returncode == 1 and "already ended" in ended.stderr
    # The same from a config file alone (no HEC_COORDINATOR / HEC_TOKEN_FILE / HEC_CA_FILE).
    (tmp_path / "config.toml").write_text(f'coordinator = "{coord.url}"\ntoken_file = "{coord.data / "client.token"}"\n'
                                          f'ca_file = "{coord.tls[0]}"\n')
    bare = {k: v for k, v in env.items() if k not in ("HEC_COORDINATOR", "HEC_TOKEN_FILE", "HEC_CA_FILE")}
    assert len(json.loads(_hec({**bare, "HEC_CONFIG": str(tmp_path / "config.toml")}, "jobs", "--json").stdout)) == len(jobs)
    # No valid token: one line, non-zero exit, no traceback.
    (tmp_path / "bad.token").write_text("hect_forged\n")
    os.chmod(tmp_path / "bad.token", 0o600)
    for args in (["jobs"], ["status"], ["audit", "verify"]):
        bad = _hec({**env, "HEC_TOKEN_FILE": str(tmp_path / "bad.token")}, *args, check=False)
        assert bad.returncode == 1 and "Traceback" not in bad.stderr
        assert bad.stderr.strip().count("\n") == 0 and "no valid tenant token" in bad.stderr, bad.stderr
    missing = _hec({**env, "HEC_TOKEN_FILE": str(tmp_path / "absent.token")}, "jobs", check=False)
    assert missing.returncode == 1 and "cannot read token file" in missing.stderr


def test_status_page_in_a_headless_browser(deployment, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    coord, root = deployment
    chrome, driver_exe = shutil.which("chromium"), shutil.which("chromedriver")
    assert chrome and driver_exe, "make test installs Debian's chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--ignore-certificate-errors",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver_exe), options=options)
    try:
        browser.get(f"{coord.url}/status")
        assert "Operator token" in browser.page_source  # 401: the login form, nothing else
        assert not browser.find_elements(By.ID, "workers")
        browser.find_element(By.ID, "token").send_keys("heco_wrong")
        browser.find_element(By.ID, "login").click()
        message = wait_for(lambda: browser.find_elements(By.ID, "message"), timeout=30, what="the refusal")
        assert "not the operator token" in message[0].text
        wait_for(lambda: browser.find_elements(By.ID, "token"), timeout=30, what="the login form again")
        browser.find_element(By.ID, "token").send_keys(coord.token("operator.token"))
        browser.find_element(By.ID, "login").click()
        wait_for(lambda: browser.find_elements(By.ID, "workers"), timeout=30, what="the status page")
        workers = browser.find_element(By.ID, "workers").text
        assert "default" in workers and "lab-b" in workers  # each worker under the operator that enrolled it
        assert "done" in browser.find_element(By.ID, "jobs").text
        assert "jobs/s" in browser.find_element(By.ID, "throughput").text
        assert browser.find_elements(By.ID, "dead") or browser.find_elements(By.ID, "dead-empty")
    finally:
        browser.quit()
