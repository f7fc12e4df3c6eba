"""no-color.org: a non-empty ``NO_COLOR`` means no escape codes from ``hec``, even where ``FORCE_COLOR`` is set
(Jupyter sets it for every child process, so ``!hec jobs`` in a notebook printed raw ANSI codes)."""

from __future__ import annotations

import os
import subprocess
import sys

from he_compute.transport import queue as job_queue


def _jobs(tmp_path, **env):
    url = f"sqlite://{tmp_path / 'queue.db'}"
    if not (tmp_path / "queue.db").exists():
        job_queue.connect(url).submit({"n": 1})
    base = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    out = subprocess.run([sys.executable, "-m", "he_compute", "jobs", "--queue", url], env={**base, **env},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "queued" in out.stdout, out.stdout
    return out.stdout


def test_no_color_wins_over_force_color(tmp_path):
    assert "\x1b[" in _jobs(tmp_path, FORCE_COLOR="1")  # what the user gets without NO_COLOR: escapes
    assert "\x1b[" not in _jobs(tmp_path, FORCE_COLOR="1", NO_COLOR="1")
    assert "\x1b[" not in _jobs(tmp_path, NO_COLOR="1")
    assert "\x1b[" in _jobs(tmp_path, FORCE_COLOR="1", NO_COLOR="")  # an empty NO_COLOR is not set (no-color.org)
