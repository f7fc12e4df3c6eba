"""The one exception tree of he_compute.

Every error the library raises on purpose derives from :class:`HECError`, so
callers (and the CLI, which turns it into a one-line message) need to catch
only one type.  Each class is one kind of failure::

    HECError
    ├── FormatError            a file or message is not what it claims: bad magic, version, kind, field
    │   ├── IntegrityError     content does not match its sha256
    │   └── LimitExceeded      a size or count from a stranger is above the configured bound
    ├── UnsafeArtifactError    an artefact would run code if loaded (pickle, jsonpickle, .so, foreign MLIR)
    ├── InputError             user data is unusable: shape, NaN/inf, unreadable CSV
    ├── ConfigError            a flag or HEC_* setting is missing or has an unusable value (names it)
    ├── KeyMismatchError       keys, bundle and ciphertexts do not belong together
    ├── UnsupportedModelError  the model cannot be compiled for the scheme asked for
    ├── SecurityError          parameters below the security floor, or files others can read
    ├── EvaluationError        the scheme failed while evaluating (may succeed on another attempt)
    ├── DeviceError            the device asked for (a GPU) is not usable here
    ├── TransportError         the plumbing failed: retrying later may help
    │   ├── QueueError         the job queue failed or refused an operation
    │   │   └── JobFailed      a job ended in failure (carries the job's last error)
    │   └── StoreError         the blob store failed or refused an operation
    │       └── BlobNotFound   no blob with this digest is in the store
    ├── AuthError              a coordinator refused the caller's credentials or scope: retrying cannot help
    └── VerificationError      a worker's result cannot be trusted
        ├── IdentityError      a worker key file is missing, unreadable or too widely readable
        ├── ReceiptError       a receipt is malformed, badly signed or does not match the job
        │   └── UntrustedWorker  the receipt is signed by a key that is not on the allow-list
        ├── BadOutput          a valid receipt names output blobs that are missing or malformed
        ├── NoMajority         replicas disagree and no result reaches a majority
        ├── CanaryFailed       a worker got a canary (a job whose answer the client knows) wrong
        ├── Unverified         results were rejected (outvoted, invalid) and no other worker can re-run them
        └── AuditError         the audit log was rewritten, truncated or reordered

Messages say what is wrong and what to do about it, in one line.  A check
never returns ``False``: it raises one of these.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any


class HECError(Exception):
    """Base class of every error he_compute raises on purpose."""


class FormatError(HECError):
    """A file or message is not a valid he_compute artefact of the expected kind."""


class IntegrityError(FormatError):
    """Content does not match the sha256 digest that names it."""


class LimitExceeded(FormatError):
    """A size or count chosen by someone else exceeds the configured bound (checked before allocating)."""


class UnsafeArtifactError(HECError):
    """An artefact holds something executable (pickle, jsonpickle objects, shared libraries, foreign MLIR)."""


class InputError(HECError):
    """User-supplied data cannot be used as model input."""


class ConfigError(HECError):
    """A command-line flag or ``HEC_*`` setting is missing or has an unusable value; the message names it."""


class KeyMismatchError(HECError):
    """Keys, bundle and ciphertexts were not made for each other."""


class UnsupportedModelError(HECError):
    """The model (or one of its operations) cannot be compiled for the requested scheme."""


class SecurityError(HECError):
    """Encryption parameters do not reach the required security level, or secrets are exposed."""


class EvaluationError(HECError):
    """The scheme library failed while evaluating; another attempt (or worker) may succeed."""


class DeviceError(HECError):
    """The requested device cannot be used on this machine."""


class TransportError(HECError):
    """The queue, blob store or coordinator failed or refused; the operation may succeed later."""


class QueueError(TransportError):
    """The job queue failed or refused an operation."""


class JobFailed(QueueError):
    """A job ended in failure; ``str(exc)`` carries the job's last error."""


class StoreError(TransportError):
    """The blob store failed or refused an operation."""


class BlobNotFound(StoreError):
    """No blob with this digest is in the store."""


class AuthError(HECError):
    """A coordinator refused the caller: unknown, unsigned, replayed or out-of-scope request.

    Not a :class:`TransportError`: retrying the same credentials cannot help, so a worker refused this way
    stops (a revoked key must not look like an unreachable queue), and a client reports it at once.
    """


class VerificationError(HECError):
    """A worker's result, receipt or identity, or the audit log, failed a check."""


class IdentityError(VerificationError):
    """A worker identity key cannot be created, read or trusted."""


class ReceiptError(VerificationError):
    """A receipt is malformed, badly signed, or does not describe the job it came with.

    ``worker`` is the short id of the claimed signer when it could be read, else ``None``.
    """

    def __init__(self, message: str, worker: str | None = None):
        super().__init__(message)
        self.worker = worker


class UntrustedWorker(ReceiptError):
    """The receipt's signer is not on the client's allow-list."""


class BadOutput(VerificationError):
    """A receipt valid for its job names output blobs that are missing or malformed; ``worker_id`` signed it."""

    def __init__(self, message: str, worker_id: str):
        super().__init__(message)
        self.worker_id = worker_id


class NoMajority(VerificationError):
    """Replicas of a job disagree and no result has a strict majority."""


class CanaryFailed(VerificationError):
    """Workers (``workers``, short ids) returned a wrong answer for a canary."""

    def __init__(self, message: str, workers: tuple[str, ...] = ()):
        super().__init__(message)
        self.workers = workers


class Unverified(VerificationError):
    """Results of workers (``workers``, short ids) were rejected (outvoted by a majority, or invalid) and no
    other worker is available to re-run them; :class:`CanaryFailed` when a canary caught one of them."""

    def __init__(self, message: str, workers: tuple[str, ...] = ()):
        super().__init__(message)
        self.workers = workers


class AuditError(VerificationError):
    """The audit log is not intact; ``index`` is the first bad entry (``None`` for the whole log)."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


class HECWarning(UserWarning):
    """Something the user should know that does not stop the work: inputs clipped or saturated, say.

    Shown as one ``Warning: ...`` line, by the CLI and in Python alike; in Python it is an ordinary warning
    of this category (filters and ``pytest.warns`` see it as any other)."""


def show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """A ``warnings.showwarning`` for programs (``hec``, ``make demo``): he_compute's own warnings as one
    ``Warning: ...`` line on stderr, every other warning as Python shows it."""
    if issubclass(category, HECWarning):
        print(f"Warning: {message}", file=sys.stderr, flush=True)
    else:
        _SHOW_WARNING(message, category, *args, **kwargs)


_SHOW_WARNING = warnings.showwarning


def warn(message: str, stacklevel: int = 2) -> None:
    """Emit an :class:`HECWarning`, also where a library silenced every warning at import (importing
    ``concrete.ml.sklearn`` does): only a filter naming this category or a class it derives from (say
    ``UserWarning``) silences it.  Where Python itself shows it, it is one ``Warning: ...`` line: the
    format is swapped for this call only, so no other library's warnings change, and a recorder
    (``catch_warnings(record=True)``, ``pytest.warns``) or a replaced ``showwarning`` gets the warning as usual."""
    first = next((f for f in warnings.filters if issubclass(HECWarning, f[2])), None)
    with warnings.catch_warnings():
        if first is not None and first[0] == "ignore" and first[2] is Warning:
            warnings.filterwarnings("always", category=HECWarning)
        shown_as = warnings.formatwarning

        def one_line(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> str:
            # Not Python's file, line and source line, which name he_compute's internals, not the user's code.
            if issubclass(category, HECWarning):
                return f"Warning: {message}\n"
            return shown_as(message, category, *args, **kwargs)  # another thread's warning, meanwhile

        warnings.formatwarning = one_line
        try:
            warnings.warn(message, HECWarning, stacklevel=stacklevel + 1)
        finally:
            warnings.formatwarning = shown_as


def clipped_message(head: str, rows: "list[int]", features: "list[int]", values: "list[float]", limit: int = 5) -> str:
    """``head`` and the first ``limit`` (row, feature, value) cells, counted from 0, that fell outside a range."""
    shown = ", ".join(f"row {r} feature {f} = {v:.4g}" for r, f, v in list(zip(rows, features, values))[:limit])
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return f"{head}: {shown}{more} (rows and features counted from 0)"
