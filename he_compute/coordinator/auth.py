"""Who is calling: the FastAPI dependencies that every route declares (a route without one stands out in review).

* :func:`tenant`: ``Authorization: Bearer <tenant token>``;
* :func:`worker`: a request signed by an admitted worker key (see
  :mod:`he_compute.transport.remote.wire`): known key, not revoked, fresh
  timestamp, unused nonce, body digest matching, within its rate limit (the
  route gets the caller only through :class:`SignedWorker`, whose ``run``
  checks all that in the thread that then does the route's work);
  :func:`worker_upload` is the same for a streamed upload, whose digest the
  route checks as the bytes arrive;
* :func:`enrolling`: an enrolment token plus a request signed by the key being
  enrolled (proof that the caller holds it);
* :func:`operator`: the status page's token, as a bearer token or the cookie
  the login form sets.

Failures raise :class:`Unauthenticated` (401: no or bad credentials) or
:class:`~he_compute.errors.AuthError` (403: known caller, out of scope); the
app maps them to status codes at the edge.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Any, Callable, TypeVar

from fastapi import Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from ..errors import AuthError, FormatError, LimitExceeded, ReceiptError
from ..formats.digests import sha256_hex
from ..formats.signing import fingerprint, verify_signature
from ..transport.remote.wire import MAX_JSON_BYTES, MAX_SKEW_S, parse_signature_headers, signed_message
from .state import Tenant, WorkerRecord

COOKIE = "hec_operator"


class Unauthenticated(AuthError):
    """No credentials, or credentials the coordinator does not know (HTTP 401)."""


class RateLimited(LimitExceeded):
    """The caller is over its request rate (HTTP 429)."""


class RateLimits:
    """Per-worker and per-tenant request rates, counted in the shared Redis (or in memory when embedded)."""

    def __init__(self, storage_uri: str, worker_rate: str, tenant_rate: str):
        from limits import parse, storage, strategies

        self._limiter = strategies.FixedWindowRateLimiter(storage.storage_from_string(storage_uri))
        self._rates = {"worker": parse(worker_rate), "tenant": parse(tenant_rate)}

    def hit(self, kind: str, who: str) -> None:
        """Count one request; :class:`RateLimited` past the rate."""
        if not self._limiter.hit(self._rates[kind], kind, who):
            raise RateLimited(f"too many requests from this {kind}: slow down (limit {self._rates[kind]})")


def _coord(request: Request) -> Any:
    return request.app.state.coordinator


def _bearer(request: Request) -> str:
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def body_of(request: Request) -> bytes:
    """The request body, refused past :data:`MAX_JSON_BYTES` before it is read."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_JSON_BYTES):
        raise LimitExceeded(f"request body over {MAX_JSON_BYTES} bytes: refused")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise LimitExceeded(f"request body over {MAX_JSON_BYTES} bytes: refused")
    return bytes(body)


async def tenant(request: Request) -> Tenant:
    """The tenant whose token the request carries."""
    coord, token = _coord(request), _bearer(request)

    def check() -> Tenant:
        name = coord.state.tenant_of_token(token) if token else None
        if name is None:
            raise Unauthenticated("no valid tenant token: pass --token-file FILE (the coordinator's client.token)")
        found = coord.state.tenant(name)
        if found is None:
            raise Unauthenticated("this token's tenant was removed")
        coord.limits.hit("tenant", found.name)
        return found

    return await run_in_threadpool(check)


def _refuse(coord: Any, worker_id: str, record: WorkerRecord | None) -> WorkerRecord:
    """The record, if it admits requests; :class:`AuthError` for a key never admitted or revoked."""
    if record is None:
        raise AuthError(f"worker {worker_id[:16]} is not admitted: enrol it with an enrolment token "
                        "(hec worker --token-file) or have the operator allow its key")
    if record.revoked:
        coord.revoked_ids.add(worker_id)  # revocation is for ever: later requests are refused before any lookup
        raise AuthError(f"worker {worker_id[:16]} was revoked by the operator")
    return record


def _check_signature(request: Request, public_raw: bytes, signed: tuple[str, int, str, str, bytes]) -> None:
    worker_id, ts, nonce, digest, sig = signed
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    try:
        verify_signature(public_raw, sig, signed_message(request.method, path, digest, ts, nonce, worker_id))
    except ReceiptError:
        raise Unauthenticated(f"bad request signature from worker {worker_id[:16]}") from None


def _verify(coord: Any, request: Request, public_raw: bytes | None) -> tuple[WorkerRecord | None, str, str]:
    """Check the signature headers; return ``(record or None, worker id, signed body digest)``.

    A worker id is the fingerprint of its key, so the keys of admitted workers are kept in the process once
    looked up: a known key's signature is checked first, and its record (revoked or not) is read in the same
    round trip that spends the nonce.  Only a correctly signed request ever spends a nonce, so strangers
    cannot fill the nonce store."""
    try:
        signed = parse_signature_headers(request.headers)
    except FormatError as exc:
        raise Unauthenticated(str(exc)) from None
    worker_id, ts, nonce, digest, _ = signed
    if abs(time.time() - ts) > MAX_SKEW_S:
        raise Unauthenticated(f"stale request (timestamp {ts} is more than {MAX_SKEW_S}s off): check the clock")
    record = None
    known = coord.worker_keys.get(worker_id) if public_raw is None else None
    if public_raw is None and worker_id in coord.revoked_ids:
        raise AuthError(f"worker {worker_id[:16]} was revoked by the operator")
    if known is not None:
        _check_signature(request, known, signed)
        found, fresh = coord.state.worker_and_nonce(worker_id, nonce, 2 * MAX_SKEW_S)
        record = _refuse(coord, worker_id, found)
    else:
        if public_raw is None:
            record = _refuse(coord, worker_id, coord.state.worker(worker_id))
            public_raw = record.public_raw
        elif fingerprint(public_raw) != worker_id:
            raise Unauthenticated("the signing key is not the key being enrolled")
        _check_signature(request, public_raw, signed)
        fresh = coord.state.fresh_nonce(worker_id, nonce, 2 * MAX_SKEW_S)
        if record is not None:
            coord.worker_keys[worker_id] = record.public_raw
    if not fresh:
        raise Unauthenticated("replayed request (nonce already used): refused")
    coord.limits.hit("worker", worker_id)
    return record, worker_id, digest


M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


class SignedWorker:
    """A request that claims to come from a worker, with its body (bounded).  Who sent it is known only through
    :meth:`run` or :meth:`admit`, which first check the signature, the key (admitted, not revoked), the nonce,
    the rate and the body's digest; :meth:`run` does the route's work in the same thread as that check, so a
    worker's request costs one hand-off to the thread pool, not two."""

    def __init__(self, request: Request, body: bytes):
        self._request, self.body = request, body

    def _admit(self) -> WorkerRecord:
        record, _, digest = _verify(_coord(self._request), self._request, None)
        if sha256_hex(self.body) != digest:
            raise Unauthenticated("the body does not match the signed digest: refused")
        assert record is not None
        return record

    async def admit(self) -> WorkerRecord:
        """The admitted worker (see the class docstring)."""
        return await run_in_threadpool(self._admit)

    async def run(self, model: type[M], work: Callable[[WorkerRecord, M], T]) -> T:
        """Admit the caller, parse the body as ``model`` (only then: a stranger learns nothing of the schema), and
        return ``work(record, body)``, all in one thread of the pool."""
        def go() -> T:
            record = self._admit()
            return work(record, model.model_validate_json(self.body))

        return await run_in_threadpool(go)


async def worker(request: Request) -> SignedWorker:
    """A worker's request with its body; admitted by :meth:`SignedWorker.run` or :meth:`SignedWorker.admit`."""
    return SignedWorker(request, await body_of(request))


async def worker_upload(request: Request) -> WorkerRecord:
    """An admitted worker streaming a blob: the signed digest must be the blob's own (checked as it arrives)."""
    record, _, digest = await run_in_threadpool(_verify, _coord(request), request, None)
    if request.path_params.get("digest") != f"sha256:{digest}":
        raise Unauthenticated("a streamed upload is signed with the digest of the blob it carries")
    assert record is not None
    return record


async def enrolling(request: Request) -> tuple[str, bytes, str]:
    """``(operator, public key, token)`` for a new worker presenting an enrolment token and signing with the new
    key; admitting a new key spends one of the token's uses (an expired, used-up or burnt token admits none)."""
    coord, token = _coord(request), _bearer(request)
    body = await body_of(request)

    def check() -> tuple[str, bytes, str]:
        meaning = coord.state.token_meaning(token) if token else None
        if not meaning or not meaning.startswith("enroll:"):
            raise Unauthenticated("no valid enrolment token: pass --token-file FILE (the coordinator's enroll.token)")
        try:
            public_raw = base64.b64decode(json.loads(body)["public_key"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise Unauthenticated("enrolment needs {\"public_key\": <base64 Ed25519 key>}") from None
        if len(public_raw) != 32:
            raise Unauthenticated("enrolment needs a 32-byte Ed25519 public key")
        _, worker_id, digest = _verify(coord, request, public_raw)
        if sha256_hex(body) != digest:
            raise Unauthenticated("the body does not match the signed digest: refused")
        if coord.state.worker(worker_id) is None and not coord.state.spend_enroll_token(token):
            raise Unauthenticated("no valid enrolment token (used up, expired or revoked): ask the operator for "
                                  "a new one (hec coordinator enroll-token)")
        return meaning.split(":", 1)[1], public_raw, token

    return await run_in_threadpool(check)


async def operator(request: Request) -> None:
    """The operator of the status page (bearer token or login cookie)."""
    coord = _coord(request)
    token = _bearer(request) or request.cookies.get(COOKIE, "")

    def check() -> None:
        meaning = coord.state.token_meaning(token) if token else None
        if meaning != "operator:":
            raise Unauthenticated("the status page needs the operator token (DATA/operator.token)")

    await run_in_threadpool(check)
