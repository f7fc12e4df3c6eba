"""The architecture holds: imports run one way (import-linter's contracts in pyproject.toml), workers cannot
reach secret-key code, modules stay readable, and the public API is what ``__all__`` says."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import he_compute

ROOT = Path(he_compute.__file__).parent
SECRET_SIDE = ["he_compute.client", "he_compute.client.keys", "he_compute.client.client",
               "he_compute.schemes.tfhe.client", "he_compute.schemes.ckks.client"]
WORKER_SIDE = ["he_compute.worker.loop", "he_compute.worker.host", "he_compute.worker.executor",
               "he_compute.evaluator", "he_compute.schemes.tfhe.server", "he_compute.schemes.ckks.server"]
MAX_LINES = 420


def _lint_imports(root: Path = ROOT.parent) -> subprocess.CompletedProcess[str]:
    """import-linter over the package found in ``root`` (it imports from its working directory)."""
    exe = Path(sys.executable).with_name("lint-imports")
    cmd = [str(exe), "--no-cache"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=root)


def test_import_contracts_are_kept():
    out = _lint_imports()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 kept, 0 broken" in out.stdout


def test_the_contracts_catch_a_worker_module_importing_a_client_module(tmp_path):
    """Positive control: a worker module that imports the client breaks both the layers and the forbidden contract.

    The probe goes into a copy of the package, never into the source tree."""
    copy = tmp_path / "tree"
    shutil.copytree(ROOT, copy / "he_compute", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT.parent / "pyproject.toml", copy)
    (copy / "he_compute" / "worker" / "_contract_probe.py").write_text(
        '"""Deliberately wrong-way import."""\nfrom ..client.keys import read_info  # noqa: F401\n')
    out = _lint_imports(copy)
    assert out.returncode != 0
    assert "he_compute.worker is not allowed to import he_compute.client" in out.stdout
    assert "1 kept, 2 broken" in out.stdout


def test_worker_side_never_loads_the_secret_key_code():
    code = (
        "import importlib, sys\n"
        f"for m in {WORKER_SIDE!r}:\n"
        "    importlib.import_module(m)\n"
        f"print(sorted(m for m in {SECRET_SIDE!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_control_the_client_side_does_load_it():
    """Positive control for the check above."""
    code = "import he_compute.client.client, sys; print('he_compute.client.keys' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == "True"


def test_modules_stay_short_enough_to_read_in_one_sitting():
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_public_names_resolve_and_are_documented():
    for name in he_compute.__all__:
        obj = getattr(he_compute, name)
        if callable(obj):
            assert obj.__doc__, f"{name} lacks a docstring"


def test_importing_the_cli_does_not_import_concrete_or_tenseal():
    code = "import sys, he_compute.cli; print([m for m in ('concrete', 'tenseal', 'torch') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_mypy_catches_a_wrong_type(tmp_path):
    """``make lint`` runs mypy over he_compute; this positive control shows the check has teeth: a call into the
    wire layer with a wrong type is reported (and the same call with the right type is not)."""
    mypy = Path(sys.executable).with_name("mypy")
    config = ROOT.parent / "pyproject.toml"
    results = {}
    for name, arg in (("wrong", "42"), ("right", "b'42'")):
        snippet = tmp_path / f"{name}.py"
        snippet.write_text(f"from he_compute.formats.digests import digest_of\n\ndigest_of({arg})\n")
        results[name] = subprocess.run([str(mypy), "--config-file", str(config),
                                        str(snippet)], capture_output=True, text=True, timeout=600, cwd=ROOT.parent)
    assert results["right"].returncode == 0, results["right"].stdout
    assert results["wrong"].returncode == 1
    assert 'Argument 1 to "digest_of" has incompatible type "int"' in results["wrong"].stdout


MAX_FUNCTION_LINES, MAX_PARAMETERS = 60, 8
"""A function a reader can hold in mind: at most 60 lines and 8 parameters (``self`` not counted)."""

LONG_FUNCTIONS_LEFT: set[str] = set()
"""Functions still over a limit, to be split: the set only shrinks (the test below fails on a name that
has come within the limits, so that it is removed from here)."""


def _function_sizes() -> dict[str, tuple[int, int]]:
    """``module:function`` -> (lines, parameters) for functions over a limit, with the project's exemptions:
    the compilers (one pass over a model graph each), click command and group callbacks (each parameter is an option of
    the command line) and scikit-learn estimators' ``__init__`` (its ``get_params`` reads each keyword)."""
    import ast

    over: dict[str, tuple[int, int]] = {}
    for path in ROOT.rglob("*.py"):
        rel = str(path.relative_to(ROOT))
        if rel.startswith("schemes/") and rel.endswith("compiler.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            a = node.args
            names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
            params = len([n for n in names if n not in ("self", "cls")])
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            decorators = [ast.unparse(d) for d in node.decorator_list]
            if any(".command(" in d or ".group(" in d or d.startswith(("command(", "group(")) for d in decorators):
                params = 0
            if rel == "client/sklearn.py" and node.name == "__init__":
                params = 0
            if lines > MAX_FUNCTION_LINES or params > MAX_PARAMETERS:
                over[f"{rel}:{node.name}"] = (lines, params)
    return over


def test_functions_stay_short_and_take_few_parameters():
    over = _function_sizes()
    assert set(over) - LONG_FUNCTIONS_LEFT == set(), {k: over[k] for k in set(over) - LONG_FUNCTIONS_LEFT}
    assert LONG_FUNCTIONS_LEFT - set(over) == set(), "within the limits now: remove from LONG_FUNCTIONS_LEFT"
