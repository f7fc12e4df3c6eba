"""The hec CLI: the whole flow on files, and one-line errors for bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import he_compute
from he_compute.cli import commands, main
from cli_support import one_line_error

HEC = [sys.executable, "-m", "he_compute"]


def _run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def onnx_model(tiny_mlp, tmp_path_factory):
    """The tiny torch MLP exported to ONNX, with its calibration data on disk."""
    import torch

    net, Xtr, Xte = tiny_mlp
    root = tmp_path_factory.mktemp("onnx")
    torch.onnx.export(net, torch.zeros(1, 30), root / "mlp.onnx", input_names=["x"], output_names=["y"])
    np.save(root / "calib.npy", Xtr)
    np.savetxt(root / "test.csv", Xte[:3], delimiter=",", header=",".join(f"f{i}" for i in range(30)), comments="")
    return root, Xtr, Xte


@pytest.mark.slow
def test_full_flow_from_onnx(onnx_model, tmp_path):
    from concrete.ml.torch.compile import compile_onnx_model
    import onnx
    import onnx.version_converter

    root, Xtr, Xte = onnx_model
    b, k = tmp_path / "mlp.hec", tmp_path / "keys"
    r = _run("compile", root / "mlp.onnx", "--scheme", "tfhe", "--calibration", root / "calib.npy",
             "-o", b, "--n-bits", 4, "--rounding-bits", 4)
    assert r.exit_code == 0, r.output
    assert _run("keygen", b, "--keys", k).exit_code == 0
    assert _run("encrypt", b, root / "test.csv", "--keys", k, "-o", tmp_path / "x.enc").exit_code == 0
    r = _run("eval", tmp_path / "x.enc", "--bundle", b, "--eval-keys", k / "evaluation.keys", "-o", tmp_path / "y.enc")
    assert r.exit_code == 0, r.output
    assert _run("decrypt", tmp_path / "y.enc", "--keys", k, "-o", tmp_path / "y.npy").exit_code == 0
    got = np.load(tmp_path / "y.npy")
    opset14 = onnx.version_converter.convert_version(onnx.load(root / "mlp.onnx"), 14)
    clear = compile_onnx_model(opset14, Xtr, n_bits=4, rounding_threshold_bits=4)
    np.testing.assert_allclose(got, clear.forward(Xte[:3], fhe="disable"), atol=1e-9)
    info = _run("info", b, "--json")
    assert '"security_level": 128' in info.output and '"kind": "bundle"' in info.output


@pytest.fixture(scope="module")
def files(compiled, cancer, tmp_path_factory):
    _, X_test, _, _ = cancer
    root = tmp_path_factory.mktemp("cli")
    np.savetxt(root / "good.csv", X_test[:2], delimiter=",")
    np.savetxt(root / "short.csv", X_test[:2, :29], delimiter=",")
    nan = X_test[:2].copy()
    nan[1, 3] = np.nan
    np.save(root / "nan.npy", nan)
    (root / "junk.csv").write_text("1.0,2.0,abc\n")
    (root / "binary.csv").write_bytes(b"\xff\xfe\x00\x81garbage")
    data = bytearray(compiled("linear").bundle_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (root / "corrupt.hec").write_bytes(bytes(data))
    return root


@pytest.mark.parametrize("args, expected", [
    (["keygen", "{root}/missing.hec", "--keys", "{root}/k"], "missing.hec does not exist"),
    (["keygen", "{root}/corrupt.hec", "--keys", "{root}/k"], "corrupt or truncated"),
    (["keygen", "{root}/good.csv", "--keys", "{root}/k"], "not a he_compute file"),
    (["encrypt", "{linear}", "{root}/short.csv", "--keys", "{lkeys}", "-o", "{root}/o.enc"],
     "has 29 features per sample, the model expects 30"),
    (["encrypt", "{linear}", "{root}/nan.npy", "--keys", "{lkeys}", "-o", "{root}/o.enc"], "sample 1 contains NaN"),
    (["encrypt", "{linear}", "{root}/junk.csv", "--keys", "{lkeys}", "-o", "{root}/o.enc"], "'abc' is not a number"),
    (["encrypt", "{linear}", "{root}/binary.csv", "--keys", "{lkeys}", "-o", "{root}/o.enc"], "not a readable CSV"),
    (["encrypt", "{tree}", "{root}/good.csv", "--keys", "{lkeys}", "-o", "{root}/o.enc"], "were made for model"),
    (["encrypt", "{linear}", "{root}/good.csv", "--keys", "{root}/nokeys", "-o", "{root}/o.enc"], "holds no keys"),
    (["decrypt", "{root}/good.csv", "--keys", "{lkeys}", "-o", "{root}/o.csv"], "not a he_compute file"),
    (["compile", "{root}/good.csv", "--calibration", "{root}/good.csv", "-o", "{root}/b.hec"], "expected an .onnx file"),
])
def test_bad_input_gets_one_line(args, expected, files, compiled):
    subs = {"root": files, "linear": compiled("linear").bundle_path, "tree": compiled("tree").bundle_path,
            "lkeys": compiled("linear").client.keys_dir}
    result = _run(*[a.format(**subs) for a in args])
    one_line_error(result, expected)
    assert not (files / "o.enc").exists() and not (files / "o.csv").exists()


def test_result_for_other_keys_is_refused(compiled, cancer, tmp_path):
    _, X_test, _, _ = cancer
    c = compiled("linear")
    other = he_compute.Client.keygen(c.bundle, tmp_path / "other")
    evaluator = he_compute.Evaluator(c.bundle.server_part())
    keys = evaluator.load_keys(he_compute.read_evaluation_keys(other.evaluation_keys_path))
    evaluator.evaluate(other.encrypt(X_test[:1]), keys).save(tmp_path / "r.enc")
    one_line_error(_run("decrypt", tmp_path / "r.enc", "--keys", c.client.keys_dir, "-o", tmp_path / "o.csv"),
                    "cannot decrypt it")
    assert not (tmp_path / "o.csv").exists()


def test_real_process_prints_no_traceback_and_debug_does(tmp_path):
    plain = subprocess.run([*HEC, "keygen", str(tmp_path / "nope.hec"), "--keys", str(tmp_path / "k")],
                           capture_output=True, text=True, timeout=120)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines()[-1] == f"Error: {tmp_path / 'nope.hec'} does not exist"
    debug = subprocess.run([*HEC, "--debug", "keygen", str(tmp_path / "nope.hec"), "--keys", str(tmp_path / "k")],
                           capture_output=True, text=True, timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_every_command_has_help_with_an_example():
    for name, command in commands().items():
        result = _run(name, "--help")
        assert result.exit_code == 0 and "Example:" in result.output, name


def test_the_lazy_command_table_names_every_command():
    """A command missing from LAZY would be unreachable; each entry names a module-level command by its name."""
    import importlib
    import pkgutil

    import click

    from he_compute import cli

    top = {}
    for info in pkgutil.iter_modules(cli.__path__):
        module = importlib.import_module(f"he_compute.cli.{info.name}")
        found = {attr: obj for attr, obj in vars(module).items()
                 if isinstance(obj, click.Command) and obj.callback.__module__ == module.__name__}
        subcommands = {id(c) for g in found.values() if isinstance(g, click.Group) for c in g.commands.values()}
        top |= {obj.name: f"{info.name}:{attr}" for attr, obj in found.items() if id(obj) not in subcommands}
    assert top == cli.LAZY
    assert set(commands()) == set(cli.LAZY)


def test_scheme_specific_flags_are_checked(files):
    one_line_error(_run("compile", files / "m.onnx", "--scheme", "ckks", "--n-bits", 4, "--calibration",
                         files / "good.csv", "-o", files / "b.hec"), "--n-bits do(es) not apply to --scheme ckks")
    one_line_error(_run("compile", files / "m.onnx", "--packing", "batch", "--calibration",
                         files / "good.csv", "-o", files / "b.hec"), "--packing do(es) not apply to --scheme tfhe")
