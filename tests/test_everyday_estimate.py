"""Pre-flight estimates (issue 14, item 5) against what evaluating really costs, with a tolerance.

Time is compared as a ratio within TIME_FACTOR either way: the estimate is for one idle core, the test
machine is shared.  Sizes must match closely, and the CKKS expected error must be the error seen.
On the code before issue 14 there was no estimate, no ``hec plan``, and ``hec info`` showed none.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

import he_compute
from he_compute.cli import main
from he_compute.client.estimate import estimate

TIME_FACTOR = 4.0


def within(estimated: float, measured: float, factor: float) -> bool:
    return measured / factor <= estimated <= measured * factor


@pytest.mark.slow
def test_tfhe_estimate_matches_a_worker_evaluating_on_one_core(compiled, cancer, tmp_path):
    c = compiled("tree")
    est = estimate(c.bundle)
    assert est.unit == "sample" and est.p_error is not None and est.expected_error is None
    assert within(est.evaluation_key_bytes, c.client.evaluation_keys_path.stat().st_size, 1.01)
    enc = c.client.encrypt(cancer[1][:2])
    enc.save(tmp_path / "x.enc")
    assert within(est.input_bytes_per_sample, len(enc.sections["chunk/000000"]), 1.05)
    # Exactly what a one-core worker does, in its own process: hec eval reports seconds per sample.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HEC_PROGRESS": "off"}
    out = subprocess.run([sys.executable, "-m", "he_compute", "eval", str(tmp_path / "x.enc"), "--bundle",
                          str(c.bundle_path), "--eval-keys", str(c.client.evaluation_keys_path), "-o",
                          str(tmp_path / "y.enc")], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr
    measured = float(re.search(r"\(([\d.]+)s/sample\)", out.stderr).group(1))
    assert within(est.seconds_per_unit, measured, TIME_FACTOR), (est.seconds_per_unit, measured)
    result = he_compute.read_container(tmp_path / "y.enc")
    assert within(est.output_bytes_per_sample, len(result.sections["chunk/000000"]), 1.05)


def test_ckks_estimate_matches_time_sizes_and_error(tiny_mlp, tmp_path):
    import torch

    net, Xtr, _ = tiny_mlp
    bundle = he_compute.compile(net, Xtr, scheme="ckks", packing="batch")
    est = estimate(bundle)
    assert est.unit == "batch" and est.samples_per_unit == bundle.manifest["ckks"]["slots"]
    client = he_compute.Client.keygen(bundle, tmp_path / "keys", register=False)
    assert within(est.evaluation_key_bytes, client.evaluation_keys_path.stat().st_size, 1.02)
    evaluator = he_compute.Evaluator(bundle.server_part())
    keys = evaluator.load_keys(he_compute.read_evaluation_keys(client.evaluation_keys_path))
    X = Xtr[:200]  # the calibration data the expected error was measured on
    enc = client.encrypt(X)
    assert within(est.input_bytes_per_unit, len(enc.sections["chunk/000000"]), 1.05)
    start = time.perf_counter()
    result = evaluator.evaluate(enc, keys)
    measured = time.perf_counter() - start
    assert within(est.seconds_per_unit, measured, TIME_FACTOR), (est.seconds_per_unit, measured)
    assert within(est.output_bytes_per_unit, len(result.sections["chunk/000000"]), 1.3)
    error = np.abs(client.decrypt(result) - net(torch.tensor(X, dtype=torch.float32)).detach().numpy()).max()
    assert within(est.expected_error, error, 3.0), (est.expected_error, error)


def test_plan_scales_the_estimate_to_n_samples_and_w_workers(compiled):
    c = compiled("tree")
    r = CliRunner().invoke(main, ["plan", str(c.bundle_path), "--samples", "10", "--workers", "4", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    per, plan = out["estimate"]["seconds_per_unit"], out["plan"]
    assert plan["seconds"] == pytest.approx(3 * per)  # 10 samples on 4 workers: 3 rounds
    assert plan["upload_bytes"] > out["estimate"]["evaluation_key_bytes"] + 10 * 900
    r = CliRunner().invoke(main, ["info", str(c.bundle_path)])
    assert r.exit_code == 0 and "time per sample:" in r.stdout and "evaluation keys:" in r.stdout, r.output
