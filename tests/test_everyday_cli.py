"""Everyday CLI use (issue 14): short commands, quiet and fast client commands, readable output.

Each test fails on the code before issue 14: ``hec run`` and ``hec decrypt`` needed ``--bundle``/``--keys``,
TFHE secret-key files held the evaluation keys too, torch's CUDA notice and one progress line per sample
reached every TFHE command, ``hec info`` printed dict reprs, and so on.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

import he_compute
from he_compute.cli import main
from cli_support import one_line_error


def hec(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# ---- item 1: hec run / decrypt / encrypt find what keygen made ----------------------------------------


def test_shortest_path_needs_no_repeated_flags(compiled, cancer, workdir):
    c = compiled("linear")
    X = cancer[1][:4]
    np.savetxt("x.csv", X, delimiter=",")
    assert hec("keygen", c.bundle_path, "--keys", "k").exit_code == 0
    r = hec("encrypt", c.bundle_path, "x.csv", "-o", "x.enc")
    assert r.exit_code == 0, r.output
    r = hec("run", "x.enc", "-o", "y.enc", "--local-workers", "1", "--timeout", "300")
    assert r.exit_code == 0, r.output
    r = hec("decrypt", "y.enc", "-o", "y.csv")
    assert r.exit_code == 0, r.output
    np.testing.assert_allclose(np.loadtxt("y.csv", delimiter=","), c.model.predict_proba(X, fhe="disable"),
                               atol=1e-9)
    assert stat.S_IMODE(os.stat("y.csv").st_mode) == 0o600
    # The ciphertexts were made with the keys just generated, and the key directory keeps the server part.
    enc = he_compute.read_container("x.enc", expect="ciphertexts")
    assert enc.meta["key_id"] == he_compute.Client("k").key_id
    assert he_compute.read_container("k/server.hec", expect="server").meta["model_id"] == c.bundle.model_id


def test_unknown_keys_name_the_flag_to_pass(compiled, cancer, workdir, monkeypatch):
    c = compiled("linear")
    c.client.encrypt(cancer[1][:1]).save("x.enc")
    # Another machine, or another user: the registry does not know these keys.
    monkeypatch.setenv("HEC_HOME", str(workdir / "elsewhere"))
    one_line_error(hec("run", "x.enc", "-o", "y.enc"), "pass --keys DIR")
    one_line_error(hec("encrypt", c.bundle_path, "x.csv", "-o", "x2.enc"), "does not exist")
    np.savetxt("x.csv", cancer[1][:1], delimiter=",")
    one_line_error(hec("encrypt", c.bundle_path, "x.csv", "-o", "x2.enc"), "pass --keys DIR")
    # A key directory made before keygen kept the server part: --bundle is named.
    old = workdir / "oldkeys"
    he_compute.Client.keygen(c.bundle, old)
    (old / "server.hec").unlink()
    he_compute.Client(old).encrypt(cancer[1][:1]).save("x3.enc")
    one_line_error(hec("run", "x3.enc", "-o", "y.enc"), "pass --bundle FILE")
    one_line_error(hec("run", "x3.enc", "--keys", old, "-o", "y.enc"), "pass --bundle FILE")


# ---- item 8: client commands are quick, quiet and checked early ------------------------------------------


def test_tfhe_secret_key_file_holds_the_secret_keys_only(compiled):
    keys = compiled("tree").client.keys_dir
    secret, evaluation = (keys / "secret.keys").stat().st_size, (keys / "evaluation.keys").stat().st_size
    assert evaluation > 10_000_000 and secret < 200_000, (secret, evaluation)


def test_tfhe_encrypt_without_a_terminal_is_quiet(compiled, cancer, tmp_path):
    """A real process: no torch CUDA notice, and a few progress lines rather than one per sample."""
    c = compiled("tree")
    np.savetxt(tmp_path / "x.csv", cancer[1][:12], delimiter=",")
    env = {**os.environ, "CUDA_HOME": "/usr/local"}  # where torch prints its notice when no CUDA runtime is found
    env.pop("HEC_PROGRESS", None)
    out = subprocess.run([sys.executable, "-m", "he_compute", "encrypt", str(c.bundle_path), str(tmp_path / "x.csv"),
                          "--keys", str(c.client.keys_dir), "-o", str(tmp_path / "x.enc")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.strip().splitlines()
    assert not any("CUDA" in line for line in lines), lines
    assert len(lines) <= 4 and lines[-1].startswith("wrote "), lines


def test_input_is_checked_before_keys_are_loaded(compiled, cancer, tmp_path):
    np.savetxt(tmp_path / "short.csv", cancer[1][:2, :29], delimiter=",")
    one_line_error(hec("encrypt", compiled("linear").bundle_path, tmp_path / "short.csv", "--keys",
                       tmp_path / "nokeys", "-o", tmp_path / "x.enc"), "has 29 features per sample")


def test_keygen_into_existing_keys_refuses_before_starting(compiled):
    c = compiled("linear")
    r = hec("keygen", c.bundle_path, "--keys", c.client.keys_dir)
    one_line_error(r, "already holds keys")
    assert "generating" not in r.output


def test_csv_error_shows_the_cell_not_the_row(compiled, cancer, tmp_path):
    rows = [";".join(f"{v:.6f}" for v in row) for row in cancer[1][:2]]
    (tmp_path / "semi.csv").write_text("\n".join(rows) + "\n")
    line = one_line_error(hec("encrypt", compiled("linear").bundle_path, tmp_path / "semi.csv", "--keys",
                              compiled("linear").client.keys_dir, "-o", tmp_path / "x.enc"), "is not a number")
    assert "separate values with ';'" in line and len(line) - len(str(tmp_path)) < 180, line


def test_info_prints_readable_text(ckks_cli_bundle):
    r = hec("info", ckks_cli_bundle.path)
    assert r.exit_code == 0, r.output
    assert not any(ch in r.output for ch in "{}[]'"), r.output
    assert "activations:" in r.output and "security level:" in r.output


def test_info_into_a_pipe_closed_early_ends_quietly(ckks_cli_bundle):
    """`hec info M | head -1`: the reader leaves after one line; hec stops without an error line."""
    proc = subprocess.Popen([sys.executable, "-m", "he_compute", "info", str(ckks_cli_bundle.path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "HEC_PROGRESS": "off"})
    first = proc.stdout.readline()
    proc.stdout.close()  # before hec has written the rest: its next write meets a closed pipe
    err = proc.stderr.read().decode()
    proc.wait(60)
    assert first.startswith(b"file:") and "Error" not in err and "Traceback" not in err, err


# ---- item 9: manifest -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckks_cli_bundle(tiny_mlp, tmp_path_factory):
    """The tiny torch MLP exported to ONNX and compiled for CKKS by the CLI."""
    import torch

    net, Xtr, _ = tiny_mlp
    root = tmp_path_factory.mktemp("ckks-cli")
    torch.onnx.export(net, torch.zeros(1, 30), root / "mlp.onnx", input_names=["x"], output_names=["y"])
    np.save(root / "calib.npy", Xtr)
    r = hec("compile", root / "mlp.onnx", "--scheme", "ckks", "--calibration", root / "calib.npy",
            "-o", root / "mlp.hec")
    assert r.exit_code == 0, r.output
    return SimpleNamespace(path=root / "mlp.hec", output=r.output)


def test_compile_prints_the_estimate(ckks_cli_bundle):
    assert "time per batch:" in ckks_cli_bundle.output and "expected error:" in ckks_cli_bundle.output


def test_ckks_bundle_from_the_cli_names_its_model_type(ckks_cli_bundle):
    assert he_compute.load_bundle(ckks_cli_bundle.path).manifest["model_type"] == "ONNX"


# ---- item 6: the knobs reach hec compile ------------------------------------------------------------------


def test_compile_knobs_reach_the_compilers(ckks_cli_bundle):
    root = ckks_cli_bundle.path.parent
    onnx, calib = root / "mlp.onnx", root / "calib.npy"
    r = hec("compile", onnx, "--calibration", calib, "--p-error", "0.01", "--n-bits", 4, "--rounding-bits", 4,
            "-o", root / "t.hec", "--no-estimate")
    assert r.exit_code == 0, r.output
    m = he_compute.load_bundle(root / "t.hec").manifest
    assert m["tfhe"]["p_error"] == pytest.approx(0.01) and m["quantization"]["n_bits"] == 4
    r = hec("compile", onnx, "--scheme", "ckks", "--calibration", calib, "--activation-degree", 2,
            "--packing", "auto", "--batch-size", 2, "-o", root / "c.hec", "--no-estimate")
    assert r.exit_code == 0, r.output
    ckks = he_compute.load_bundle(root / "c.hec").manifest["ckks"]
    assert ckks["packing"] == "single" and {a["degree"] for a in ckks["activations"]} == {2}
    one_line_error(hec("compile", onnx, "--calibration", calib, "--max-error", 0.1, "-o", root / "x.hec"),
                   "--max-error do(es) not apply to --scheme tfhe")
    r = hec("compile", onnx, "--scheme", "ckks", "--calibration", calib, "--max-error", 1.0, "-o", root / "e.hec",
            "--no-estimate")
    assert r.exit_code == 0, r.output
    assert he_compute.load_bundle(root / "e.hec").manifest["ckks"]["predicted_max_error"] <= 1.0
    one_line_error(hec("compile", onnx, "--scheme", "ckks", "--calibration", calib, "--max-error", 0.01,
                       "-o", root / "f.hec"), "cannot be met")
