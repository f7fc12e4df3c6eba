"""An emulated WAN link on this machine, for ``bench_link``: two network namespaces joined by a veth pair.

The client side (``C``) holds the client, its queue and blob store, and a coordinator where one is
measured; the worker side (``W``) holds the workers. Each end of the veth pair is rate-limited on egress by
``tc tbf`` (the kernel shapes both directions). The round-trip delay is added in user space by :func:`relay`,
a TCP relay in ``C`` that holds every chunk for half the RTT in each direction before passing it on: this
kernel has no ``sch_netem`` (``tc qdisc add ... netem`` answers "Specified qdisc kind is unknown"), so netem's
delay is not available. What the relay does not model: TCP's own slow start over a long path (the relay
acknowledges at once, so windows open as on a short one) and loss; the link's rate, its queueing and every
request's round trips are real.

Only addresses inside these namespaces (10.231.X.0/30) and their loopbacks are used. :class:`Link` removes
both namespaces on exit, on failure and on SIGTERM; :func:`sweep` removes what a killed run left behind.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

PREFIX = "hecl"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def require_tools() -> None:
    """Fail with one line when iproute2 is missing (``make bench`` installs it)."""
    missing = [t for t in ("ip", "tc") if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"Error: {', '.join(missing)} not found: apt-get install -y iproute2 (make bench does)")
    if os.geteuid() != 0:
        raise SystemExit("Error: the link benchmark makes network namespaces: run it as root")


def sweep() -> None:
    """Delete namespaces a killed run of this benchmark left (named ``hecl-<pid>-*`` for a dead pid)."""
    out = _ip("netns", "list", check=False).stdout.split()
    for name in out:
        parts = name.split("-")
        if len(parts) == 3 and parts[0] == PREFIX and parts[1].isdigit() and not os.path.exists(f"/proc/{parts[1]}"):
            _ip("netns", "del", name, check=False)


@dataclass
class Link:
    """Two namespaces and a shaped veth pair between them; a context manager that always cleans up."""

    rate_mbit: float
    rtt_ms: float
    create: bool = True  # False: the namespaces of process ``pid`` (a child of the run that made them)
    pid: int = 0

    def __post_init__(self) -> None:
        pid = self.pid or os.getpid()
        self.c, self.w = f"{PREFIX}-{pid}-c", f"{PREFIX}-{pid}-w"
        net = pid % 250
        self.c_addr, self.w_addr = f"10.231.{net}.1", f"10.231.{net}.2"
        self.c_dev, self.w_dev = f"hecl{pid % 100000}c", f"hecl{pid % 100000}w"

    def __enter__(self) -> "Link":
        sweep()
        try:
            for ns in (self.c, self.w):
                _ip("netns", "add", ns)
                _ip("-n", ns, "link", "set", "lo", "up")
            _ip("link", "add", self.c_dev, "type", "veth", "peer", "name", self.w_dev)
            for ns, dev, addr in ((self.c, self.c_dev, self.c_addr), (self.w, self.w_dev, self.w_addr)):
                _ip("link", "set", dev, "netns", ns)
                _ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
                _ip("-n", ns, "link", "set", dev, "up")
            self.shape(self.rate_mbit)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def shape(self, rate_mbit: float) -> None:
        """(Re)set the rate of both directions: tbf with a burst of 10 ms at that rate and 200 ms of queue."""
        self.rate_mbit = rate_mbit
        burst = max(16_000, int(rate_mbit * 1e6 / 8 * 0.01))
        for ns, dev in ((self.c, self.c_dev), (self.w, self.w_dev)):
            subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate",
                            f"{rate_mbit}mbit", "burst", str(burst), "latency", "200ms"],
                           check=True, capture_output=True, timeout=30)

    def counters(self) -> tuple[int, int]:
        """(bytes received by the worker side, bytes sent by it) on its veth end, headers included."""
        got = []
        for what in ("rx_bytes", "tx_bytes"):
            r = subprocess.run(["ip", "netns", "exec", self.w, "cat", f"/sys/class/net/{self.w_dev}/statistics/{what}"],
                               check=True, capture_output=True, text=True, timeout=30)
            got.append(int(r.stdout))
        return got[0], got[1]

    def in_ns(self, which: str, argv: list[str]) -> list[str]:
        """``argv`` run inside namespace ``c`` or ``w``."""
        return ["ip", "netns", "exec", self.c if which == "c" else self.w, *argv]

    def relay(self, listen_port: int, target_port: int) -> subprocess.Popen:
        """Start a delaying relay in ``C``: ``c_addr:listen_port`` to ``127.0.0.1:target_port``."""
        proc = subprocess.Popen(self.in_ns("c", [sys.executable, "-m", "bench._netns", "relay", self.c_addr,
                                                 str(listen_port), str(target_port), str(self.rtt_ms / 2000)]),
                                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            r = subprocess.run(self.in_ns("c", ["ss", "-ltn", f"sport = :{listen_port}"]), capture_output=True,
                               text=True, timeout=10)
            if str(listen_port) in r.stdout:
                return proc
            time.sleep(0.1)
        proc.kill()
        raise RuntimeError("the relay did not start")

    def __exit__(self, *exc: object) -> None:
        for ns in (self.c, self.w):
            # Processes still inside would keep the namespace's devices; they were started by this benchmark.
            pids = _ip("netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("netns", "del", ns, check=False)


# ---- the delaying relay ---------------------------------------------------------------------------------------


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy ``reader`` to ``writer``, each chunk sent ``delay`` seconds after it arrived, in order."""
    q: asyncio.Queue = asyncio.Queue(maxsize=1024)  # at most 64 MiB in flight per direction

    async def pump_in() -> None:
        while True:
            data = await reader.read(65536)
            await q.put((time.monotonic() + delay, data))
            if not data:
                return

    async def pump_out() -> None:
        while True:
            due, data = await q.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    try:
        await asyncio.gather(pump_in(), pump_out())
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _serve(host: str, port: int, target: int, delay: float) -> None:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            tr, tw = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            w.close()
            return
        await asyncio.gather(_pipe(r, tw, delay), _pipe(tr, w, delay))

    server = await asyncio.start_server(handle, host, port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1:2] == ["relay"]:
        asyncio.run(_serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])))
