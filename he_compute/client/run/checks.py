"""Checking one finished job before its answer may vote: record, receipt, outputs.

A job's result was written by an untrusted worker.  It must parse as a
:class:`~he_compute.formats.task.Result` for the inputs the job named, carry a receipt signed by its
worker (on the allow-list, if there is one) naming this job, model, keys, inputs and outputs, and every
output must be in the store with the size and framing this model's results have (nothing is
deserialized here).  A receipt valid for this job binds its signer: :class:`BadOutput` names it.
Anything else (a forged or replayed receipt) may name an honest worker, so it names nobody.
"""

from __future__ import annotations

from typing import Any, Callable, TypeGuard

from ...errors import BadOutput, FormatError, ReceiptError
from ...formats.canonical import canonical
from ...formats.receipt import KeyPolicy, Receipt, verify_receipt
from ...formats.task import Result
from ...transport.blobs import BlobStore
from ...transport.queue import Job

OutputCheck = Callable[[bytes, int], None]
"""Raises FormatError unless the bytes can be the model's encrypted result for that many samples."""


def check_result(job: Job, spec: dict[str, Any], store: BlobStore, *, allowed: KeyPolicy | None,
                 check_output: OutputCheck | None) -> tuple[Result, Receipt]:
    """Parse and verify one finished job's result; raise a VerificationError or FormatError."""
    result = Result.from_json(job.result)
    if list(result.inputs) != spec["inputs"]:
        raise ReceiptError(f"job {job.id} returned a result for other inputs")
    r = verify_receipt(result.receipt, allowed=allowed, expected={
        "job_id": job.id, "model_id": spec["model_id"], "key_id": spec["key_id"],
        "inputs": spec["inputs"], "outputs": list(result.outputs)})
    if len(result.outputs) != len(spec["inputs"]) or not all(store.exists(d) for d in result.outputs):
        raise BadOutput(f"job {job.id}: worker {r.worker} names output blobs that are not in the store", r.worker_id)
    if check_output is not None:
        for digest, count in zip(result.outputs, spec["counts"]):
            try:
                check_output(store.get(digest), int(count))
            except FormatError as exc:  # IntegrityError and LimitExceeded included
                raise BadOutput(f"job {job.id}: worker {r.worker} returned a malformed result ({exc})",
                                r.worker_id) from None
    return result, r


def loggable(receipt: Any) -> TypeGuard[dict[str, Any]]:
    """Whether a receipt (from a stranger) can go into the audit log as it is."""
    if not isinstance(receipt, dict):
        return False
    try:
        canonical(receipt)
    except FormatError:
        return False
    return True
