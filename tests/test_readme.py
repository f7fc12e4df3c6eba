"""The README cannot drift from the CLI: every `hec` command line in it names a real command and real flags.

The flows themselves run end to end in test_cli.py (compile/keygen/encrypt/eval/decrypt/info),
test_import_concrete.py (import-concrete), test_run.py (run/worker/status/jobs/cancel),
test_verify_*.py (replicas, canaries, allow-lists, audit) and test_notebooks.py.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from he_compute.cli import commands, main

README = Path(__file__).resolve().parents[1] / "README.md"


def _hec_lines() -> list[str]:
    text = README.read_text()
    # Fences are matched line by line (indented ones in numbered steps too), so that a ```python block
    # cannot pair one block's closing fence with the next one's opening.
    blocks = re.findall(r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```", text, flags=re.S | re.M)
    lines = []
    for lang, block in blocks:
        if lang not in ("", "bash"):
            continue
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("hec "):
                lines.append(line)
    return lines


def test_readme_has_hec_examples():
    assert len(_hec_lines()) >= 15


@pytest.mark.parametrize("line", _hec_lines())
def test_readme_command_exists_with_its_flags(line):
    words = shlex.split(line.replace(">>", " ").replace("...", "X"))[1:]
    command: click.Command = main
    while isinstance(command, click.Group) and words:
        available = commands() if command is main else command.commands
        if words[0] not in available:
            break
        command = available[words.pop(0)]
    assert command is not main, f"unknown command in README: {line}"
    known = {opt for param in command.params for opt in getattr(param, "opts", [])}
    flags = [w for w in words if w.startswith("-")]
    unknown = [f for f in flags if f not in known]
    assert not unknown, f"README uses {unknown} which `{command.name}` does not accept ({line})"
