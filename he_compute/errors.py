"""The one exception tree of he_compute.

Every error the library raises on purpose derives from :class:`HECError`, so
callers (and the CLI, which turns it into a one-line message) need to catch
only one type::

    HECError
    ├── FormatError          a file is not what it claims: bad magic, version, kind, checksum
    │   └── IntegrityError   content does not match its sha256
    ├── UnsafeArtifactError  an artefact would run code if loaded (pickle, jsonpickle, .so)
    ├── InputError           user data is unusable: shape, NaN/inf, unreadable CSV
    ├── KeyMismatchError     keys, bundle and ciphertexts do not belong together
    ├── UnsupportedModelError  the model cannot be compiled for the scheme asked for
    ├── SecurityError        parameters below the security floor
    ├── QueueError           the job queue or blob store failed or refused
    │   └── JobFailed        a job ended in failure (carries the job's last error)
    └── VerificationError    a worker's result cannot be trusted (he_compute.verify.errors:
                             IdentityError, ReceiptError, UntrustedWorker, NoMajority,
                             CanaryFailed, AuditError)

Messages say what is wrong and what to do about it, in one line.
"""

from __future__ import annotations


class HECError(Exception):
    """Base class of every error he_compute raises on purpose."""


class FormatError(HECError):
    """A file is not a valid he_compute artefact of the expected kind."""


class IntegrityError(FormatError):
    """Content does not match the sha256 digest that names it."""


class UnsafeArtifactError(HECError):
    """An artefact holds something executable (pickle, jsonpickle objects, shared libraries)."""


class InputError(HECError):
    """User-supplied data cannot be used as model input."""


class KeyMismatchError(HECError):
    """Keys, bundle and ciphertexts were not made for each other."""


class UnsupportedModelError(HECError):
    """The model (or one of its operations) cannot be compiled for the requested scheme."""


class SecurityError(HECError):
    """Encryption parameters do not reach the required security level."""


class QueueError(HECError):
    """The job queue or the blob store failed or refused an operation."""


class JobFailed(QueueError):
    """A job ended in failure; ``str(exc)`` carries the job's last error."""
