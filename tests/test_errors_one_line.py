"""Every user mistake and every refusal ends in one line naming what to fix, never "internal error";
a worker the coordinator refuses stops instead of retrying for ever; and no deliberate ``raise`` outside
the error tree of ``he_compute.errors`` (checked on the source's syntax tree)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from coordinator_support import CoordinatorProc

PYTHON = sys.executable


def _hec(*args, env=None, timeout=300):
    return subprocess.run([PYTHON, "-m", "he_compute", *args], env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def _one_line(out, *needles, alone=True):
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 or not alone, out.stderr
    assert out.returncode != 0 and lines, out
    assert "internal error" not in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert lines[-1].startswith("Error: ") and all(n in lines[-1] for n in needles), out.stderr
    return lines[-1]


@pytest.mark.parametrize("name, value", [("HEC_JOB_TIMEOUT_S", "1h"), ("HEC_MAX_BLOB_MB", "lots"),
                                         ("HEC_BURST_PATIENCE_S", "-3"), ("HEC_SANDBOX_MEMORY_MB", "16G")])
def test_a_bad_setting_is_one_line_naming_it(tmp_path, name, value):
    """User mistake: a unit or a word where a number belongs.  The old code ended in "internal error:
    ValueError" at import (or, for the sandbox's limits, silently used the default)."""
    out = _hec("worker", "--burst", "--concurrency", "1", "--queue", f"sqlite:///{tmp_path}/q.db",
               env={name: value, "HEC_WORKER_STATE": ""})
    _one_line(out, name, value)


@pytest.fixture(scope="module")
def ckks_keys(tmp_path_factory):
    import he_compute
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    root = tmp_path_factory.mktemp("ckks")
    bundle = he_compute.compile(LogisticRegression(max_iter=500).fit(X, y), X, scheme="ckks")
    bundle.save(root / "model.hec")
    client = he_compute.Client.keygen(bundle, root / "keys")
    client.encrypt(X[:8]).save(root / "x.enc")
    np.save(root / "known.npy", X[8:18])
    return root, X


def test_canary_outputs_with_the_wrong_row_count_is_one_line_naming_the_flag(ckks_keys, tmp_path):
    """User mistake: ten known inputs, nine known outputs.  The old code: "internal error: ValueError"."""
    root, X = ckks_keys
    np.save(tmp_path / "outputs.npy", np.zeros((9, 2)))
    out = _hec("run", str(root / "x.enc"), "--bundle", str(root / "model.hec"), "--keys", str(root / "keys"),
               "-o", str(tmp_path / "y.enc"), "--queue", f"sqlite:///{tmp_path}/q.db", "--canaries", "0.3",
               "--canary-inputs", str(root / "known.npy"), "--canary-outputs", str(tmp_path / "outputs.npy"))
    _one_line(out, "--canary-outputs", "9", "10")
    assert not (tmp_path / "y.enc").exists()


def test_a_revoked_worker_stops_with_one_line_instead_of_retrying_for_ever(tmp_path, tls):  # noqa: F811
    """Attack/operator action: the operator revokes a worker's key.  The old worker took the refusal for an
    unreachable queue ("retrying") and went on asking for ever; with --concurrency 2 its supervisor also
    restarted the children for ever.  Now each ends with one line and the sysexits 'no permission' status."""
    from he_compute.worker.host import EXIT_REFUSED
    from he_compute.worker.identity import WorkerIdentity

    coord = CoordinatorProc(tmp_path / "data", tls).start()
    procs = []
    try:
        for n, concurrency in enumerate(("1", "2")):
            state = tmp_path / f"worker{n}"
            log = open(tmp_path / f"worker{n}.log", "w")
            procs.append((subprocess.Popen(
                [PYTHON, "-m", "he_compute", "worker", "--coordinator", coord.url, "--state", str(state),
                 "--token-file", str(coord.data / "enroll.token"), "--ca-file", str(coord.tls[0]),
                 "--concurrency", concurrency, "--threads", "1", "--device", "cpu"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log), state, tmp_path / f"worker{n}.log"))
        for proc, state, log in procs:
            deadline = time.monotonic() + 120
            while "admitted by" not in log.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.2)
            time.sleep(2)  # claiming, i.e. children started and polling
            out = _hec("coordinator", "revoke-worker", WorkerIdentity.load_or_create(state).worker_id,
                       "--data", str(coord.data))
            assert out.returncode == 0, out.stderr
        for proc, state, log in procs:
            try:
                code = proc.wait(60)
            except subprocess.TimeoutExpired:
                pytest.fail(f"a revoked worker kept running: {log.read_text()[-1500:]}")
            text = log.read_text()
            assert code == EXIT_REFUSED, text
            errors = [line for line in text.splitlines() if line.startswith("Error: ")]
            assert errors and all("revoked" in line for line in errors), text
            assert "Traceback" not in text and "restarting" not in text, text
    finally:
        for proc, _, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        coord.stop()


# Raises of Python's own exception types that are not user-facing errors, each with its reason.  Keyed by
# (module path, enclosing function, exception name) rather than line, so edits elsewhere do not break it.
ALLOWED_BUILTIN_RAISES = {
    ("he_compute/__init__.py", "__getattr__", "AttributeError"): "Python's protocol for a module __getattr__",
    ("he_compute/cli/jobs.py", "on_term", "KeyboardInterrupt"): "SIGTERM takes the Ctrl-C path on purpose",
    ("he_compute/client/run/record.py", "_plain", "TypeError"): "json.dumps' default= hook must raise TypeError",
    ("he_compute/client/run/record.py", "finish", "ValueError"): "programming guard: states come from code",
    ("he_compute/client/run/record.py", "save", "ValueError"): "programming guard: callers pass the directory",
    ("he_compute/formats/receipt.py", "verify_receipt", "ValueError"): "programming guard: names of checks are code",
    ("he_compute/formats/signing.py", "__init__", "TypeError"): "programming guard: the key object comes from code",
    ("he_compute/worker/child.py", "put", "RuntimeError"): "programming guard: the parent's protocol order",
    ("he_compute/worker/child.py", "put", "ValueError"): "programming guard: blob kinds come from the parent",
    ("he_compute/worker/child.py", "evaluate", "RuntimeError"): "programming guard: the parent's protocol order",
    ("he_compute/worker/executor.py", "evaluate", "RuntimeError"): "programming guard: evaluate follows load",
    ("he_compute/worker/sandbox.py", "evaluate", "RuntimeError"): "programming guard: evaluate follows load",
}


def _builtin_raises(path):
    """``(function, exception name, line)`` of every raise of a built-in exception type in ``path`` that can
    leave its ``try`` (a raise caught by a handler of the same ``try`` just below is local control flow)."""
    import ast
    import builtins

    names = {n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException)}
    found = []

    def caught(name, handlers):
        for h in handlers:
            types = h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
            if any(isinstance(t, ast.Name) and t.id in (name, "Exception", "BaseException") for t in types):
                return True
        return False

    def walk(node, func, tries):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                walk(child, child.name, [])
            elif isinstance(child, ast.Try):
                for stmt in child.body:
                    walk_stmt(stmt, func, tries + [child.handlers])
                for part in (child.handlers, child.orelse, child.finalbody):
                    for stmt in part:
                        walk_stmt(stmt, func, tries)
            else:
                walk_stmt(child, func, tries)

    def walk_stmt(node, func, tries):
        if isinstance(node, ast.Raise) and node.exc is not None:
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(target, ast.Name) and target.id in names and not (tries and caught(target.id, tries[-1])):
                found.append((func, target.id, node.lineno))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Try)):
            walk(ast.Module(body=[node], type_ignores=[]), func, tries)
        else:
            walk(node, func, tries)

    walk(ast.parse(path.read_text()), "<module>", [])
    return found


def test_no_deliberate_raise_outside_the_error_tree():
    """Every error raised on purpose is an HECError (one line at the CLI), except the allow-listed guards."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    bad, used = [], set()
    for path in sorted((root / "he_compute").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        for func, name, line in _builtin_raises(path):
            if (rel, func, name) in ALLOWED_BUILTIN_RAISES:
                used.add((rel, func, name))
            else:
                bad.append(f"{rel}:{line} {func}() raises {name}")
    assert not bad, "raise an he_compute.errors class instead:\n" + "\n".join(bad)
    assert used == set(ALLOWED_BUILTIN_RAISES), f"stale allow-list entries: {set(ALLOWED_BUILTIN_RAISES) - used}"


def test_the_raise_walker_finds_what_it_must():
    """Positive control for the walker: an escaping raise is found, a locally caught one is not."""
    src = ("def f(x):\n    if x:\n        raise ValueError('user mistake')\n"
           "def g(x):\n    try:\n        raise TypeError\n    except TypeError:\n        pass\n"
           "def h(x):\n    try:\n        pass\n    except KeyError:\n        raise RuntimeError('escapes')\n")
    import tempfile
    from pathlib import Path

    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
        fh.write(src)
    try:
        assert [(f, n) for f, n, _ in _builtin_raises(Path(fh.name))] == [("f", "ValueError"), ("h", "RuntimeError")]
    finally:
        os.unlink(fh.name)


def test_the_readme_lists_every_setting_as_settings_py_does():
    """Every HEC_* setting the code reads is in settings.SETTINGS, and the README's table is exactly its table."""
    import re
    from pathlib import Path

    from he_compute import settings

    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    assert settings.markdown_table() in readme
    read = set()
    for path in (root / "he_compute").rglob("*.py"):
        read |= set(re.findall(r"\"(HEC_[A-Z_]+)\"", path.read_text()))
    assert read - {"HEC_SANDBOX_"} <= set(settings.BY_NAME), read - set(settings.BY_NAME)


_FAIL_AFTER_FHE = """
import sys
import numpy as np
from concrete.ml.sklearn import DecisionTreeClassifier
X = np.random.default_rng(0).random((40, 3)); y = (X[:, 0] > 0.5).astype(int)
model = DecisionTreeClassifier(n_bits=3, max_depth=2).fit(X, y)
model.compile(X)
model.predict(X[:1], fhe="execute")   # Concrete's runtime now runs in this process
if sys.argv[1] == "hec":
    from he_compute.cli import entry
    entry(["decrypt", "/nonexistent/y.enc", "-o", "/nonexistent/y.csv"])
sys.exit(3)
"""


@pytest.mark.parametrize("how", ["hec", "plain"])
def test_a_command_failing_after_an_fhe_circuit_ran_in_its_process_exits_non_zero(tmp_path, how):
    """Concrete's exit handler ends a process in which a circuit has run with status 0: `hec` (and so `make
    test`, whose pytest process runs circuits) reported success for failures.  ``plain`` is the control: the
    handler still does it to a program that does not guard its status."""
    script = tmp_path / "fail_after_fhe.py"
    script.write_text(_FAIL_AFTER_FHE)
    out = subprocess.run([sys.executable, str(script), how], capture_output=True, text=True, timeout=600)
    if how == "hec":
        assert out.returncode == 1, out.stderr[-2000:]
        assert "Error:" in out.stderr
    else:
        assert out.returncode == 0  # the status 3 lost: what the guard above exists for
