"""Every ``HEC_*`` setting, once: its type, default and meaning, read from the environment and checked.

Nothing else in he_compute reads ``os.environ`` for a setting of its own; it asks :func:`get`, which parses
the variable each time it is asked (so a test's or a parent's change is seen) and turns a bad value into an
:class:`~he_compute.errors.InputError` naming the variable and what it accepts.  ``hec`` checks every set
variable once at start (:func:`check_all`), so a typo fails in one line before any work.  The README's
settings table is this module's :func:`markdown` (a test keeps the two equal)::

    python -m he_compute.settings    # prints the table

Why not pydantic-settings: it is installed, but importing it costs 0.2-0.4 s, three times what ``hec``
takes to start today; these twenty variables need a parser each, not a framework.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import InputError

__all__ = ["SETTINGS", "Setting", "check_all", "get", "markdown"]


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value) or value <= 0:
        raise ValueError
    return value


def _path(raw: str) -> Path:
    return Path(raw).expanduser()


def _text(raw: str) -> str:
    return raw


def _json_object(raw: str) -> dict[str, Any]:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError
    return value


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in options:
            raise ValueError
        return raw

    return parse


@dataclass(frozen=True)
class Setting:
    """One environment variable: how to parse it, what it means when unset, and what it is for."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    accepts: str  # what a valid value looks like, for the error message and the table
    meaning: str
    default_text: str = ""  # the default as the table shows it, where it is computed

    def shown_default(self) -> str:
        return self.default_text or ("unset" if self.default is None else str(self.default))


SETTINGS: dict[str, Setting] = {s.name: s for s in (
    # Where things are.
    Setting("HEC_HOME", _path, None, "a directory",
            "The client's own state: the key registry (keydirs.json) and this machine's measured costs.",
            "~/.hec"),
    Setting("HEC_QUEUE", _text, None, "a queue URL (sqlite://..., redis://...)",
            "The queue hec run, hec worker and hec jobs use when --queue is not given.", "sqlite://./.hec/queue.db"),
    Setting("HEC_COORDINATOR", _text, None, "an https:// URL", "The coordinator a client or worker talks to."),
    Setting("HEC_TOKEN_FILE", _path, None, "a file", "The tenant or operator token for the coordinator."),
    Setting("HEC_CA_FILE", _path, None, "a PEM file", "The CA that signed the coordinator's TLS certificate."),
    Setting("HEC_CONFIG", _path, None, "a TOML file",
            "Coordinator, token file and CA file for clients, when neither flags nor variables give them.",
            "~/.hec/config.toml"),
    Setting("HEC_CHECKPOINTS", _path, None, "a JSON file",
            "Where a client keeps its signed checkpoints of coordinators' audit logs.",
            "~/.hec/audit-checkpoints.json"),
    Setting("HEC_WORKER_STATE", _path, None, "a directory",
            "A worker's identity key and state (hec worker --state)."),
    # The client.
    Setting("HEC_PROGRESS", _choice("auto", "plain", "off"), "auto", "auto, plain or off",
            "Progress display: a bar on a terminal (auto), a few log lines (plain), or nothing."),
    Setting("HEC_ENCRYPT_PROCESSES", _positive_int, None, "a positive integer",
            "CKKS batch encryption: 1 encrypts in the calling process only; unset forks one child per other core.",
            "one per core"),
    # Bounds on what strangers send.
    Setting("HEC_MAX_BLOB_MB", _positive_int, 1024, "a positive number of MiB",
            "The largest blob a blob store reads or writes."),
    Setting("HEC_CKKS_LIMITS", _json_object, None, 'a JSON object, e.g. {"max_depth": 60}',
            "CKKS bounds on plans and payloads (schemes/ckks/limits.py names the keys)", "built-in bounds"),
    # The worker.
    Setting("HEC_JOB_TIMEOUT_S", _positive_float, 3600.0, "a positive number of seconds",
            "Wall-clock limit of one job on a worker (loading and every chunk); past it the evaluation is killed."),
    Setting("HEC_BURST_PATIENCE_S", _positive_float, 30.0, "a positive number of seconds",
            "How long hec worker --burst keeps trying an unreachable queue before it gives up."),
    Setting("HEC_KEY_CACHE_MB", _positive_int, 2048, "a positive number of MiB",
            "Serialized evaluation keys whose deserialized form a worker keeps, by size."),
    Setting("HEC_SERVER_CACHE_MB", _positive_int, 256, "a positive number of MiB",
            "Server parts whose compiled evaluators a worker keeps, by size."),
    Setting("HEC_MAX_CACHED", _positive_int, 8, "a positive integer",
            "Entries each of those two caches keeps at most (deserialized keys can be many times their size)."),
    Setting("HEC_SANDBOX_MEMORY_MB", _positive_int, 16384, "a positive number of MiB",
            "Address space of one evaluation child in the sandbox."),
    Setting("HEC_SANDBOX_CPU_S", _positive_int, 3600, "a positive number of seconds",
            "CPU seconds of one evaluation call in the sandbox."),
)}


def get(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """The value of setting ``name`` now: parsed from the environment, or its default when unset or empty.

    Raises :class:`InputError` (one line: the variable, its value, what it accepts) on a bad value.
    """
    setting = SETTINGS[name]
    raw = (os.environ if environ is None else environ).get(name, "")
    if raw == "":
        return setting.default
    try:
        return setting.parse(raw)
    except (ValueError, TypeError, OverflowError):
        shown = raw if len(raw) <= 60 else raw[:57] + "..."
        raise InputError(f"{name}={shown!r} is not valid: it takes {setting.accepts}; fix it or unset it") from None


def check_all(environ: Mapping[str, str] | None = None) -> list[str]:
    """Check every setting that is set (raising on the first bad one); return the ``HEC_*`` names set here
    that are no setting (likely typos), for the caller to warn about."""
    env = os.environ if environ is None else environ
    for name in SETTINGS:
        get(name, env)
    return sorted(k for k in env if k.startswith("HEC_") and k not in SETTINGS)


def markdown() -> str:
    """The settings as the README's table."""
    rows = ["| variable | accepts | default | meaning |", "|---|---|---|---|"]
    rows += [f"| `{s.name}` | {s.accepts} | {s.shown_default()} | {s.meaning} |" for s in SETTINGS.values()]
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown())
