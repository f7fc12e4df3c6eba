"""Every HEC_* setting is declared once (he_compute/settings.py), documented in the README exactly as declared,
and a bad value is one line naming the variable, from the CLI too."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import he_compute
from he_compute import settings
from he_compute.cli import main
from he_compute.errors import InputError

ROOT = Path(he_compute.__file__).parent


def test_every_variable_the_code_names_is_a_declared_setting():
    named = set()
    for path in ROOT.rglob("*.py"):
        named |= set(re.findall(r"\bHEC_[A-Z][A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    named -= {"HEC_SANDBOX_"}  # a prefix in a docstring
    assert named - set(settings.SETTINGS) == set()


def test_the_readme_table_is_the_declared_one():
    readme = (ROOT.parent / "README.md").read_text()
    assert settings.markdown() in readme, "paste the output of python -m he_compute.settings into the README"


@pytest.mark.parametrize("name, raw", [("HEC_JOB_TIMEOUT_S", "1h"), ("HEC_MAX_BLOB_MB", "lots"),
                                       ("HEC_MAX_BLOB_MB", "-5"), ("HEC_SANDBOX_CPU_S", "nan"),
                                       ("HEC_PROGRESS", "fancy"), ("HEC_CKKS_LIMITS", "[1, 2]"),
                                       ("HEC_JOB_TIMEOUT_S", "inf")])
def test_a_bad_value_is_one_line_naming_the_setting(name, raw):
    with pytest.raises(InputError) as exc:
        settings.get(name, {name: raw})
    message = str(exc.value)
    assert message.startswith(f"{name}={raw!r} is not valid: it takes ") and "\n" not in message


def test_unset_or_empty_is_the_default_and_values_parse():
    assert settings.get("HEC_JOB_TIMEOUT_S", {}) == 3600.0
    assert settings.get("HEC_JOB_TIMEOUT_S", {"HEC_JOB_TIMEOUT_S": ""}) == 3600.0
    assert settings.get("HEC_JOB_TIMEOUT_S", {"HEC_JOB_TIMEOUT_S": "2.5"}) == 2.5
    assert settings.get("HEC_MAX_BLOB_MB", {"HEC_MAX_BLOB_MB": "7"}) == 7
    assert settings.get("HEC_HOME", {"HEC_HOME": "~/x"}) == Path("~/x").expanduser()


def test_hec_refuses_a_bad_setting_before_any_work(monkeypatch, tmp_path):
    monkeypatch.setenv("HEC_JOB_TIMEOUT_S", "1h")
    result = CliRunner().invoke(main, ["info", str(tmp_path / "missing.hec")])
    assert result.exit_code == 1
    assert result.output.strip() == ("Error: HEC_JOB_TIMEOUT_S='1h' is not valid: it takes a positive number of "
                                     "seconds; fix it or unset it")


def test_hec_names_an_unknown_variable_once(monkeypatch):
    monkeypatch.setenv("HEC_QUEU", "sqlite:///tmp/q.db")
    result = CliRunner().invoke(main, ["info", "--help"])
    assert result.exit_code == 0
    assert result.output.count("HEC_QUEU is not a setting of hec") == 1
