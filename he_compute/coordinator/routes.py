"""The JSON routes: one router for tenants (``/v1/jobs``, ``/v1/blobs``, ``/v1/audit``), one for workers
(``/v1/enroll``, ``/v1/worker/...``).  Every route declares its caller as a dependency from :mod:`.auth`.

Bodies are read (bounded) by the dependency that authenticates them, then
parsed into the typed models below; blocking engine calls run in the thread
pool.  Blob bytes stream in both directions (or go by presigned URL with S3).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ..formats.digests import check_digest
from ..transport.queue import DEFAULT_MAX_ATTEMPTS, JobState
from ..transport.remote.wire import API, H_IDEMPOTENCY, job_to_wire
from . import auth
from .auth import SignedWorker
from .service import MAX_STATUS_IDS
from .state import Tenant, WorkerRecord

clients = APIRouter(prefix=API)
workers = APIRouter(prefix=API)


class Submit(BaseModel):
    spec: dict[str, Any]
    device: str = Field("cpu", max_length=40)
    max_attempts: int = Field(DEFAULT_MAX_ATTEMPTS, ge=1, le=100)
    group: str | None = Field(None, max_length=128)
    run: str | None = Field(None, max_length=128)


class Statuses(BaseModel):
    ids: list[str] = Field(max_length=MAX_STATUS_IDS)


class Size(BaseModel):
    size: int = Field(ge=0)


class Commit(BaseModel):
    staging: str = Field(max_length=64)


class AuditLine(BaseModel):
    line: str
    head: str


class Flag(BaseModel):
    worker: str = Field(min_length=64, max_length=64)


class Claim(BaseModel):
    devices: list[str] = Field(min_length=1, max_length=16)
    block_s: float = Field(0.0, ge=0, le=600)


class Held(BaseModel):
    token: str = Field(max_length=64)


class Beat(Held):
    progress: dict[str, Any] | None = None


class Done(Held):
    result: dict[str, Any]


class Failed(Held):
    error: str = Field(max_length=20_000)
    retry: bool = True


def _coord(request: Request) -> Any:
    return request.app.state.coordinator


async def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await run_in_threadpool(fn, *args, **kwargs)


def _send(coord: Any, digest: str) -> Response:
    """Stream a blob, or redirect to a presigned URL for it."""
    kind, what = coord.blobs.read(digest)
    if kind == "url":
        return RedirectResponse(what, status_code=303)
    if kind == "path":
        return FileResponse(what, media_type="application/octet-stream")
    return StreamingResponse(what, media_type="application/octet-stream")


async def _receive(coord: Any, request: Request, digest: str, limit: int) -> int:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        from ..errors import LimitExceeded

        raise LimitExceeded(f"upload of {int(declared)} bytes is over its {limit}-byte cap: refused")
    return await coord.blobs.receive(digest, request.stream(), limit)


# -- tenants -----------------------------------------------------------------------------------------------------

@clients.get("/tenant")
async def whoami(request: Request, tenant: Tenant = Depends(auth.tenant)) -> dict[str, Any]:
    coord = _coord(request)
    return {"tenant": tenant.name, "max_jobs": tenant.max_jobs, "max_bytes": tenant.max_bytes,
            "bytes": await _call(coord.state.usage, tenant.name), "presigned": coord.blobs.presigned,
            "lease_s": coord.settings.lease_s}


@clients.post("/jobs")
async def submit(request: Request, tenant: Tenant = Depends(auth.tenant)) -> dict[str, Any]:
    body = Submit.model_validate_json(await auth.body_of(request))
    key = request.headers.get(H_IDEMPOTENCY)
    job_id = await _call(_coord(request).submit, tenant, body.spec, device=body.device, max_attempts=body.max_attempts,
                         group=body.group, run=body.run, idempotency=key[:64] if key else None)
    return {"id": job_id}


@clients.get("/jobs")
async def list_jobs(request: Request, state: str | None = None, limit: int = 1000, run: str | None = None,
                    since: float | None = None, tenant: Tenant = Depends(auth.tenant)) -> dict[str, Any]:
    found = await _call(_coord(request).jobs, tenant, JobState(state) if state else None, max(0, limit), run, since)
    return {"jobs": [job_to_wire(j) for j in found]}


@clients.post("/jobs/statuses")
async def job_statuses(request: Request, tenant: Tenant = Depends(auth.tenant)) -> dict[str, Any]:
    """The tenant's jobs among ``ids`` in one request (a verifier's poll); other ids are simply absent."""
    body = Statuses.model_validate_json(await auth.body_of(request))
    found = await _call(_coord(request).statuses, tenant, body.ids)
    return {"jobs": {i: job_to_wire(j) for i, j in found.items()}}


@clients.get("/jobs/{job_id}")
async def job_status(request: Request, job_id: str, tenant: Tenant = Depends(auth.tenant)) -> dict[str, Any]:
    return job_to_wire(await _call(_coord(request).status, tenant, job_id))


@clients.post("/jobs/{job_id}/cancel")
async def cancel(request: Request, job_id: str, tenant: Tenant = Depends(auth.tenant)) -> dict[str, Any]:
    return {"cancelled": await _call(_coord(request).cancel, tenant, job_id)}


@clients.get("/operators")
async def operators(request: Request, tenant: Tenant = Depends(auth.tenant)) -> dict[str, Any]:
    """Which admitted workers answer to one operator, so a tenant's replicas can count one vote per operator.

    An operator that never ran one of this tenant's jobs appears under a label of this tenant's own: enough to
    group workers, nothing about who it is or how another tenant's labels line up."""
    return {"operators": await _call(_coord(request).operator_labels, tenant)}


@clients.post("/jobs/{job_id}/flag")
async def flag(request: Request, job_id: str, tenant: Tenant = Depends(auth.tenant)) -> dict[str, Any]:
    body = Flag.model_validate_json(await auth.body_of(request))
    await _call(_coord(request).flag, tenant, job_id, body.worker)
    return {"ok": True}


@clients.get("/blobs/{digest}/exists")
async def exists(request: Request, digest: str, tenant: Tenant = Depends(auth.tenant)) -> dict[str, Any]:
    check_digest(digest)
    return {"exists": await _call(_coord(request).state.owns_blob, tenant.name, digest)}


@clients.get("/blobs/{digest}")
async def download(request: Request, digest: str, tenant: Tenant = Depends(auth.tenant)) -> Response:
    coord = _coord(request)
    check_digest(digest)
    if not await _call(coord.state.owns_blob, tenant.name, digest):
        from ..errors import BlobNotFound

        raise BlobNotFound(f"blob {digest[:19]} is not in your namespace: upload it (hec run does)")
    return await _call(_send, coord, digest)


@clients.post("/blobs/{digest}/upload")
async def begin_upload(request: Request, digest: str, tenant: Tenant = Depends(auth.tenant)) -> dict[str, Any]:
    coord = _coord(request)
    check_digest(digest)
    size = Size.model_validate_json(await auth.body_of(request)).size
    if await _call(coord.state.owns_blob, tenant.name, digest):
        return {"have": True}
    await _call(coord.check_room, tenant, size)
    if coord.blobs.presigned:
        return await _call(coord.blobs.stage, f"tenant:{tenant.name}", digest, size)
    return {"put": f"{API}/blobs/{digest}"}


@clients.put("/blobs/{digest}")
async def upload(request: Request, digest: str, tenant: Tenant = Depends(auth.tenant)) -> dict[str, Any]:
    coord = _coord(request)
    check_digest(digest)
    reserved = await _call(coord.reserve_upload, tenant, request.headers.get("content-length"))
    try:
        size = await _receive(coord, request, digest, reserved)
    except BaseException:
        await _call(coord.state.release, tenant.name, reserved)
        raise
    await _call(coord.state.add_blob, tenant.name, digest, size, reserved=reserved)
    return {"size": size}


@clients.post("/blobs/{digest}/commit")
async def commit(request: Request, digest: str, tenant: Tenant = Depends(auth.tenant)) -> dict[str, Any]:
    coord = _coord(request)
    name = Commit.model_validate_json(await auth.body_of(request)).staging
    size = await _call(coord.blobs.commit, f"tenant:{tenant.name}", name, digest)
    await _call(coord.charge_committed, tenant, digest, size)
    return {"size": size}


@clients.get("/blobs")
async def list_blobs(request: Request, after: str = "", limit: int = 1000,
                     tenant: Tenant = Depends(auth.tenant)) -> dict[str, Any]:
    """The tenant's blobs, by digest, ``limit`` (at most 1000) after ``after``; a worker's result names its job."""
    rows = await _call(_coord(request).state.list_blobs, tenant.name, after[:80], max(1, min(limit, 1000)))
    return {"blobs": rows}


@clients.delete("/blobs/{digest}")
async def delete(request: Request, digest: str, tenant: Tenant = Depends(auth.tenant)) -> dict[str, Any]:
    check_digest(digest)
    return {"deleted": await _call(_coord(request).drop_blob, tenant, digest)}


@clients.get("/audit")
async def audit_lines(request: Request, start: int = 0, limit: int = 1000,
                      tenant: Tenant = Depends(auth.tenant)) -> dict[str, Any]:
    return await _call(_coord(request).audit_page, tenant, start, limit)


@clients.post("/audit")
async def audit_append(request: Request, tenant: Tenant = Depends(auth.tenant)) -> dict[str, Any]:
    body = AuditLine.model_validate_json(await auth.body_of(request))
    return {"i": await _call(_coord(request).append_audit, tenant, body.line, body.head)}


@clients.get("/audit/checkpoint")
async def audit_checkpoint(request: Request, tenant: Tenant = Depends(auth.tenant)) -> dict[str, Any]:
    log = await _call(_coord(request).audit, tenant)
    return (await _call(log.verify)).to_json()


# -- workers -----------------------------------------------------------------------------------------------------

@workers.post("/enroll")
async def enroll(request: Request, who: tuple[str, bytes, str] = Depends(auth.enrolling)) -> dict[str, Any]:
    record = await _call(_coord(request).state.admit_worker, who[1], who[0], "token", who[2])
    return {"worker": record.worker_id, "operator": record.operator}


@workers.get("/worker/hello")
async def hello(request: Request, me: SignedWorker = Depends(auth.worker)) -> dict[str, Any]:
    coord, record = _coord(request), await me.admit()
    return {"worker": record.worker_id, "operator": record.operator, "lease_s": coord.settings.lease_s,
            "presigned": coord.blobs.presigned, "gate": bool(coord.settings.gate) and not coord.blobs.presigned}


@workers.post("/worker/claim")
async def claim(request: Request, me: SignedWorker = Depends(auth.worker)) -> dict[str, Any]:
    coord = _coord(request)
    # The first try runs in the thread that admits the worker; only an empty queue makes it wait (long poll).
    record, body, lease = await me.run(Claim, lambda rec, b: (rec, b, coord.claim(rec, b.devices, 0.0)))
    if lease is None:
        lease = await coord.wait_for_work(record, body.devices, body.block_s)
    if lease is None:
        return {"lease": None}
    out = {"job": job_to_wire(lease.job), "token": lease.token}
    if coord.settings.gate and not coord.blobs.presigned:  # the job's reads go straight to the gate
        from .gate import gate_urls

        out["gate"] = await _call(gate_urls, coord, record.worker_id, lease.job)
    return {"lease": out}


@workers.post("/worker/jobs/{job_id}/heartbeat")
async def heartbeat(request: Request, job_id: str, me: SignedWorker = Depends(auth.worker)) -> dict[str, Any]:
    coord = _coord(request)
    return {"ok": await me.run(Beat, lambda rec, b: coord.heartbeat(rec, job_id, b.token, b.progress))}


@workers.post("/worker/jobs/{job_id}/complete")
async def complete(request: Request, job_id: str, me: SignedWorker = Depends(auth.worker)) -> dict[str, Any]:
    coord = _coord(request)
    return {"accepted": await me.run(Done, lambda rec, b: coord.complete(rec, job_id, b.token, b.result))}


@workers.post("/worker/jobs/{job_id}/fail")
async def fail(request: Request, job_id: str, me: SignedWorker = Depends(auth.worker)) -> dict[str, Any]:
    coord = _coord(request)
    state = await me.run(Failed, lambda rec, b: coord.fail(rec, job_id, b.token, b.error, b.retry))
    return {"state": state.value}


@workers.post("/worker/jobs/{job_id}/release")
async def release(request: Request, job_id: str, me: SignedWorker = Depends(auth.worker)) -> dict[str, Any]:
    coord = _coord(request)
    await me.run(Held, lambda rec, b: coord.release(rec, job_id, b.token))
    return {"ok": True}


@workers.get("/worker/jobs/{job_id}/blobs/{digest}")
async def worker_download(request: Request, job_id: str, digest: str,
                          me: SignedWorker = Depends(auth.worker)) -> Response:
    coord, record = _coord(request), await me.admit()
    await _call(coord.readable, record, job_id, digest)
    if coord.settings.gate and not coord.blobs.presigned:  # the gate carries the bytes, not this process
        from .gate import gate_url

        return RedirectResponse(await _call(gate_url, coord, record.worker_id, job_id, digest), status_code=303)
    return await _call(_send, coord, digest)


@workers.post("/worker/jobs/{job_id}/outputs/{digest}/upload")
async def worker_begin_upload(request: Request, job_id: str, digest: str,
                              me: SignedWorker = Depends(auth.worker)) -> dict[str, Any]:
    coord, record = _coord(request), await me.admit()
    check_digest(digest)
    size = Size.model_validate_json(me.body).size
    _, cap = await _call(coord.result_cap, record, job_id)
    if size > cap:
        from ..errors import LimitExceeded

        raise LimitExceeded(f"a result blob of {size} bytes is over what job {job_id} may still produce ({cap})")
    if coord.blobs.presigned:
        return await _call(coord.blobs.stage, f"lease:{job_id}:{record.worker_id}", digest, size)
    if coord.settings.gate:  # the result goes to the gate, not through this process
        from .gate import gate_url

        url = await _call(gate_url, coord, record.worker_id, job_id, digest, size=size)
        return {"gate": url, "headers": {"content-length": str(size)}}
    return {"put": f"{API}/worker/jobs/{job_id}/outputs/{digest}"}


@workers.put("/worker/jobs/{job_id}/outputs/{digest}")
async def worker_upload(request: Request, job_id: str, digest: str,
                        me: WorkerRecord = Depends(auth.worker_upload)) -> dict[str, Any]:
    coord = _coord(request)
    declared = request.headers.get("content-length", "")
    if not declared.isdigit():
        from ..errors import LimitExceeded

        raise LimitExceeded("a result upload must declare its Content-Length (it is charged up front)")
    reserved = int(declared)
    tenant = await _call(coord.charge_result, me, job_id, reserved)
    try:
        size = await _receive(coord, request, digest, reserved)
    except BaseException:
        await _call(coord.refund_result, me, job_id, tenant, reserved)
        raise
    await _call(coord.state.add_blob, tenant, digest, size, reserved=reserved, job=job_id)
    return {"size": size}


@workers.post("/worker/jobs/{job_id}/outputs/{digest}/commit")
async def worker_commit(request: Request, job_id: str, digest: str,
                        me: SignedWorker = Depends(auth.worker)) -> dict[str, Any]:
    coord, record = _coord(request), await me.admit()
    name = Commit.model_validate_json(me.body).staging
    await _call(coord.held, record, job_id)
    size = await _call(coord.blobs.commit, f"lease:{job_id}:{record.worker_id}", name, digest)
    try:
        tenant = await _call(coord.charge_result, record, job_id, size)
    except BaseException:
        await _call(coord._forget, digest)
        raise
    await _call(coord.state.add_blob, tenant, digest, size, reserved=size, job=job_id)
    return {"size": size}
