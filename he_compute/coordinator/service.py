"""What the coordinator does, without HTTP: each tenant steers its own jobs, each worker only its own leases.

:class:`Coordinator` owns the queue engine, the blob store, its records
(:class:`~.state.State`) and one audit log per tenant.  Its methods take an
already authenticated caller (a :class:`~.state.Tenant` or a
:class:`~.state.WorkerRecord`; :mod:`.auth` does that) and enforce scope:

* a tenant's job tags are prefixed with its name inside the queue, so replica
  groups of two tenants never meet; a job of another tenant reads exactly like
  a job that does not exist;
* a worker claims under its own key and operator (never names it chooses), only
  plain devices or jobs routed to itself; it can touch a job only while the
  queue says the job runs under its key, and the engine checks the lease token;
* quotas: jobs in flight and bytes stored per tenant; a cap on each blob.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import secrets
import time
from pathlib import Path
from typing import Any, Iterable

from ..errors import AuthError, BlobNotFound, FormatError, LimitExceeded, QueueError
from ..formats.task import Result
from ..transport import blobs as blob_stores
from ..transport import queue as queues
from ..transport.audit import AuditLog
from ..transport.locations import is_redis, path_of, redis_key, scheme_of
from ..transport.queue import TERMINAL, Job, JobState, Lease, routed_device
from .blobs import Blobs
from .config import Settings
from .kv import RedisKV, SqliteKV
from .state import State, Tenant, WorkerRecord
from anyio import to_thread

from .storage import MAX_AUDIT_LINE, AuditConflict, QuotaExceeded, Storage, spec_blobs

__all__ = ["MAX_AUDIT_LINE", "AuditConflict", "Coordinator", "NoSuchJob", "NotYourLease", "QuotaExceeded"]

_DEVICE = re.compile(r"[a-z0-9_]{1,16}")
_ROUTED = re.compile(r"[a-z0-9_]{1,16}(@[0-9a-f]{16})?")


class NoSuchJob(QueueError):
    """No job of this id that the caller may see (HTTP 404)."""


def _job_id(job_id: str) -> str:
    try:
        return queues.check_job_id(job_id)
    except QueueError:
        raise NoSuchJob(f"no job {str(job_id)[:64]!r}") from None


class NotYourLease(AuthError):
    """A worker touched a job that does not run under its key (never was, or was handed to another)."""


MAX_STATUS_IDS = 500
"""Job ids one batch-status request may name (a verifier asks in pages of this many)."""

POLL_S = 0.5
"""How often a waiting claim looks at the queue again (a long poll's added latency at most)."""


class LongPolls:
    """Waiting claims per worker key and per operator, each capped: a key cannot hold many.

    The slots live in the coordinator's store (a sorted set per key, each slot scored by when it lapses), so
    several coordinator processes over one Redis hold a key to one cap, not one each; a slot whose process
    died lapses on its own.  A slot is taken first and counted after, so two claims racing for the last
    slot may both be refused, never both admitted."""

    GRACE_S = 30.0

    def __init__(self, kv: Any, per_worker: int, per_operator: int):
        self.kv = kv
        self.caps = {"w": per_worker, "o": per_operator}

    def enter(self, worker: WorkerRecord, hold_s: float) -> str | None:
        """Take one waiting slot for ``worker`` (and its operator) for ``hold_s``; ``None`` when either is full."""
        slot, now, taken = secrets.token_hex(8), time.time(), []
        for kind, who in (("w", worker.worker_id), ("o", worker.operator)):
            key = f"polls:{kind}:{who}"
            self.kv.zprune(key, now)
            self.kv.zadd(key, slot, now + hold_s + self.GRACE_S)
            taken.append(key)
            if len(self.kv.zrange(key, now, self.caps[kind] + 1)) > self.caps[kind]:
                for k in taken:
                    self.kv.zrem(k, slot)
                return None
        return slot

    def leave(self, worker: WorkerRecord, slot: str) -> None:
        """Give the slot back."""
        for kind, who in (("w", worker.worker_id), ("o", worker.operator)):
            self.kv.zrem(f"polls:{kind}:{who}", slot)


class Coordinator(Storage):
    """The coordinator's engines and rules; every method is safe to call from many threads and processes."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.q = queues.connect(settings.queue, lease_s=settings.lease_s)
        store = blob_stores.connect(settings.blobs)
        self.kv = RedisKV(settings.state) if is_redis(settings.state) else SqliteKV(path_of(settings.state))
        self.state = State(self.kv)
        # A file store adopts uploads by rename, so they are received on its own filesystem.
        incoming = (Path(store.root) / ".incoming") if hasattr(store, "root") else Path(settings.data) / "incoming"
        self.blobs = Blobs(store, incoming, self.kv)
        self._audit: dict[str, AuditLog] = {}
        self._polls = LongPolls(self.kv, settings.long_polls_per_worker, settings.long_polls_per_operator)
        self.kv.hsetnx("secret", "labels", secrets.token_hex(32))  # keys the operator labels tenants see
        self._label_key = bytes.fromhex(self.kv.hget("secret", "labels") or "")
        self.limits: Any = None  # request rates (set by the app: see auth.RateLimits)
        # Kept by auth._verify: a worker id is its key's fingerprint, so a key looked up once never goes stale,
        # and a revocation is for ever (revoke_worker never undoes one).
        self.worker_keys: dict[str, bytes] = {}
        self.revoked_ids: set[str] = set()

    # -- tenants: jobs -----------------------------------------------------------------------------------------

    def _tag(self, tenant: Tenant, value: str | None) -> str | None:
        return None if value is None else f"{tenant.name}/{value}"

    def _view(self, tenant: Tenant, job: Job) -> Job:
        """The job as its tenant sees it: tags without the tenant prefix."""
        prefix = f"{tenant.name}/"
        job.group = job.group[len(prefix):] if job.group and job.group.startswith(prefix) else job.group
        job.run = job.run[len(prefix):] if job.run and job.run.startswith(prefix) else job.run
        return job

    def submit(self, tenant: Tenant, spec: dict[str, Any], *, device: str, max_attempts: int, group: str | None,
               run: str | None, idempotency: str | None = None) -> str:
        """Queue a job for ``tenant`` (within its jobs-in-flight quota); a repeated idempotency key returns the first id."""
        if idempotency and (done := self.state.submitted(tenant.name, idempotency)):
            return done
        if not isinstance(device, str) or not _ROUTED.fullmatch(device):
            raise FormatError(f"{device[:40]!r} is not a device: use cpu, cuda or DEVICE@<worker short id>")
        self._check_quota(tenant)
        for digest in sorted(spec_blobs(spec)):
            # Absent and another tenant's read alike: the spec is refused before any worker could fetch it.
            if not self.state.owns_blob(tenant.name, digest):
                raise BlobNotFound(f"the job names blob {digest[:19]}, which is not in your namespace: upload it "
                                   "first (hec run does)")
        job_id = self.q.submit(spec, device=device, max_attempts=max_attempts, group=self._tag(tenant, group),
                               run=self._tag(tenant, run))
        self.state.own_job(job_id, tenant.name, time.time())
        if idempotency:
            self.state.remember_submit(tenant.name, idempotency, job_id)
        return job_id

    def _check_quota(self, tenant: Tenant) -> None:
        if self.state.live_count(tenant.name) < tenant.max_jobs:
            return
        # Jobs can end without the coordinator seeing it (the queue reaps dead workers' leases): look again.
        for job_id in self.state.live_jobs(tenant.name):
            try:
                ended = self.q.status(job_id).state in TERMINAL
            except QueueError:
                ended = True
            if ended:
                self.state.ended(tenant.name, job_id)
        if self.state.live_count(tenant.name) >= tenant.max_jobs:
            raise QuotaExceeded(f"tenant {tenant.name} has {tenant.max_jobs} jobs in flight, its quota: wait for "
                                "some to finish or ask the operator for a larger quota")

    def status(self, tenant: Tenant, job_id: str) -> Job:
        """One of the tenant's jobs; another tenant's job reads as absent."""
        if self.state.job_owner(_job_id(job_id)) != tenant.name:
            raise NoSuchJob(f"no job {job_id}: list your jobs with hec jobs")
        return self._view(tenant, self.q.status(job_id))

    def statuses(self, tenant: Tenant, job_ids: list[str]) -> dict[str, Job]:
        """Those of ``job_ids`` that are the tenant's jobs, read in one batch; any other id (another tenant's,
        absent or malformed) is left out, so the answer says nothing about jobs the tenant does not own."""
        if len(job_ids) > MAX_STATUS_IDS:
            raise LimitExceeded(f"{len(job_ids)} job ids in one status request, over {MAX_STATUS_IDS}: ask in pages")
        valid = []
        for job_id in job_ids:
            try:
                valid.append(_job_id(job_id))
            except NoSuchJob:
                continue
        mine = [j for j, owner in zip(valid, self.state.job_owners(valid)) if owner == tenant.name]
        return {i: self._view(tenant, job) for i, job in self.q.statuses(mine).items()}

    def jobs(self, tenant: Tenant, state: JobState | None, limit: int, run: str | None,
             since: float | None) -> list[Job]:
        """The tenant's jobs, oldest first."""
        if run is not None:
            found = self.q.jobs(state, limit, run=self._tag(tenant, run), since=since)
            return [self._view(tenant, j) for j in found]
        out = []
        for job_id in self.state.tenant_jobs(tenant.name, since, 10**9):
            try:
                job = self.q.status(job_id)
            except QueueError:
                continue
            if state is None or job.state is state:
                out.append(self._view(tenant, job))
                if len(out) >= limit:
                    break
        return out

    def cancel(self, tenant: Tenant, job_id: str) -> bool:
        """Cancel one of the tenant's jobs."""
        self.status(tenant, job_id)
        done = self.q.cancel(job_id)
        self.state.ended(tenant.name, job_id)
        return done

    def flag(self, tenant: Tenant, job_id: str, worker_id: str) -> None:
        """A tenant's verifier rejected the result ``worker_id`` gave for its job (shown to the operator)."""
        job = self.status(tenant, job_id)
        # Only the worker whose result the tenant's job holds, and once per job: a tenant cannot run up any
        # worker's count with reports about jobs that worker never touched, or with the same report again.
        if job.worker == worker_id and job.state is JobState.DONE:
            self.state.flag_once(job_id, worker_id)

    # -- workers -----------------------------------------------------------------------------------------------

    def _devices(self, worker: WorkerRecord, devices: Iterable[str]) -> list[str]:
        """Plain devices, or jobs routed to this worker; a route to anyone else is refused."""
        out = []
        for d in devices:
            base = d.split("@", 1)[0]
            if not _DEVICE.fullmatch(base) or (d != base and d != routed_device(base, worker.worker_id)):
                raise AuthError(f"device {d[:60]!r}: a worker claims plain devices and jobs routed to itself only")
            out.append(d)
        if not out or len(out) > 16:
            raise FormatError("claim between 1 and 16 devices")
        return out

    async def long_poll(self, worker: WorkerRecord, devices: list[str], block_s: float) -> Lease | None:
        """Claim, waiting up to ``block_s`` for work without holding a thread while it waits (the event loop
        sleeps between tries); a key or operator already holding its share of waiting claims
        (``long_polls_per_worker`` / ``_per_operator``) gets an immediate answer, empty if nothing is queued."""
        lease = await to_thread.run_sync(self.claim, worker, devices, 0.0)
        return lease if lease is not None else await self.wait_for_work(worker, devices, block_s)

    async def wait_for_work(self, worker: WorkerRecord, devices: list[str], block_s: float) -> Lease | None:
        """:meth:`long_poll` after its first try found nothing (the claim route makes that try in the thread that
        admits the worker)."""
        lease: Lease | None = None
        wait = max(0.0, min(float(block_s), self.settings.max_block_s))
        if wait <= 0:
            return None
        slot = await to_thread.run_sync(self._polls.enter, worker, wait)
        if slot is None:
            return None
        try:
            deadline = time.monotonic() + wait
            while lease is None and (left := deadline - time.monotonic()) > 0:
                await asyncio.sleep(min(POLL_S, left))
                lease = await to_thread.run_sync(self.claim, worker, devices, 0.0, False)
        finally:
            # In the loop, not a thread: an await here could be cancelled with the request and leak the slot.
            self._polls.leave(worker, slot)
        return lease

    def claim(self, worker: WorkerRecord, devices: Iterable[str], block_s: float, seen: bool = True) -> Lease | None:
        """A lease on the oldest job for ``devices``, under this worker's key and operator."""
        devs = self._devices(worker, devices)
        wait = max(0.0, min(float(block_s), self.settings.max_block_s))
        lease = self.q.claim(worker.worker_id, devices=devs, block_s=wait, operator=worker.operator)
        if seen or lease is not None:
            self.state.claimed(worker.worker_id, got=lease is not None, seen=seen)
        if lease is not None:
            lease.job.group = lease.job.run = None  # the worker learns nothing about tenants or runs
        return lease

    def held(self, worker: WorkerRecord, job_id: str) -> Job:
        """The job, if it runs under this worker's key now; :class:`NotYourLease` otherwise."""
        try:
            job = self.q.status(_job_id(job_id))
        except QueueError:
            raise NotYourLease(f"job {job_id} is not leased to this worker") from None
        if job.worker != worker.worker_id or job.state is not JobState.RUNNING:
            raise NotYourLease(f"job {job_id} is not leased to this worker")
        return job

    def _lease(self, worker: WorkerRecord, job_id: str, token: str) -> Lease:
        # The engine checks the token; the stream is where a job of this device was queued (Redis engine).
        job = self.held(worker, job_id)
        return Lease(job=job, token=str(token), worker=worker.worker_id,
                     ref={"stream": redis_key("stream", job.device), "msg": ""})

    def heartbeat(self, worker: WorkerRecord, job_id: str, token: str, progress: dict[str, Any] | None) -> bool:
        """Extend this worker's lease."""
        return self.q.heartbeat(self._lease(worker, job_id, token), progress)

    def complete(self, worker: WorkerRecord, job_id: str, token: str, result: Any) -> bool:
        """Record the result of this worker's lease; its outputs must be blobs in the job's tenant's namespace."""
        lease = self._lease(worker, job_id, token)
        parsed = Result.from_json(result)
        tenant = self.state.job_owner(job_id) or ""
        missing = self.state.not_owned(tenant, list(parsed.outputs))
        if missing:
            raise FormatError(f"result names {len(missing)} output blob(s) never uploaded for this job: upload first")
        accepted = self.q.complete(lease, result)
        if accepted:  # the tenant may now see this operator's name; the job is off its quota
            self.state.completed(tenant, job_id, worker.worker_id, worker.operator)
        return accepted

    def fail(self, worker: WorkerRecord, job_id: str, token: str, error: str, retry: bool) -> JobState:
        """Report this worker's lease failed; ``retry`` is the worker's say and is not heeded: whether a job is
        tried again is the queue's decision (within its attempt cap) and the client's, never a stranger's."""
        state = self.q.fail(self._lease(worker, job_id, token), str(error)[:4000], retry=True)
        if state is JobState.FAILED:
            self.state.ended(self.state.job_owner(job_id) or "", job_id)
        self.state.count(worker.worker_id, "failed")
        return state

    def release(self, worker: WorkerRecord, job_id: str, token: str) -> None:
        """Give this worker's lease back unrun."""
        self.q.release(self._lease(worker, job_id, token))

    def readable(self, worker: WorkerRecord, job_id: str, digest: str) -> None:
        """Allow the read only if this worker's lease names ``digest``."""
        if digest not in spec_blobs(self.held(worker, job_id).spec):
            raise AuthError(f"blob {digest[:19]} is not named by job {job_id}: a worker reads only its lease's blobs")
        if not self.state.owns_blob(self.state.job_owner(job_id) or "", digest):
            raise BlobNotFound(f"blob {digest[:19]} is no longer in the job's tenant's namespace")

    def operator_labels(self, tenant: Tenant) -> dict[str, str]:
        """Admitted workers and the operator each answers to, as ``tenant`` may see them: the operator's name
        if it ran one of the tenant's jobs, else a label of this tenant's own (a keyed hash: equal for one
        operator, so replicas still count one vote per operator, unrelated across tenants)."""
        ran = self.kv.hgetall(f"ran:{tenant.name}")

        def label(operator: str) -> str:
            if operator in ran:
                return operator
            return "op-" + hmac.new(self._label_key, f"{tenant.name}\0{operator}".encode(), "sha256").hexdigest()[:16]

        return {rec.worker_id: label(rec.operator) for rec, _ in self.state.workers() if not rec.revoked}

    # -- the operator ------------------------------------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        """Jobs by state, throughput, workers and dead letters, for the status page."""
        counts: dict[str, int] = {s.value: 0 for s in JobState}
        for job in self.q.jobs(limit=10**9):
            counts[job.state.value] += 1
        per_min = self.state.done_per_minute(5)
        workers = [{"worker": rec.worker_id, "operator": rec.operator, "how": rec.how, "revoked": rec.revoked,
                    "seen": stats.get("seen", 0.0), "claimed": int(stats.get("claimed", 0)),
                    "done": int(stats.get("done", 0)), "failed": int(stats.get("failed", 0)),
                    "flagged": int(stats.get("flagged", 0))} for rec, stats in self.state.workers()]
        dead = [{"job": j.id, "error": (j.error or "")[:200], "attempts": j.attempts}
                for j in self.q.jobs(JobState.FAILED, limit=50)]
        return {"queue": scheme_of(self.settings.queue), "blobs": scheme_of(self.settings.blobs), "jobs": counts,
                "done_per_minute": per_min, "workers": sorted(workers, key=lambda w: -w["seen"]), "dead": dead,
                "tenants": [t.name for t in self.state.tenants()]}

    def close(self) -> None:
        """Close the engines."""
        for log in self._audit.values():
            log.close()
        self.q.close()
        self.blobs.store.close()
        self.kv.close()
