"""The README's user guide, run as a new user would: every block of its "User guide" section, in order, as
written (the install block aside: this test runs in the installed environment), in an empty directory.

The only change to the text: the coordinator's port 8443 becomes a free loopback port, so that the test
never meets another service.  Blocks headed ``# terminal 1`` and ``# terminal 2`` keep running (the
coordinator, the workers), so they start in the background, each in a session of its own that the test ends;
the others must exit 0 within their time limit.  Then the results are checked against the guide's model run in
the clear: the README cannot drift from what the commands do.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from queue_support import free_port, wait_for

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK_S = 900  # a generous bound for one block on a loaded two-core machine


def guide_blocks() -> list[tuple[str, str]]:
    """(language, text) of each fenced block in the README's "User guide" section, in order."""
    text = README.read_text()
    start = text.index("\n## User guide")
    end = text.index("\n## ", start + 1)
    return [(lang, textwrap.dedent(body)) for lang, body in
            re.findall(r"```(bash|python)\n(.*?)```", text[start:end], flags=re.S)]


def test_the_guide_has_every_step_a_new_user_needs():
    blocks = guide_blocks()
    everything = "\n".join(b for _, b in blocks)
    assert "make install" in blocks[0][1]
    for step in ("hec compile", "hec keygen", "hec encrypt", "hec run x.enc -o y.enc --local-workers",
                 "hec decrypt", "hec simulate", "hec coordinator --listen 127.0.0.1:8443",
                 "hec coordinator enroll-token", "--data hec-coordinator", "hec worker --coordinator http://",
                 "--replicas 2", "hec audit verify"):
        assert step in everything, step
    assert [b.splitlines()[0].split(":")[0] for _, b in blocks if b.startswith("# terminal")] == \
        ["# terminal 1", "# terminal 2", "# terminal 3"]


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(30)


@pytest.mark.slow
def test_the_readme_user_guide_runs_as_written(tmp_path, monkeypatch):
    port = str(free_port())
    bin_dir = str(Path(sys.executable).parent)  # this checkout's hec and python, as `source .venv/bin/activate`
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEC_")}
    env.update(PATH=f"{bin_dir}:{env.get('PATH', '')}", HEC_HOME=str(tmp_path / "home"))
    background: list[subprocess.Popen] = []
    outputs: list[str] = []
    try:
        for n, (lang, block) in enumerate(guide_blocks()[1:], 2):
            block = block.replace("127.0.0.1:8443", f"127.0.0.1:{port}")
            cmd = [sys.executable, "-c", block] if lang == "python" else ["bash", "-e", "-c", block]
            if block.startswith(("# terminal 1", "# terminal 2")):
                log = tmp_path / f"block{n}.log"
                background.append(subprocess.Popen(cmd, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                                                   stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                                   start_new_session=True))
                if block.startswith("# terminal 1"):  # as the guide says: wait for its `serving` line
                    wait_for(lambda log=log: "serving" in log.read_text(), timeout=BLOCK_S,
                             what=f"the coordinator's serving line ({log})")
                continue
            out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=BLOCK_S)
            logs = "".join(p.read_text(errors="replace")[-1500:] for p in tmp_path.glob("block*.log"))
            assert out.returncode == 0, f"guide block {n} failed:\n{block}\n{out.stdout[-2000:]}{out.stderr[-3000:]}\n{logs}"
            outputs.append(out.stdout + out.stderr)
    finally:
        _stop(background)

    # The clear model: the guide's own Python block again, in a directory of its own (onnxruntime here may be
    # older than the opset skl2onnx writes, so the graph is not the reference).
    (tmp_path / "clear").mkdir()
    monkeypatch.chdir(tmp_path / "clear")
    ns: dict = {}
    exec(next(b for lang, b in guide_blocks() if lang == "python"), ns)  # noqa: S102 - the README's own code
    np.testing.assert_array_equal(ns["X_test"][:16], np.load(tmp_path / "X_test.npy"))
    clear = ns["model"].predict_proba(ns["X_test"][:16])
    y, y_sim, y2 = (np.loadtxt(tmp_path / name, delimiter=",") for name in ("y.csv", "y_sim.csv", "y2.csv"))
    assert y.shape == clear.shape == (16, 2)
    np.testing.assert_allclose(y, clear, atol=5e-3)       # CKKS: within its approximation and noise
    np.testing.assert_allclose(y_sim, y, atol=5e-3)
    np.testing.assert_allclose(y2, y, atol=5e-3)          # the coordinator's run: the same answers
    assert oct((tmp_path / "keys").stat().st_mode & 0o777) == "0o700"
    assert oct((tmp_path / "y2.csv").stat().st_mode & 0o777) == "0o600"
    said = "\n".join(outputs)
    assert "using keys in" in said and "entries intact" in said, said[-3000:]
    assert (tmp_path / "block5.log").read_text().count("admitted by") == 2  # one worker of each operator
