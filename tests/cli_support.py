"""Helpers for the CLI tests (no tests here)."""

from __future__ import annotations


def one_line_error(result, expected: str) -> str:
    """Assert that a CliRunner result is the one-line ``Error: ...`` with exit status 1, naming ``expected``."""
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert expected in lines[0], lines[0]
    return lines[0]
