"""This machine's measured costs, cached in ``$HEC_HOME/costs.json`` (default ``~/.hec``).

Each entry is measured once by :mod:`.calibrate` in a one-thread child process
(about 15 s for TFHE, a few seconds per CKKS parameter set) and reused until
the machine or the scheme libraries change: the cache is keyed by host name,
CPU model, core count and library versions.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Callable

from ...errors import HECError
from ...files import PRIVATE, atomic_write, private_dir
from ..registry import home

COSTS = "costs.json"
CALIBRATE_TIMEOUT_S = 600


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


def fingerprint() -> dict[str, object]:
    """What a measurement depends on: this machine and the scheme libraries."""
    return {"host": platform.node(), "cpu": _cpu_model(), "cores": os.cpu_count(),
            "concrete-python": _version("concrete-python"), "tenseal": _version("tenseal")}


def _load() -> dict[str, dict[str, float]]:
    try:
        raw = json.loads((home() / COSTS).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict) or raw.get("machine") != fingerprint() or not isinstance(raw.get("costs"), dict):
        return {}  # another machine, other libraries, or damaged: measure again
    return raw["costs"]


def measured(key: str, args: list[str], say: Callable[[str], None] | None = None) -> dict[str, float]:
    """The cached measurement ``key``, or a fresh one made by ``calibrate ARGS`` (and cached)."""
    costs = _load()
    if key in costs:
        return costs[key]
    if say:
        say(f"measuring {key.split(':')[0].upper()} costs on this machine, once (cached in {home() / COSTS}) ...")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "he_compute.client.estimate.calibrate", *args]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=CALIBRATE_TIMEOUT_S, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise HECError(f"measuring this machine's {args[0]} costs took over {CALIBRATE_TIMEOUT_S}s: "
                       "the machine is overloaded; try again later") from None
    try:
        result = {k: float(v) for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}
    except (ValueError, IndexError, AttributeError):
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise HECError(f"measuring this machine's {args[0]} costs failed: {tail[:200]}") from None
    costs = _load()
    costs[key] = result
    private_dir(home())
    atomic_write(home() / COSTS, json.dumps({"machine": fingerprint(), "costs": costs}, indent=2).encode(), PRIVATE)
    return result
