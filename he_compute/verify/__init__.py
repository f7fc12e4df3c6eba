"""Verifying untrusted workers: identities, signed receipts, redundancy, canaries and an audit log.

Encryption keeps the data private from workers but does not stop one from
returning a wrong answer: FHE ciphertexts are malleable, and a plausible
wrong result decrypts as happily as a right one.  This package gives the
client four independent checks and one record:

* :mod:`.identity`    each worker signs with its own Ed25519 key; the client may allow-list keys;
* :mod:`.receipts`    each result carries a signed receipt binding job, model, keys, inputs and outputs;
* :mod:`.redundancy`  run a job on K distinct workers, accept the majority, flag dissenters;
* :mod:`.canaries`    mix in jobs whose answers the client knows, check them after decryption;
* :mod:`.audit`       an append-only, hash-chained, Merkle-rooted log of submissions and receipts.

Every check raises a :class:`VerificationError` (never returns ``False``).
"""

from __future__ import annotations

from .audit import AuditLog, LogHead, verify_inclusion
from .canaries import Canary, KnownAnswers, canary_count, shuffle_in
from .canonical import canonical
from .errors import (
    AuditError,
    CanaryFailed,
    IdentityError,
    NoMajority,
    ReceiptError,
    UntrustedWorker,
    VerificationError,
)
from .identity import AllowList, WorkerIdentity, fingerprint, short_id
from .receipts import RECEIPT_VERSION, Receipt, sign_receipt, verify_receipt
from .redundancy import Tally, result_digest, tally

__all__ = [
    "RECEIPT_VERSION",
    "AllowList",
    "AuditError",
    "AuditLog",
    "Canary",
    "CanaryFailed",
    "IdentityError",
    "KnownAnswers",
    "LogHead",
    "NoMajority",
    "Receipt",
    "ReceiptError",
    "Tally",
    "UntrustedWorker",
    "VerificationError",
    "WorkerIdentity",
    "canary_count",
    "canonical",
    "fingerprint",
    "result_digest",
    "short_id",
    "shuffle_in",
    "sign_receipt",
    "tally",
    "verify_inclusion",
    "verify_receipt",
]
