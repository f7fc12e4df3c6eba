"""Every ``HEC_*`` setting, once: its type, default and meaning, read from the environment and checked here.

Modules ask :func:`get` for a value when they need it (never at import), so a bad value is reported where it
matters as one line naming the setting (:class:`~he_compute.errors.ConfigError`), and ``hec`` checks every
setting once at start (:func:`check_all`).  The README's settings table is checked against :data:`SETTINGS`
by a test.  Values are read from the environment on each call so that a process (or a test) that changes
its environment sees the change; reading is a dictionary lookup and a conversion.

Example::

    from he_compute import settings
    settings.get("HEC_JOB_TIMEOUT_S")   # 3600.0, or the validated value of $HEC_JOB_TIMEOUT_S
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class Setting:
    """One environment variable: ``kind`` is ``seconds``, ``megabytes``, ``count``, ``choice``, ``path``,
    ``url`` or ``text``; ``default`` is what an unset (or empty) variable means, ``None`` for none."""

    name: str
    kind: str
    default: Any
    meaning: str
    minimum: float = 0
    choices: tuple[str, ...] = ()
    shown: str = ""  # the default as the README shows it, where the code derives it (e.g. from $HEC_HOME)

    def row(self) -> str:
        """This setting as a row of the README's settings table."""
        default = self.shown or ("none" if self.default is None else str(self.default))
        kind = f"{self.kind}: {' / '.join(self.choices)}" if self.choices else self.kind
        return f"| `{self.name}` | {kind} | `{default}` | {self.meaning} |"


SETTINGS: tuple[Setting, ...] = (
    Setting("HEC_HOME", "path", None, "the user's state: key registry, cost measurements, signing key, audit "
            "checkpoints, config.toml", shown="~/.hec"),
    Setting("HEC_QUEUE", "url", "sqlite://.hec/queue.db", "the queue `hec` commands use without --queue"),
    Setting("HEC_COORDINATOR", "url", None, "coordinator URL(s), comma-separated, without --coordinator"),
    Setting("HEC_TOKEN_FILE", "path", None, "the tenant's token file, without --token-file"),
    Setting("HEC_CA_FILE", "path", None, "CA certificates to trust for the coordinator, without --ca-file"),
    Setting("HEC_CONFIG", "path", None, "config file with coordinator, token_file, ca_file",
            shown="$HEC_HOME/config.toml"),
    Setting("HEC_CHECKPOINTS", "path", None, "where a tenant's client keeps its checkpoints of the coordinator's "
            "audit log", shown="$HEC_HOME/audit-checkpoints.json"),
    Setting("HEC_WORKER_STATE", "path", None, "a worker's state directory (its signing key), without --state"),
    Setting("HEC_JOB_TIMEOUT_S", "seconds", 3600.0, "wall-clock limit of one job on a worker", minimum=1e-3),
    Setting("HEC_BURST_PATIENCE_S", "seconds", 30.0, "how long a --burst worker retries an unreachable queue"),
    Setting("HEC_MAX_BLOB_MB", "megabytes", 1024, "largest blob a store or client accepts", minimum=1),
    Setting("HEC_KEY_CACHE_MB", "megabytes", 2048, "evaluation keys a worker keeps loaded"),
    Setting("HEC_SERVER_CACHE_MB", "megabytes", 256, "compiled server parts a worker keeps loaded"),
    Setting("HEC_MAX_CACHED", "count", 8, "most entries in each of a worker's caches", minimum=1),
    Setting("HEC_SANDBOX_MEMORY_MB", "megabytes", 16384, "address space of a worker's evaluation child", minimum=64),
    Setting("HEC_SANDBOX_BOOT_MEMORY_MB", "megabytes", 65536, "the most address space (and largest file) a worker's "
            "evaluation child gets for bootstrapping-engine keys (it gets 4 x the keys + 8 GiB, up to this)", minimum=64),
    Setting("HEC_SANDBOX_CPU_S", "count", 3600, "CPU seconds of one evaluation call in the child", minimum=1),
    Setting("HEC_SANDBOX_COMPILE_CPU_S", "count", 600, "CPU seconds the child may spend opening (compiling) one "
            "server part", minimum=1),
    Setting("HEC_SANDBOX_LOG_KB", "count", 64, "what one evaluation child may write to the worker's log per job",
            minimum=1),
    Setting("HEC_DECRYPT_TIMEOUT_S", "seconds", 60.0, "the client's deadline to decrypt what a worker returned "
            "(plus 0.5 s per chunk of a whole result)", minimum=1e-3),
    Setting("HEC_IDLE_NOTICE_S", "seconds", 60.0, "how long hec run waits with no job claimed before saying so",
            minimum=1e-3),
    Setting("HEC_CKKS_LIMITS", "text", None, "JSON object overriding CKKS size limits (see schemes/ckks/limits.py)"),
    Setting("HEC_PROGRESS", "choice", "auto", "progress display: a bar on a terminal, plain lines, or none",
            choices=("auto", "plain", "off")),
    Setting("HEC_ENCRYPT_PROCESSES", "text", None, "1: CKKS batch encryption stays in one process"),
    Setting("HEC_WORKER_CHILD", "text", None, "1 in the children of hec worker --concurrency N (set by it: "
            "the parent alone prints devices, identity and admission)"),
    Setting("HEC_OPENFHE_PYTHON", "path", None, "the CPython 3.10 of the OpenFHE environment (the bootstrapping "
            "CKKS engine)", shown="./.venv-openfhe/bin/python"),
    Setting("HEC_CKKS_INSECURE_TEST_PARAMS", "choice", "0", "TEST ONLY: 1 lets a worker accept the bootstrapping "
            "engine's small test rings, which have NO security", choices=("0", "1")),
)
BY_NAME = {s.name: s for s in SETTINGS}


def _convert(s: Setting, raw: str) -> Any:
    if s.kind in ("path", "url", "text"):
        return raw
    if s.kind == "choice":
        if raw not in s.choices:
            raise ConfigError(f"{s.name}={raw[:40]!r} is not one of {', '.join(s.choices)}: fix or unset it")
        return raw
    unit = {"seconds": "a number of seconds", "megabytes": "a whole number of megabytes",
            "count": "a whole number"}[s.kind]
    try:
        value: float = float(raw) if s.kind == "seconds" else int(raw)
    except ValueError:
        raise ConfigError(f"{s.name}={raw[:40]!r} is not {unit} (default {s.default}): fix or unset it") from None
    if not value >= s.minimum or value != value or value == float("inf"):
        raise ConfigError(f"{s.name}={raw[:40]!r} must be {unit} of at least {s.minimum:g}: fix or unset it")
    return value


def get(name: str) -> Any:
    """The value of setting ``name``: its default when unset or empty, else the checked value."""
    s = BY_NAME[name]
    raw = os.environ.get(name, "")
    return _convert(s, raw) if raw != "" else s.default


def markdown_table() -> str:
    """The README's settings table (a test checks that the README holds exactly this)."""
    head = "| setting | type | default | meaning |\n|---|---|---|---|\n"
    return head + "\n".join(s.row() for s in SETTINGS) + "\n"


def check_all() -> None:
    """Check every setting that is set (``hec`` does this once at start); the first bad one raises."""
    for s in SETTINGS:
        get(s.name)
