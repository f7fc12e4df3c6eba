"""A new user's first hour (issue 22, item 10 and the warning format), as their own script or notebook sees it.

Each test is what a user did, and failed on the code before: a script that imports Concrete ML itself (as the
notebooks do) printed torch's "No CUDA runtime is found" notice although ``import he_compute`` came first; a
warning of he_compute's came out in Python's two-line format naming he_compute's own file and source line;
``hec info`` on a CKKS batch bundle gave bytes per sample of a full batch, so 89 rows looked 46 times cheaper
than the file they make.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.datasets import load_breast_cancer, load_diabetes

import he_compute
from he_compute.cli import main
from he_compute.errors import HECWarning

NOTICE = "No CUDA runtime is found"
# torch prints its notice where CUDA_HOME is set and no CUDA runtime answers: set it, so that the tests
# below meet the notice on every machine without a GPU (the control test shows that it does).
ENV = {**os.environ, "CUDA_HOME": "/usr/local", "PYTHONWARNINGS": ""}

USER_SCRIPT = """
    import warnings

    import he_compute
    from concrete.ml.sklearn import LogisticRegression  # the user's own import, as in notebook 01
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    model = LogisticRegression(n_bits=4).fit(X, y)
    bundle = he_compute.compile(model, X, scheme="tfhe")
    client = he_compute.Client.keygen(bundle, "keys")
    X_new = X[:3].copy()
    X_new[1, 2] = 1e6
    client.encrypt(X_new)  # a value far outside the quantization range: said once

    X_new[0, 3] = -1e6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", he_compute.errors.HECWarning)  # still an ordinary, filterable warning
        client.encrypt(X_new)
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # importing Concrete ML silenced every warning; the user's own again
        warnings.warn("a warning of the user's own")
    print("done")
"""


@pytest.fixture(scope="module")
def user_script(tmp_path_factory):
    """The script, run as ``python script.py`` in an empty directory: (its path, the finished process)."""
    root = tmp_path_factory.mktemp("user")
    script = root / "script.py"
    script.write_text(textwrap.dedent(USER_SCRIPT))
    done = subprocess.run([sys.executable, str(script)], cwd=root, env=ENV, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr
    return script, done


def test_the_test_machine_shows_torchs_notice_to_an_import_without_he_compute():
    """The control: without he_compute imported first, the same environment prints the notice."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA runtime answers here, so torch prints no notice to silence")
    done = subprocess.run([sys.executable, "-c", "import torch.utils.cpp_extension"], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert NOTICE in done.stderr, done.stderr


def test_a_users_script_importing_concrete_ml_shows_no_cuda_notice(user_script):
    _, done = user_script
    assert NOTICE not in done.stderr, done.stderr


def test_a_failing_import_under_the_filter_still_raises_and_shows_its_output(tmp_path):
    """The filter drops the notice only: what else the module prints, and its failure, reach the user."""
    fake = tmp_path / "torch" / "utils"
    fake.mkdir(parents=True)
    (tmp_path / "torch" / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "cpp_extension.py").write_text(
        "import sys\nprint(\"No CUDA runtime is found, using CUDA_HOME='/x'\", file=sys.stderr)\n"
        "print('something else went wrong', file=sys.stderr)\nraise ImportError('broken build')\n")
    code = "import he_compute\nimport torch.utils.cpp_extension\n"
    done = subprocess.run([sys.executable, "-c", code], env={**ENV, "PYTHONPATH": str(tmp_path)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "ImportError: broken build" in done.stderr, done.stderr
    assert "something else went wrong" in done.stderr and NOTICE not in done.stderr, done.stderr


def test_a_users_script_shows_he_computes_warning_as_one_line(user_script):
    script, done = user_script
    lines = done.stderr.splitlines()
    ours = [line for line in lines if "saturate" in line]
    assert len(ours) == 1 and ours[0].startswith("Warning: ") and "row 1 feature 2" in ours[0], done.stderr
    after = lines[lines.index(ours[0]) + 1:]
    assert not after or not after[0].startswith(" "), done.stderr  # no source line follows it
    # Python's format named he_compute's file and repeated its source line: neither appears now.
    assert not any("HECWarning" in line or "encrypt(" in line for line in lines), done.stderr
    assert "row 0 feature 3" not in done.stderr  # the user's filter silenced the second one
    # Every other warning keeps Python's own format.
    assert re.search(rf"{re.escape(str(script))}:\d+: UserWarning: a warning of the user's own", done.stderr)


def test_pytest_warns_still_catches_he_computes_warning(tmp_path):
    from sklearn.linear_model import Ridge

    X, y = load_diabetes(return_X_y=True)
    client = he_compute.Client.keygen(he_compute.compile(Ridge().fit(X, y), X, scheme="ckks"), tmp_path / "keys",
                                      register=False)
    X_new = X[:5].copy()
    X_new[3, 4] = 1e7
    with pytest.warns(HECWarning, match="row 3 feature 4"):
        client.encrypt(X_new)


# ---- CKKS bytes: what a run of a given size costs, not a full batch's share -----------------------------

UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}


def in_out_bytes(text: str) -> tuple[float, float]:
    """The first ``X in, Y out`` sizes of a printed estimate line, in bytes."""
    m = re.search(r"([\d.]+) (B|KB|MB|GB) in, ([\d.]+) (B|KB|MB|GB) out", text)
    assert m, text
    return float(m.group(1)) * UNITS[m.group(2)], float(m.group(3)) * UNITS[m.group(4)]


def line_of(output: str, head: str) -> str:
    found = [line for line in output.splitlines() if line.strip().startswith(head)]
    assert len(found) == 1, output
    return found[0]


def test_ckks_bytes_printed_for_89_rows_are_the_files_89_rows_make(tmp_path):
    from sklearn.linear_model import LogisticRegression

    X, y = load_breast_cancer(return_X_y=True)
    model = LogisticRegression(max_iter=5000).fit(X[:400], y[:400])
    he_compute.compile(model, X[:400], scheme="ckks").save(tmp_path / "m.hec")
    np.save(tmp_path / "x.npy", X[400:489])  # 89 rows, as the user had
    runner = CliRunner()
    info = runner.invoke(main, ["info", str(tmp_path / "m.hec")])
    plan = runner.invoke(main, ["plan", str(tmp_path / "m.hec"), "--samples", "89"])
    assert info.exit_code == 0 and plan.exit_code == 0, info.output + plan.output
    for cmd in (["keygen", tmp_path / "m.hec", "--keys", tmp_path / "keys"],
                ["encrypt", tmp_path / "m.hec", tmp_path / "x.npy", "--keys", tmp_path / "keys", "-o", tmp_path / "x.enc"],
                ["eval", tmp_path / "x.enc", "--bundle", tmp_path / "m.hec", "--eval-keys",
                 tmp_path / "keys" / "evaluation.keys", "-o", tmp_path / "y.enc"]):
        done = runner.invoke(main, [str(a) for a in cmd])
        assert done.exit_code == 0, done.output
    real_in, real_out = (tmp_path / "x.enc").stat().st_size, (tmp_path / "y.enc").stat().st_size
    for printed in (line_of(info.stdout, "bytes per batch:"), line_of(plan.stdout, "bytes for 89 samples:")):
        said_in, said_out = in_out_bytes(printed)
        assert abs(said_in / real_in - 1) < 0.05 and abs(said_out / real_out - 1) < 0.05, (printed, real_in, real_out)
    # The per-sample figure is labelled as a full batch's share, never as what 89 rows cost.
    assert "per sample in full batches" in line_of(info.stdout, "bytes per batch:")
    assert "bytes per sample:" not in info.stdout
