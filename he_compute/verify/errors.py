"""The verification branch of the error tree, under :class:`~he_compute.errors.HECError`::

    HECError
    └── VerificationError    a worker's result, receipt, identity or the audit log failed a check
        ├── IdentityError    a worker key file is missing, unreadable or too widely readable
        ├── ReceiptError     a receipt is malformed, badly signed or does not match the job
        │   └── UntrustedWorker  the receipt is signed by a key that is not on the allow-list
        ├── NoMajority       replicas disagree and no result reaches a majority
        ├── CanaryFailed     a worker got a canary (a job whose answer the client knows) wrong
        └── AuditError       the audit log was rewritten, truncated or reordered

A check never returns ``False``: it raises one of these, with a one-line
message naming the worker (short id) or the log index at fault.
"""

from __future__ import annotations

from ..errors import HECError


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


class NoMajority(VerificationError):
    """Replicas of a job disagree and no result has a strict majority."""


class CanaryFailed(VerificationError):
    """Workers (``workers``, short ids) returned a wrong answer for a canary."""

    def __init__(self, message: str, workers: tuple[str, ...] = ()):
        super().__init__(message)
        self.workers = workers


class AuditError(VerificationError):
    """The audit log is not intact; ``index`` is the first bad entry (``None`` for the whole log)."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index
