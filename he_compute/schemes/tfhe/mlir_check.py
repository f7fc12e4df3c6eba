"""Check a TFHE circuit by its structure, in a child process, before Concrete compiles it.

The circuit (``circuit.mlir``) comes from whoever submitted the job.  Reading it with
regular expressions was not enough: Concrete's parser accepts spellings a regex does
not foresee (``call@f``, ``"\\6Clvm.inline_asm"``, body-less ``func.func nested``
declarations), and compiling those aborts the worker or reaches LLVM's code printer.
So the text is parsed with Concrete's own MLIR bindings -- the parser its compiler
uses -- and every parsed operation is walked against an allow-list
(:mod:`._mlir_walk` documents what passes).

The walk runs in a child process (``python -I``, empty environment, its own resource
limits): the MLIR parser overflows its stack on deeply nested input (a 200 kB circuit
of nested brackets kills it with SIGSEGV) and the bindings abort on some attribute
accesses, so a crash there must become a refusal rather than take the worker down.
A child costs about 0.3 s; a digest of every circuit that passed is kept so that a
process checks each server part once.

The worker's sandboxed evaluation child may not start programs (its seccomp filter refuses
``execve``), so the worker checks a server part before it hands it over, and the child
compiles it inside :func:`checked_by_parent`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import re
import signal
import subprocess
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from ...errors import FormatError, UnsafeArtifactError

CHECK_TIMEOUT_S = 120  # wall clock for one check; the child also has a 60 s CPU limit
_WALKER = Path(__file__).with_name("_mlir_walk.py")
_REDO = "re-export the model with Concrete ML (FHEModelDev(...).save(via_mlir=True))"
_ENTRY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_PASSED_MAX = 256  # digests of circuits that passed, most recent last
_passed: OrderedDict[bytes, None] = OrderedDict()
_lock = threading.Lock()
_parent_checked = False


@contextlib.contextmanager
def checked_by_parent() -> Iterator[None]:
    """Inside this block :func:`check_circuit` passes every circuit: the calling process's parent checked it.

    Only the sandbox child (:mod:`he_compute.worker.child`) uses it, for a server part its worker has
    run through the same check before sending it (see the module docstring).
    """
    global _parent_checked
    _parent_checked = True
    try:
        yield
    finally:
        _parent_checked = False


def check_circuit(text: bytes, entry: str | None = None) -> None:
    """Refuse ``circuit.mlir`` unless it is a plain Concrete ML circuit whose function is ``entry``.

    Raises :class:`~he_compute.errors.FormatError` for text the parser rejects and
    :class:`~he_compute.errors.UnsafeArtifactError` for anything outside the allow-list,
    or when the check itself crashes, runs out of time or cannot run.
    """
    if not isinstance(text, bytes):
        raise FormatError("circuit.mlir must be bytes")
    if entry is not None and not _ENTRY.fullmatch(entry):
        raise FormatError(f"the circuit name {entry[:40]!a} is not a plain identifier")
    if _parent_checked:
        return
    key = hashlib.sha256(f"{entry}\0".encode() + text).digest()
    with _lock:
        if key in _passed:
            _passed.move_to_end(key)
            return
    verdict = _run_walker(text, entry or "")
    if verdict.get("verdict") == "format":
        raise FormatError(str(verdict.get("message")))
    if verdict.get("verdict") != "ok":
        raise UnsafeArtifactError(str(verdict.get("message")))
    with _lock:
        _passed[key] = None
        while len(_passed) > _PASSED_MAX:
            _passed.popitem(last=False)


def _run_walker(text: bytes, entry: str) -> dict:
    # -I: no PYTHONPATH, no user site, no script directory on sys.path; env={}: none of the
    # worker's credentials.  The bindings' location is passed explicitly instead.
    command = [sys.executable, "-I", str(_WALKER), entry, *_bindings_root()]
    try:
        child = subprocess.run(
            command, input=text, capture_output=True, env={}, cwd="/", timeout=CHECK_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise UnsafeArtifactError(
            f"circuit.mlir took more than {CHECK_TIMEOUT_S} s to check: refusing it; {_REDO}"
        ) from None
    except OSError as exc:
        raise UnsafeArtifactError(f"circuit.mlir could not be checked ({exc}): refusing it") from exc
    if child.returncode == -signal.SIGXCPU:
        raise UnsafeArtifactError(f"circuit.mlir used up the check's CPU time: refusing it; {_REDO}")
    if child.returncode < 0:
        name = _signal_name(-child.returncode)
        raise UnsafeArtifactError(f"circuit.mlir crashed Concrete's MLIR parser ({name}): refusing it; {_REDO}")
    try:
        verdict = json.loads(child.stdout.decode("utf-8").strip().splitlines()[-1])
        if child.returncode != 0 or not isinstance(verdict, dict):
            raise ValueError(child.returncode)
    except (ValueError, IndexError, UnicodeDecodeError):
        # A Python error in the child (a MemoryError under its limits, missing bindings): refuse.
        last = child.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        reason = " ".join(last[0].split())[:120]
        raise UnsafeArtifactError(
            f"circuit.mlir could not be checked (exit {child.returncode}: {reason}): refusing it"
        ) from None
    return verdict


def _bindings_root() -> list[str]:
    """The directory holding the ``mlir`` package, found without importing it."""
    spec = importlib.util.find_spec("mlir")
    locations = list(spec.submodule_search_locations or []) if spec else []
    return [str(Path(locations[0]).parent)] if locations else []


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
