"""Signed receipts: a worker's signed statement of what it computed.

A receipt is a JSON object; its signature covers the canonical JSON
(:mod:`.canonical`) of every field but ``sig``, prefixed with a domain tag so
that a receipt signature can never be replayed as any other signed message::

    {"v": 1, "type": "hec-receipt", "job": ..., "model_id": ..., "key_id": ...,
     "inputs": ["sha256:..."], "outputs": ["sha256:..."],
     "worker": "<sha256 of the public key>", "public_key": "<base64 raw Ed25519 key>",
     "timings": {"started_ms": <unix ms>, "eval_ms": <ms>}, "sig": "<base64>"}

The client verifies it with :func:`verify_receipt` before it accepts a
result: well-formed, signed by the key it names, the key allowed (if an
allow-list is given), and every expected field equal.  It raises
:class:`~he_compute.errors.ReceiptError` (never returns ``False``).

Example::

    r = sign_receipt(me, job_id="j1", model_id=m, key_id=k, inputs=[d_in], outputs=[d_out], timings={"eval_ms": 12})
    verify_receipt(r, expected={"job_id": "j1", "inputs": [d_in]}, allowed=allow_list)
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Protocol

from ..errors import ReceiptError
from .canonical import canonical
from .signing import fingerprint, short_id, verify_signature

RECEIPT_VERSION = 1
RECEIPT_TYPE = "hec-receipt"
_DOMAIN = b"he_compute receipt v1\x00"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_FIELDS = {"v", "type", "job", "model_id", "key_id", "inputs", "outputs", "worker", "public_key", "timings", "sig"}
_EXPECTABLE = {"job_id": "job", "model_id": "model_id", "key_id": "key_id", "inputs": "inputs",
               "outputs": "outputs", "worker_id": "worker"}


class Signer(Protocol):
    """Anything that signs as a worker (:class:`he_compute.worker.identity.WorkerIdentity`)."""

    public_raw: bytes
    worker_id: str

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature of ``data``."""
        ...


class KeyPolicy(Protocol):
    """Which signers a client accepts (:class:`he_compute.client.run.allowlist.AllowList`)."""

    def check(self, public_raw: bytes) -> str:
        """Return the worker id of ``public_raw``, or raise :class:`~he_compute.errors.UntrustedWorker`."""
        ...


@dataclass(frozen=True)
class Receipt:
    """A verified receipt (only :func:`verify_receipt` returns one)."""

    job_id: str
    model_id: str
    key_id: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    worker_id: str
    public_key: bytes
    timings: dict[str, int]
    raw: dict[str, Any]

    @property
    def worker(self) -> str:
        """Short worker id, for messages."""
        return short_id(self.worker_id)


def _message(body: Mapping[str, Any]) -> bytes:
    return _DOMAIN + canonical({k: v for k, v in body.items() if k != "sig"})


def sign_receipt(identity: Signer, *, job_id: str, model_id: str, key_id: str, inputs: Iterable[str],
                 outputs: Iterable[str], timings: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Build and sign the receipt of one completed job; timings are integer milliseconds."""
    body: dict[str, Any] = {
        "v": RECEIPT_VERSION, "type": RECEIPT_TYPE, "job": job_id, "model_id": model_id, "key_id": key_id,
        "inputs": list(inputs), "outputs": list(outputs), "worker": identity.worker_id,
        "public_key": base64.b64encode(identity.public_raw).decode(),
        "timings": {k: int(v) for k, v in (timings or {}).items()},
    }
    body["sig"] = base64.b64encode(identity.sign(_message(body))).decode()
    return body


def _digests(value: Any, name: str, who: str | None) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(d, str) and _DIGEST.fullmatch(d) for d in value):
        raise ReceiptError(f"receipt field {name!r} is not a list of sha256 digests", who)
    return tuple(value)


def _b64(value: Any, name: str, who: str | None) -> bytes:
    try:
        return base64.b64decode(value, validate=True) if isinstance(value, str) else b""
    except (binascii.Error, ValueError):
        raise ReceiptError(f"receipt field {name!r} is not base64", who) from None


def _parse(receipt: Any) -> Receipt:
    if not isinstance(receipt, dict):
        raise ReceiptError("the result carries no receipt (a JSON object was expected)")
    who = short_id(receipt["worker"]) if isinstance(receipt.get("worker"), str) else None
    if receipt.get("type") != RECEIPT_TYPE or receipt.get("v") != RECEIPT_VERSION:
        raise ReceiptError(f"unsupported receipt {receipt.get('type')!r} v{receipt.get('v')!r}: "
                           f"this client reads {RECEIPT_TYPE} v{RECEIPT_VERSION}", who)
    if set(receipt) != _FIELDS:
        extra, missing = sorted(set(receipt) - _FIELDS), sorted(_FIELDS - set(receipt))
        raise ReceiptError(f"receipt fields do not match v{RECEIPT_VERSION} (missing {missing}, unknown {extra})", who)
    for name in ("job", "model_id", "key_id", "worker"):
        if not isinstance(receipt[name], str) or not receipt[name]:
            raise ReceiptError(f"receipt field {name!r} must be a non-empty string", who)
    timings = receipt["timings"]
    if not isinstance(timings, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in timings.values()):
        raise ReceiptError("receipt field 'timings' must map names to integer milliseconds", who)
    public = _b64(receipt["public_key"], "public_key", who)
    if len(public) != 32:
        raise ReceiptError("receipt field 'public_key' is not a 32-byte Ed25519 key", who)
    return Receipt(receipt["job"], receipt["model_id"], receipt["key_id"], _digests(receipt["inputs"], "inputs", who),
                   _digests(receipt["outputs"], "outputs", who), receipt["worker"], public, dict(timings),
                   dict(receipt))


def verify_receipt(receipt: Any, *, expected: Mapping[str, Any] | None = None,
                   allowed: KeyPolicy | None = None) -> Receipt:
    """Check ``receipt`` and return it parsed; raise :class:`ReceiptError` on any problem.

    ``expected`` maps any of ``job_id``, ``model_id``, ``key_id``, ``inputs``,
    ``outputs``, ``worker_id`` to the value the receipt must carry.  With
    ``allowed``, the signer must be on the allow-list
    (:class:`~he_compute.errors.UntrustedWorker` otherwise).  The signature is checked
    before anything else is compared, so an edited field reads as a bad
    signature.
    """
    expected = dict(expected or {})
    unknown = set(expected) - set(_EXPECTABLE)
    if unknown:
        raise ValueError(f"verify_receipt cannot check {sorted(unknown)}; it checks {sorted(_EXPECTABLE)}")
    r = _parse(receipt)
    if fingerprint(r.public_key) != r.worker_id:
        raise ReceiptError(f"receipt names worker {r.worker} but carries another worker's public key", r.worker)
    signature = _b64(receipt["sig"], "sig", r.worker)
    verify_signature(r.public_key, signature, _message(receipt))
    if allowed is not None:
        allowed.check(r.public_key)
    for name, want in expected.items():
        got = receipt[_EXPECTABLE[name]]
        want = list(want) if isinstance(want, (list, tuple)) else want
        if got != want:
            raise ReceiptError(f"receipt from worker {r.worker} has {name} {str(got)[:40]!r}, expected "
                               f"{str(want)[:40]!r}", r.worker)
    return r
