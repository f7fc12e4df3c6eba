"""The command lines of he_compute's own processes, in one place (both the client and the worker host start workers)."""

from __future__ import annotations

import sys
from typing import Iterable


def worker_argv(queue_url: str, blobs_url: str, *, device: str = "cpu", concurrency: int = 1,
                threads: int | None = None, cpus: Iterable[int] | None = None, burst: bool = False,
                lease_s: float | None = None, state: str | None = None,
                coordinator: str | None = None) -> list[str]:
    """``python -m he_compute worker ...`` with these options (the same as ``hec worker``); with ``coordinator``
    the worker speaks to it instead of the queue and blob store."""
    where = ["--coordinator", coordinator] if coordinator else ["--queue", queue_url, "--blobs", blobs_url]
    cmd = [sys.executable, "-m", "he_compute", "worker", *where, "--device", device, "--concurrency", str(concurrency)]
    if threads:
        cmd += ["--threads", str(threads)]
    cpus = list(cpus or [])
    if cpus:
        cmd += ["--cpus", ",".join(map(str, cpus))]
    if burst:
        cmd.append("--burst")
    if lease_s:
        cmd += ["--lease", str(lease_s)]
    if state:
        cmd += ["--state", state]
    return cmd
