"""The blob gate: lease blobs served to workers by a process of their own, on URLs the coordinator signs.

Without it, on a file or Redis store, every input byte a worker reads passes through the coordinator process
(the same process that took it from the tenant).  With ``hec coordinator --gate URL`` and ``hec coordinator
gate`` serving ``URL`` over the same data directory, the coordinator checks a worker's read as before (the
worker's signature, its lease naming the blob) and answers with a redirect to the gate, so the bytes go
store -> gate -> worker and the coordinator process carries none of them; a worker's result upload gets a
signed PUT URL at the gate the same way (one digest, its exact size), and the gate charges, hashes and stores
it as the coordinator would.  S3 stores keep their presigned URLs.

A gate URL names one blob, one job, one worker and the job's attempt number (which moves on every claim, so
a URL from an earlier lease of the same job is dead), and an expiry no later than one lease period away; it is
signed with HMAC-SHA256 under a key kept in the coordinator's records (the gate opens the same records).  The
gate serves it only while the signature holds, the expiry has not passed, and the queue still says that job
runs under that worker at that attempt.  The worker checks the sha256 of what it gets and bounds its size,
as for any blob.
"""

from __future__ import annotations

import hmac
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from hashlib import sha256
from typing import Any, AsyncIterator
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..errors import AuthError, HECError, LimitExceeded
from ..formats.digests import check_digest
from ..transport.queue import Job, JobState
from ..transport.remote.wire import API
from .service import Coordinator, NotYourLease, _job_id
from .storage import spec_blobs

GATE_TTL_S = 60.0
"""The longest a gate URL works (never longer than one lease period)."""


class BadGateUrl(AuthError):
    """A gate URL that was not signed by the coordinator, was altered, or has expired (HTTP 401)."""


def gate_key(coord: Coordinator) -> bytes:
    """The HMAC key coordinator and gate share, made once in the coordinator's records."""
    coord.kv.hsetnx("secret", "gate", secrets.token_hex(32))
    return bytes.fromhex(coord.kv.hget("secret", "gate") or "")


@dataclass(frozen=True)
class GateUrl:
    """What one gate URL grants: ``verb`` (GET a blob, PUT a result of ``size`` bytes) on ``digest`` for
    ``worker``'s lease of ``job`` at ``attempt``, until ``exp`` (Unix seconds)."""

    verb: str
    digest: str
    job: str
    worker: str
    attempt: int
    exp: int
    size: int

    def mac(self, key: bytes) -> str:
        """The coordinator's HMAC over every field: change one and the URL is refused."""
        fields = ["hec-gate-v1", self.verb, self.digest, self.job, self.worker, str(int(self.attempt)),
                  str(int(self.exp)), str(int(self.size))]
        return hmac.new(key, "\n".join(fields).encode(), sha256).hexdigest()


def gate_url(coord: Coordinator, worker_id: str, job_id: str, digest: str, *, size: int | None = None) -> str:
    """A signed URL at the gate to read ``digest`` for the job ``job_id`` that runs under ``worker_id`` now, or
    with ``size``, to upload a result of exactly that many bytes for it."""
    job = coord.q.status(job_id)
    return _signed(coord, gate_key(coord), "GET" if size is None else "PUT", digest, job_id, worker_id, job.attempts,
                   int(size or 0))


def gate_urls(coord: Coordinator, worker_id: str, job: Job) -> dict[str, str]:
    """Read URLs for every blob a just-claimed job names, sent with the lease so each read goes straight to the
    gate (a read after they expire asks the coordinator again)."""
    key = gate_key(coord)
    return {d: _signed(coord, key, "GET", d, job.id, worker_id, job.attempts, 0) for d in sorted(spec_blobs(job.spec))}


def _signed(coord: Coordinator, key: bytes, verb: str, digest: str, job_id: str, worker_id: str, attempt: int,
            size: int) -> str:
    exp = int(time.time() + min(GATE_TTL_S, coord.settings.lease_s))
    query = {"job": job_id, "worker": worker_id, "attempt": attempt, "exp": exp, "size": size,
             "sig": GateUrl(verb, digest, job_id, worker_id, attempt, exp, size).mac(key)}
    return f"{coord.settings.gate.rstrip('/')}{API}/gate/{digest}?{urlencode(query)}"


def check(coord: Coordinator, key: bytes, url: GateUrl, sig: str) -> None:
    """Refuse unless the URL is the coordinator's for this verb, unexpired, and its lease still runs."""
    verb, digest, job, worker, attempt, exp = url.verb, url.digest, url.job, url.worker, url.attempt, url.exp
    check_digest(digest)
    if not hmac.compare_digest(str(sig), url.mac(key)):
        raise BadGateUrl("this gate URL was not signed by the coordinator for this blob: ask the coordinator")
    if time.time() > exp:
        raise BadGateUrl("this gate URL has expired: ask the coordinator for the blob again")
    try:
        held = coord.q.status(_job_id(job))
    except HECError:
        raise NotYourLease(f"job {job} is not leased to this worker") from None
    if held.state is not JobState.RUNNING or held.worker != worker or held.attempts != attempt:
        raise NotYourLease(f"job {job} is no longer leased to this worker under this URL's lease")
    if verb == "GET" and (digest not in spec_blobs(held.spec)
                          or not coord.state.owns_blob(coord.state.job_owner(job) or "", digest)):
        raise NotYourLease(f"blob {digest[:19]} is not one job {job} may read")


def create_gate(coord: Coordinator) -> FastAPI:
    """The gate's app: ``GET`` (a lease's blob) and ``PUT`` (a lease's result) on ``/v1/gate/{digest}``, each
    with the signed query."""
    from .app import status_of

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            coord.close()

    app = FastAPI(title="he_compute blob gate", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    key = gate_key(coord)

    @app.exception_handler(HECError)
    async def _hec(request: Request, exc: HECError) -> Any:
        status, code = (401, "gate") if isinstance(exc, BadGateUrl) else status_of(exc)
        return JSONResponse({"error": str(exc), "code": code}, status_code=status)

    @app.get(f"{API}/gate/{{digest}}")
    async def gate(digest: str, job: str, worker: str, attempt: int, exp: int, sig: str, size: int = 0) -> Response:
        await run_in_threadpool(check, coord, key, GateUrl("GET", digest, job[:64], worker[:64], attempt, exp, size),
                                sig[:64])
        kind, what = await run_in_threadpool(coord.blobs.read, digest)
        if kind == "path":
            return FileResponse(what, media_type="application/octet-stream")
        return StreamingResponse(what, media_type="application/octet-stream")

    @app.put(f"{API}/gate/{{digest}}")
    async def upload(request: Request, digest: str, job: str, worker: str, attempt: int, exp: int, size: int,
                     sig: str) -> dict[str, Any]:
        await run_in_threadpool(check, coord, key, GateUrl("PUT", digest, job[:64], worker[:64], attempt, exp, size),
                                sig[:64])
        if request.headers.get("content-length") != str(size):
            raise LimitExceeded(f"this URL takes exactly {size} bytes, with that Content-Length")
        record = await run_in_threadpool(coord.state.worker, worker)
        if record is None:
            raise NotYourLease("this worker is no longer admitted")
        tenant = await run_in_threadpool(coord.charge_result, record, job, size)
        try:
            got = await coord.blobs.receive(digest, request.stream(), size)
        except BaseException:
            await run_in_threadpool(coord.refund_result, record, job, tenant, size)
            raise
        await run_in_threadpool(lambda: coord.state.add_blob(tenant, digest, got, reserved=size, job=job))
        return {"size": got}

    return app


def serve_gate(coord: Coordinator, host: str, port: int, *, certfile: str | None, keyfile: str | None) -> None:
    """Run the gate until interrupted (uvicorn; TLS when ``certfile`` and ``keyfile`` are given)."""
    import uvicorn

    from .guard import guarded_protocol

    config = uvicorn.Config(create_gate(coord), host=host, port=port, ssl_certfile=certfile, ssl_keyfile=keyfile,
                            http=guarded_protocol(coord.settings.header_timeout_s, coord.settings.body_timeout_s,
                                                 coord.settings.min_body_rate, coord.settings.request_timeout_s),
                            log_level="warning",
                            access_log=False, server_header=False, date_header=False, timeout_keep_alive=30)
    uvicorn.Server(config).run()
