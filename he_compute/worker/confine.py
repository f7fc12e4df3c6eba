"""What the evaluation child (:mod:`.child`) takes away from itself before it reads a stranger's bytes.

A worker usually runs as root, and the interpreter and its packages often live under root's own 0700 home
(pyenv), where another uid could not even import the standard library.  So in its own mount namespace the
child covers each such directory with an empty tmpfs and binds back, read-only and at the same paths, only
what it must read (:func:`unhide_for_others`: the secrets beside them are gone from its view), then becomes
``nobody`` (uid and gid 65534, no supplementary groups: :func:`become_nobody`).  Where that cannot be done
(no mount namespace, and the interpreter out of other uids' reach) it keeps uid 0 and says so.  It also gives
up what makes any uid dangerous, each measure reported only when the kernel accepted it:

* every capability (bounding set, ambient, effective, permitted, inheritable) and, with
  ``PR_SET_NO_NEW_PRIVS``, any way to regain one through a set-uid or file-capability program;
* the file system, by Landlock (ctypes on its three system calls: the PyPI bindings are pre-releases):
  read-only access to the interpreter, its packages, shared libraries and the child's own ``/proc``
  entry, read-write access to its own temp dir only; no TCP; no signals or abstract Unix sockets
  outside its own domain (Landlock ABI 6);
* by seccomp (libseccomp through pyseccomp): ``ptrace`` and cross-process memory access, namespace
  creation (``unshare``, ``setns``, ``clone`` with a ``CLONE_NEW*`` flag), every socket and socket
  pair, ``io_uring``, ``bpf``, ``userfaultfd``, ``perf_event_open`` and the kernel keyring;
* programs: Concrete compiles a circuit by running ``sh -c "ld ..."`` and ``ar``, so until the child has opened its
  one model Landlock lets it execute only ``sh``, ``ld``, ``ar`` and the dynamic loader; then a second seccomp
  filter (:func:`no_exec`) refuses ``execve`` and ``fork`` (a ``clone`` without ``CLONE_THREAD``) for
  the rest of its life, before it reads any key or ciphertext.

Threads stay allowed: Concrete and OpenMP start them.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

try:  # now, before Landlock: pyseccomp finds libseccomp by running ldconfig, which Landlock then forbids
    import pyseccomp as _seccomp
    _SECCOMP_MISSING = ""
except (ImportError, RuntimeError) as _exc:  # RuntimeError: the module is there but libseccomp is not
    _seccomp, _SECCOMP_MISSING = None, str(_exc)

_PR_SET_NO_NEW_PRIVS = 38
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_CAP_VERSION_3 = 0x20080522
_NR_LANDLOCK = {"create": 444, "add_rule": 445, "restrict": 446}  # the same numbers on every architecture
_LL_READ = (1 << 2) | (1 << 3)                                   # READ_FILE | READ_DIR
_LL_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
_LL_SCOPE_ALL = 1 | 2                                             # abstract Unix sockets | signals
_CLONE_THREAD = 0x00010000
_CLONE_NEW = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
_REFUSED_AFTER_COMPILE = ("execve", "execveat", "fork", "vfork")
_REFUSED = ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "unshare", "setns", "socket", "socketpair", "io_uring_setup", "bpf", "userfaultfd",
            "perf_event_open", "keyctl", "add_key", "request_key")


class _Ruleset(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _failed(what: str) -> str:
    err = ctypes.get_errno()
    return f"{what}: {os.strerror(err) if err else 'refused'}"


def drop_capabilities(become: Callable[[], None] = lambda: None) -> str:
    """Give up every capability for good; return what was not possible ('' when all went well).

    ``become`` runs between emptying the bounding set and clearing the process's own capabilities: the
    moment to change uid (:func:`become_nobody`), which still needs CAP_SETUID.
    """
    libc = _libc()
    try:
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        last = 63
    for cap in range(last + 1):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:
            return _failed("capability bounding set")
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    become()
    header = (ctypes.c_uint32 * 2)(_CAP_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable for two 32-bit words: all zero
    if libc.capset(header, data) != 0:
        return _failed("capset")
    return ""


NOBODY = 65534
"""The uid and gid the child runs as when it starts as root (``nobody``/``nogroup`` on Debian and Red Hat)."""


def _others_may_enter(path: str) -> bool:
    """Whether a uid with no relation to the owners may walk to ``path`` (every directory on the way o+x)."""
    p = Path(path)
    for d in [*reversed(p.parents), p] if p.is_dir() else reversed(p.parents):
        try:
            if not os.stat(d).st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


def _closed_ancestor(path: str) -> str | None:
    """The highest directory on the way to ``path`` that other uids may not enter (``None``: all open)."""
    for d in reversed(Path(path).parents):
        try:
            if not os.stat(d).st_mode & 0o001:
                return str(d)
        except OSError:
            return None
    return None


def unhide_for_others(paths: list[str]) -> tuple[str, str]:
    """Make ``paths`` reachable by another uid, in this process's own mount namespace (needs CAP_SYS_ADMIN).

    Each closed directory above a path (root's 0700 home) is covered by an empty tmpfs, and the paths under
    it are bound back read-only at the same place: the interpreter stays importable, while what else lived
    in that directory (keys, tokens, other projects) is no longer there at all.  Returns (done, problem).
    """
    covers: dict[str, list[str]] = {}
    for p in paths:
        top = _closed_ancestor(p)
        if top is not None:
            covers.setdefault(top, []).append(p)
    if not covers:
        return "", ""
    libc = _libc()
    # A mount namespace of this process's own, first: the covers must never reach the machine's mounts.
    if libc.unshare(0x00020000) != 0 or libc.mount(None, b"/", None, (1 << 14) | (1 << 18), None) != 0:
        return "", _failed("own mount namespace")
    ms_rdonly, ms_bind, ms_remount, ms_rec = 1, 4096, 32, 1 << 14
    for top in sorted(covers):
        if any(top.startswith(other + "/") for other in covers if other != top):
            continue  # inside a cover already made: its paths are bound with the outer one's
        inner = sorted(p for other in covers if other == top or other.startswith(top + "/") for p in covers[other])
        keep = [p for p in inner if not any(p.startswith(q + "/") for q in inner if q != p)]
        fds = {p: os.open(p, os.O_PATH | os.O_CLOEXEC) for p in keep}  # before the tmpfs hides them
        try:
            if libc.mount(b"tmpfs", top.encode(), b"tmpfs", 2 | 4, b"size=1m,mode=0755") != 0:
                return "", _failed(f"cover {top}")
            for p, fd in fds.items():
                if os.path.isdir(f"/proc/self/fd/{fd}"):
                    os.makedirs(p, exist_ok=True)
                else:
                    os.makedirs(os.path.dirname(p), exist_ok=True)
                    open(p, "ab").close()
                source = f"/proc/self/fd/{fd}".encode()
                if libc.mount(source, p.encode(), None, ms_bind | ms_rec, None) != 0 or libc.mount(
                        None, p.encode(), None, ms_remount | ms_bind | ms_rdonly, None) != 0:
                    return "", _failed(f"bind {p}")
        finally:
            for fd in fds.values():
                os.close(fd)
    return f"closed directories covered, only the interpreter and packages bound back: {', '.join(sorted(covers))}", ""


def become_nobody(tmp: str) -> str:
    """Switch to uid and gid :data:`NOBODY` for good (own temp dir handed over); return the problem or ''.

    Called with the capability bounding set already empty but the effective capabilities still held
    (changing uid needs CAP_SETUID); a uid change from 0 clears them all.
    """
    if os.getuid() != 0:
        return ""
    closed = [p for p in readable_paths(tmp) if p != tmp and not _others_may_enter(p)]  # as this namespace shows
    if closed:
        return f"unprivileged uid: other uids may not reach {closed[0]} (and no mount namespace to bind it)"
    try:
        os.chown(tmp, NOBODY, NOBODY)  # its own temp dir (0700): the one place it writes
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
    except OSError as exc:
        return f"unprivileged uid: {exc}"
    return ""


def no_new_privileges() -> bool:
    """Set ``PR_SET_NO_NEW_PRIVS`` (also required before an unprivileged Landlock or seccomp filter)."""
    return bool(_libc().prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0)


def readable_paths(tmp: str) -> list[str]:
    """What the child may read: its interpreter, packages, shared libraries and its own ``/proc`` entry."""
    package = Path(__file__).resolve().parents[1]  # he_compute itself (by path: its __init__ imports the client)
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(sys.executable).resolve().parent),
             str(package), "/usr", "/lib", "/lib64", "/etc/ld.so.cache",
             "/etc/localtime", f"/proc/{os.getpid()}", "/proc/cpuinfo", "/proc/meminfo",
             "/sys", "/proc/stat", "/dev/urandom", "/dev/random", "/dev/zero"}
    # sys.path entries name where imports come from (a checkout on PYTHONPATH, the venv's site-packages);
    # the root and the temp dir's parent are never granted whole.
    paths |= {p for p in sys.path if p and p != "/" and os.path.isdir(p) and Path(tmp).parent != Path(p)}
    paths |= set(openfhe_environment()[1])
    return sorted(p for p in paths if os.path.exists(p))


def openfhe_environment() -> tuple[list[str], list[str]]:
    """(programs, directories) of the OpenFHE environment, if this machine has one: the bootstrapping CKKS
    engine runs OpenFHE under that CPython 3.10 (schemes/ckks/ofhe.py), started while a model is opened and
    so before :func:`no_exec`.  That interpreter may then be executed and its environment and base
    installation read; the child it starts inherits every limit of this one (Landlock, seccomp, rlimits)."""
    from ..errors import HECError
    from ..schemes.ckks.ofhe import interpreter

    try:
        python = interpreter()
    except HECError:
        return [], []
    venv = python.parent.parent
    dirs = {str(venv.resolve()), str(python.resolve().parent.parent)}
    try:
        home = next(line.split("=", 1)[1].strip() for line in (venv / "pyvenv.cfg").read_text().splitlines()
                    if line.startswith("home"))
        dirs.add(str(Path(home).resolve().parent))
    except (OSError, StopIteration):
        pass
    return [str(python.resolve())], sorted(dirs)


def private_shm() -> bool:
    """Mount a fresh, small tmpfs on /dev/shm in a mount namespace of the child's own (needs CAP_SYS_ADMIN).

    Intel's OpenMP runtime (loaded by Concrete) registers itself in /dev/shm and crashes when it cannot;
    a private one lets it, while what the child writes there stays invisible to every other process.
    """
    libc = _libc()
    if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
        return False
    if libc.mount(None, b"/", None, (1 << 14) | (1 << 18), None) != 0:  # MS_REC | MS_PRIVATE
        return False
    flags = 2 | 4 | 8  # MS_NOSUID | MS_NODEV | MS_NOEXEC
    return bool(libc.mount(b"tmpfs", b"/dev/shm", b"tmpfs", flags, b"size=16m,mode=1777") == 0)


def landlock(tmp: str, shm: bool = True) -> tuple[str, str]:
    """Restrict the file system to :func:`readable_paths` plus ``tmp`` read-write; no TCP; scoped signals.

    Returns (what took effect, what could not be applied); one of the two is ''.
    """
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(_NR_LANDLOCK["create"], None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return "", _failed("Landlock (kernel without it)")
    fs = _LL_FS_BY_ABI[max(k for k in _LL_FS_BY_ABI if k <= abi)]
    attr = _Ruleset(fs, 3 if abi >= 4 else 0, _LL_SCOPE_ALL if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = libc.syscall(_NR_LANDLOCK["create"], ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        return "", _failed("Landlock ruleset")
    try:
        rules = [(p, _LL_READ) for p in readable_paths(tmp)] + [(tmp, fs), ("/dev/null", (1 << 1) | (1 << 2))]
        rules += [("/dev/shm", fs)] if shm and os.path.isdir("/dev/shm") else []
        rules += [(p, (1 << 0) | (1 << 2)) for p in executables()]
        for path, allowed in rules:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                # A rule on a file may only carry file rights: READ_DIR and the directory rights go.
                rights = allowed if os.path.isdir(path) else allowed & ((1 << 0) | (1 << 1) | (1 << 2) | (1 << 14)
                                                                         | (1 << 15))
                rule = _PathBeneath(rights & fs, fd)
                if libc.syscall(_NR_LANDLOCK["add_rule"], ctypes.c_int(ruleset), ctypes.c_int(1),
                                ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
                    return "", _failed(f"Landlock rule for {path}")
            finally:
                os.close(fd)
        if libc.syscall(_NR_LANDLOCK["restrict"], ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            return "", _failed("Landlock restrict_self")
    finally:
        os.close(ruleset)
    extra = ", no TCP" if abi >= 4 else ""
    extra += ", no signals or abstract sockets outside" if abi >= 6 else ""
    return f"files: read-only packages, read-write own temp dir only (Landlock ABI {abi}{extra})", ""


def seccomp_filter() -> tuple[str, str]:
    """Load the seccomp filter that holds from the start (see the module docstring)."""
    return _load(_REFUSED, True, "no ptrace, namespaces or sockets (seccomp)")


def no_exec() -> tuple[str, str]:
    """Load a second filter refusing ``execve`` and ``fork``: Concrete runs ``sh`` and ``ld`` to compile."""
    return _load(_REFUSED_AFTER_COMPILE, False, "no exec or fork from here on (seccomp)")


def _load(names: tuple[str, ...], base: bool, says: str) -> tuple[str, str]:
    seccomp = _seccomp
    if seccomp is None:
        return "", f"seccomp: {_SECCOMP_MISSING}"
    try:
        f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        for name in names:
            f.add_rule(seccomp.ERRNO(errno.EACCES if name.startswith("socket") else errno.EPERM), name)
        if base:
            # clone3 passes its flags in memory, out of seccomp's sight: ENOSYS sends glibc back to clone.
            f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
            for flag in _CLONE_NEW:
                f.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
        else:
            f.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, _CLONE_THREAD, 0))
        f.load()
    except (OSError, RuntimeError, ValueError) as exc:
        return "", f"seccomp: {exc}"
    return says, ""


def executables() -> list[str]:
    """The only programs the child may start (until :func:`no_exec`): Concrete's linker, archiver, shell, loader."""
    found = {shutil.which(name) for name in ("sh", "ld", "ar")}
    found |= {str(p) for pattern in ("/lib64/ld-linux*.so*", "/lib/ld-linux*.so*", "/lib/*/ld-linux*.so*")
              for p in Path("/").glob(pattern.lstrip("/"))}
    found |= set(openfhe_environment()[0])
    return sorted({str(Path(p).resolve()) for p in found if p})
