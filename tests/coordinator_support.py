"""Helpers for the coordinator tests (no tests here): TLS certificates from trustme, a real ``hec coordinator``
process on loopback, real worker processes, and hand-crafted signed requests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


from queue_support import fault_env, free_port, wait_for

PYTHON = sys.executable


class CoordinatorProc:
    """``hec coordinator`` on a free loopback port with TLS, in its own data directory."""

    def __init__(self, data: Path, tls: tuple[Path, Path, Path], *, queue: str | None = None,
                 blobs: str | None = None, args: tuple[str, ...] = (), env: dict[str, str] | None = None):
        self.data, self.tls, self.port = Path(data), tls, free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.queue, self.blobs, self.args, self.env = queue, blobs, args, env or {}
        self.proc: subprocess.Popen | None = None
        self.log = self.data.parent / f"coordinator-{self.port}.log"

    def start(self) -> CoordinatorProc:
        cmd = [PYTHON, "-m", "he_compute", "coordinator", "--listen", f"127.0.0.1:{self.port}", "--data",
               str(self.data), "--tls-cert", str(self.tls[1]), "--tls-key", str(self.tls[2]), *self.args]
        if self.queue:
            cmd += ["--queue", self.queue]
        if self.blobs:
            cmd += ["--blobs", self.blobs]
        self.proc = subprocess.Popen(cmd, env={**os.environ, **self.env}, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
        wait_for(self._ready, timeout=60, what=f"coordinator on {self.url} (log {self.log})")
        return self

    def _ready(self) -> bool:
        import httpx

        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"coordinator exited: {self.log.read_text()[-2000:]}")
        try:
            httpx.get(f"{self.url}/v1/tenant", verify=str(self.tls[0]), timeout=2)
            return True
        except httpx.HTTPError:
            return False

    def token(self, name: str = "client.token") -> str:
        return (self.data / name).read_text().strip()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


def coordinator_env(coord: CoordinatorProc, tmp: Path) -> dict[str, str]:
    """Environment for ``hec`` commands acting as the default tenant of ``coord``."""
    return {**os.environ, "HEC_COORDINATOR": coord.url, "HEC_TOKEN_FILE": str(coord.data / "client.token"),
            "HEC_CA_FILE": str(coord.tls[0]), "HEC_CHECKPOINTS": str(tmp / "checkpoints.json")}


def worker_proc(coord: CoordinatorProc, state: Path, *, token_file: Path | None = None, log: Path | None = None,
                fault: str = "", extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """``hec worker --coordinator`` as its own process (one job at a time, one thread)."""
    cmd = [PYTHON, "-m", "he_compute", "worker", "--coordinator", coord.url, "--state", str(state),
           "--concurrency", "1", "--threads", "1", "--device", "cpu", "--ca-file", str(coord.tls[0]), *extra]
    if token_file is not None:
        cmd += ["--token-file", str(token_file)]
    env = {**os.environ, **fault_env(fault), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=open(log, "ab") if log else subprocess.DEVNULL)


def stop_all(procs: list[subprocess.Popen]) -> None:
    """SIGTERM, then SIGKILL what is left (the same as a run's local workers get)."""
    from he_compute.client.run.local import stop

    stop(procs, grace_s=20)
