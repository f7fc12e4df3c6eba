"""Code that runs inside the evaluation child cannot reach what the worker holds (issue 19, finding 10).

Each test starts the real child set-up (:class:`~he_compute.worker.sandbox._Child`: empty environment, own
temp dir, pipes, :func:`~he_compute.worker.child.lock_down`) as ``tests/sandbox_probe.py``, which then runs
the attacker's code below and reports what it managed.  The positive control runs the same code in the
same kind of child without the lock-down, so every "refused" is the sandbox's doing, not the test's.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from he_compute.worker.sandbox import Limits, _Child

ATTACK = r'''
import ctypes, os, signal, socket, subprocess
libc = ctypes.CDLL(None, use_errno=True)

def attempt(name, action):
    try:
        action()
        report[name] = "ok"
    except OSError as exc:
        report[name] = f"refused: {exc.__class__.__name__} {exc.errno}"

def syscall_ok(result):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))

def read(path):
    with open(path, "rb") as f:
        f.read(1)

report["uid"] = f"{os.getuid()}:{os.getgid()}:{sorted(os.getgroups())}"
# A root-only file on a path the child must read (its import path): only the uid keeps it out.
attempt("read a 0600 root file on its import path", lambda: read(args["lib_secret"]))
attempt("read worker.key", lambda: read(args["worker_key"]))
attempt("read ~/.hec/client.key", lambda: read(args["client_key"]))
attempt("read the worker's /proc/PID/environ", lambda: read(f"/proc/{os.getppid()}/environ"))
attempt("list the worker's key directory", lambda: os.listdir(os.path.dirname(args["worker_key"])))
def write_outside():
    with open(args["outside"], "wb") as f:
        f.write(b"escaped")
attempt("write outside its temp dir", write_outside)
def write_shm():  # the child gets a /dev/shm of its own: a write there must not reach the machine's
    with open(f"/dev/shm/{args['shm']}", "wb") as f:
        f.write(b"escaped")
attempt("write /dev/shm", write_shm)
def execve():
    try:
        os.execv("/nonexistent/hec-probe", ["x"])
    except FileNotFoundError:  # the kernel looked the program up: nothing refused the exec itself
        pass
attempt("execve", execve)
attempt("exec a program", lambda: subprocess.run(["/bin/true"], check=True))
def fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
attempt("fork", fork)
attempt("ptrace another process", lambda: syscall_ok(libc.ptrace(0x4206, args["victim"], 0, 0)))
attempt("signal a process outside", lambda: os.kill(args["victim"], signal.SIGCONT))
attempt("create a user namespace", lambda: syscall_ok(libc.unshare(0x10000000)))
attempt("create a mount namespace", lambda: syscall_ok(libc.unshare(0x00020000)))
def unix():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(args["unix"])
    s.close()
attempt("connect to a Unix socket", unix)
attempt("open a TCP socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close())
def temp_dir():
    with open("scratch", "wb") as f:  # the child's cwd is its own temp dir: a job may write there
        f.write(b"x" * 1000)
    with open("scratch", "rb") as f:
        assert f.read() == b"x" * 1000
    os.unlink("scratch")
attempt("use its own temp dir", temp_dir)
'''
ESCAPES = ["read a 0600 root file on its import path", "read worker.key", "read ~/.hec/client.key", "read the worker's /proc/PID/environ",
           "list the worker's key directory", "write outside its temp dir", "exec a program", "execve",
           "fork", "ptrace another process", "signal a process outside", "create a user namespace",
           "create a mount namespace", "connect to a Unix socket", "open a TCP socket"]


class _Probe(_Child):
    module = "sandbox_probe"


@pytest.fixture
def targets(tmp_path):
    """What a worker's machine holds: secret files 0600, a Unix socket, another process."""
    keys = tmp_path / "worker-keys"
    keys.mkdir(mode=0o700)
    (keys / "worker.key").write_bytes(b"ed25519 secret")
    (keys / "worker.key").chmod(0o600)
    hec = tmp_path / "home" / ".hec"
    hec.mkdir(parents=True, mode=0o700)
    (hec / "client.key").write_bytes(b"client secret")
    (hec / "client.key").chmod(0o600)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "s.sock"))
    server.listen(4)
    victim = subprocess.Popen(["sleep", "60"])
    lib = tmp_path / "lib"  # put on the child's PYTHONPATH: Landlock lets it read there
    lib.mkdir(mode=0o755)
    (lib / "secret.txt").write_bytes(b"root only")
    (lib / "secret.txt").chmod(0o600)
    shm = Path(f"/dev/shm/hec-probe-{os.getpid()}-{tmp_path.name}")
    yield {"lib": str(lib), "lib_secret": str(lib / "secret.txt"), "shm": shm.name,"worker_key": str(keys / "worker.key"), "client_key": str(hec / "client.key"),
           "outside": str(tmp_path / "escaped"), "unix": str(tmp_path / "s.sock"), "victim": victim.pid}
    victim.kill()
    victim.wait()
    server.close()
    shm.unlink(missing_ok=True)


def _run_probe(control: bool, args: dict, log=None) -> tuple[list[str], dict[str, str]]:
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), args["lib"],
                                                        os.environ.get("PYTHONPATH")]))}
    limits = Limits(memory=4 << 30, env=env, warm=())
    child = _Probe(limits, log, extra={"probe_control": control})
    try:
        child.ready()
        reply, _ = child.call({"op": "run", "args": args}, ATTACK.encode(), deadline=time.monotonic() + 60)
        return child.protections, reply["report"]
    finally:
        child.close()


def test_control_without_the_lock_down_every_escape_succeeds(targets):
    """Positive control: the same code in the same kind of child, minus lock_down, does all of it."""
    _, report = _run_probe(True, targets)
    assert report.get("_crash") is None, report
    assert {name: report[name] for name in ESCAPES} == {name: "ok" for name in ESCAPES}
    assert Path(targets["outside"]).read_bytes() == b"escaped"
    assert Path("/dev/shm", targets["shm"]).read_bytes() == b"escaped"


def test_code_in_the_sandbox_child_reaches_nothing_the_worker_holds(targets):
    protections, report = _run_probe(False, targets)
    assert report.get("_crash") is None, report
    got = {name: report[name].split(":")[0] for name in ESCAPES}
    assert got == {name: "refused" for name in ESCAPES}, report
    assert report["use its own temp dir"] == "ok", report
    assert not Path(targets["outside"]).exists()
    assert not Path("/dev/shm", targets["shm"]).exists()  # written to the child's own /dev/shm, if at all
    # What the child reports is what took effect: each refusal above has its measure in the list.
    text = " | ".join(protections)
    for measure in ("no capabilities", "no new privileges", "Landlock", "seccomp"):
        assert measure in text, protections


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid change is what a worker running as root does")
def test_a_child_started_by_root_runs_as_nobody_and_cannot_read_roots_files(targets):
    _, control = _run_probe(True, targets)
    assert control["uid"] == "0:0:[0]" or control["uid"].startswith("0:0:"), control
    assert control["read a 0600 root file on its import path"] == "ok"  # what the uid change takes away
    protections, report = _run_probe(False, targets)
    assert report["uid"] == "65534:65534:[]", report
    assert report["read a 0600 root file on its import path"] == "refused: PermissionError 13", report
    assert "uid 65534, gid 65534" in " | ".join(protections), protections
    # The child's view of root's closed home (pyenv's interpreter lives there) holds only what it must read.
    assert any("closed directories covered" in p for p in protections) or not os.path.exists("/root/.hec")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
