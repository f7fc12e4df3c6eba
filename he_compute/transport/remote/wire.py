"""The coordinator's HTTP protocol, shared by the coordinator and its remote clients: headers, signed requests,
job records on the wire.

Workers sign every request with their Ed25519 key.  The signed message is a
domain tag followed by the canonical JSON of::

    {"method": "POST", "path": "/v1/worker/claim?x=1", "sha256": "<hex of the body>",
     "ts": <unix seconds>, "nonce": "<32 hex>", "worker": "<worker id>"}

and travels in four headers (:data:`H_WORKER`, :data:`H_TS`, :data:`H_NONCE`,
:data:`H_SIG`) plus :data:`H_SHA256`.  The domain tag differs from the
receipts' (:mod:`he_compute.formats.receipt`), so a request signature can never
pass for a receipt or the other way round.  The coordinator refuses a stale
timestamp (more than :data:`MAX_SKEW_S` away from its clock) and a nonce it has
seen, so a captured request cannot be replayed.  Clients (tenants) send a
bearer token instead.

Example::

    headers = sign_request(identity, "POST", "/v1/worker/claim", body)
    check = signed_message("POST", "/v1/worker/claim", sha256_hex(body), ts, nonce, worker_id)
"""

from __future__ import annotations

import base64
import binascii
import re
import time
import uuid
from typing import Any

from ...errors import FormatError
from ...formats.canonical import canonical
from ...formats.digests import sha256_hex
from ...formats.receipt import Signer
from ..queue.base import Job, JobState

API = "/v1"
"""Prefix of every JSON route (the status page lives under ``/status``)."""

H_WORKER, H_TS, H_NONCE, H_SIG, H_SHA256 = (
    "x-hec-worker", "x-hec-timestamp", "x-hec-nonce", "x-hec-signature", "x-hec-content-sha256")
H_IDEMPOTENCY = "idempotency-key"
"""A client's key for one submission: retrying a submit with the same key returns the first job id."""

MAX_SKEW_S = 60
"""How far a signed request's timestamp may be from the coordinator's clock; nonces are remembered twice as long."""

MAX_JSON_BYTES = 2 * 1024 * 1024
"""The largest JSON body any route reads (a result names at most 4096 digests plus a receipt)."""

_DOMAIN = b"he_compute request v1\x00"
_NONCE = re.compile(r"[0-9a-f]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def signed_message(method: str, path: str, body_sha256: str, ts: int, nonce: str, worker_id: str) -> bytes:
    """The bytes a worker signs for one request (see the module docstring)."""
    return _DOMAIN + canonical({"method": method.upper(), "path": path, "sha256": body_sha256, "ts": int(ts),
                                "nonce": nonce, "worker": worker_id})


def sign_request(signer: Signer, method: str, path: str, body: bytes = b"", *, body_sha256: str | None = None,
                 now: float | None = None) -> dict[str, str]:
    """The headers that authenticate one request by ``signer``.

    ``path`` includes the query string exactly as sent.  A streamed body is named by ``body_sha256``
    (its digest, declared up front and checked by the coordinator as the bytes arrive).
    """
    digest = body_sha256 if body_sha256 is not None else sha256_hex(body)
    ts, nonce = int(time.time() if now is None else now), uuid.uuid4().hex
    sig = signer.sign(signed_message(method, path, digest, ts, nonce, signer.worker_id))
    return {H_WORKER: signer.worker_id, H_TS: str(ts), H_NONCE: nonce, H_SHA256: digest,
            H_SIG: base64.b64encode(sig).decode()}


def parse_signature_headers(headers: Any) -> tuple[str, int, str, str, bytes]:
    """``(worker id, timestamp, nonce, body sha256, signature)`` from request headers; ``ValueError`` naming what
    is missing or malformed."""
    worker, ts, nonce = headers.get(H_WORKER, ""), headers.get(H_TS, ""), headers.get(H_NONCE, "")
    digest, sig = headers.get(H_SHA256, ""), headers.get(H_SIG, "")
    if not (worker and ts and nonce and digest and sig):
        raise FormatError("the request is not signed: workers sign every request with their key (hec worker does)")
    if not _HEX64.fullmatch(worker) or not _HEX64.fullmatch(digest) or not _NONCE.fullmatch(nonce):
        raise FormatError("malformed signature headers (worker id, body digest or nonce)")
    try:
        return worker, int(ts), nonce, digest, base64.b64decode(sig, validate=True)
    except (ValueError, binascii.Error):
        raise FormatError("malformed signature headers (timestamp or signature)") from None


def job_to_wire(job: Job) -> dict[str, Any]:
    """A job record as JSON (the same fields as ``hec status --json``)."""
    return job.to_json()


def job_from_wire(obj: Any) -> Job:
    """Rebuild a :class:`Job` from :func:`job_to_wire` output; :class:`FormatError` when it does not parse."""
    if not isinstance(obj, dict):
        raise FormatError("a job record must be a JSON object")
    fields = dict(obj)
    fields["state"] = JobState(fields["state"])
    known = set(Job.__dataclass_fields__)
    return Job(**{k: v for k, v in fields.items() if k in known})
