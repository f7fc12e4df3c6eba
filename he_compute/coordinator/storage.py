"""What a tenant may store, and what it is charged for: blobs, results its workers upload, its audit log.

Every byte in a tenant's namespace counts against its quota, whoever put it there:

* uploads are *reserved* before their bytes arrive (:meth:`~.state.State.reserve` adds, then checks and rolls
  back), so parallel uploads, through any number of coordinator processes, can never pass the quota together;
* a worker's result blobs are charged to the job's tenant, within the quota, and within a budget per lease
  (one result of at most ``max_result_mb`` per input of the job), and are listed with their job
  (``GET /v1/blobs``) so that the tenant can see and delete them;
* audit lines count as they are appended;
* a deleted blob leaves the disk as soon as no tenant's namespace holds it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import FormatError, LimitExceeded, QueueError
from ..formats.audit import next_entry
from ..formats.canonical import canonical
from ..transport.audit import AuditLog, JsonlStore, RedisStore
from ..transport.locations import coordinator_key, is_redis
from .state import Tenant, WorkerRecord

MAX_AUDIT_LINE = 1024 * 1024
"""The longest audit entry a tenant may append."""
AUDIT_PAGE = 1000
"""The most audit lines one ``GET /v1/audit`` returns (the client reads page by page)."""


class QuotaExceeded(LimitExceeded):
    """A tenant is at one of its quotas (jobs in flight, bytes stored)."""


class AuditConflict(QueueError):
    """Another append reached the tenant's audit log first: read its end again and retry (HTTP 409)."""


def spec_blobs(spec: Any) -> set[str]:
    """The blob digests a job spec names (what its worker may read)."""
    if not isinstance(spec, dict):
        return set()
    names = [spec.get("server"), spec.get("keys")]
    inputs = spec.get("inputs")
    names += inputs if isinstance(inputs, list) else []
    return {n for n in names if isinstance(n, str)}


def _full(tenant: str, max_bytes: int) -> QuotaExceeded:
    return QuotaExceeded(f"tenant {tenant} would pass its {max_bytes}-byte storage quota: delete blobs "
                         "(GET /v1/blobs lists them, results included) or ask the operator for more")


class Storage:
    """The storage half of :class:`~.service.Coordinator` (which provides the attributes below)."""

    settings: Any
    state: Any
    kv: Any
    blobs: Any
    _audit: dict[str, AuditLog]

    def held(self, worker: WorkerRecord, job_id: str) -> Any: ...  # provided by the Coordinator

    # -- tenant uploads ----------------------------------------------------------------------------------------

    def check_room(self, tenant: Tenant, size: int) -> int:
        """The most bytes the tenant may upload now (per-blob cap and bytes-stored quota); a check, no charge."""
        cap = self.settings.max_upload_mb * 1024 * 1024
        room = tenant.max_bytes - self.state.usage(tenant.name)
        if size > cap:
            raise LimitExceeded(f"a blob of {size} bytes is over the coordinator's {cap}-byte cap")
        if size > room:
            raise _full(tenant.name, tenant.max_bytes)
        return min(cap, room)

    def reserve_upload(self, tenant: Tenant, declared: str | None) -> int:
        """Charge a streamed upload's declared size to the tenant before its bytes arrive; returns the size."""
        if declared is None or not declared.isdigit():
            raise LimitExceeded("a blob upload must declare its Content-Length (the quota is charged up front)")
        size = int(declared)
        self.check_room(tenant, size)
        if not self.state.reserve(tenant.name, size, tenant.max_bytes):
            raise _full(tenant.name, tenant.max_bytes)
        return size

    def charge_committed(self, tenant: Tenant, digest: str, size: int) -> None:
        """Charge a blob committed from S3 staging (its size is known only now); refused past the quota."""
        if not self.state.reserve(tenant.name, size, tenant.max_bytes):
            self._forget(digest)
            raise _full(tenant.name, tenant.max_bytes)
        self.state.add_blob(tenant.name, digest, size, reserved=size)

    def drop_blob(self, tenant: Tenant, digest: str) -> bool:
        """Take ``digest`` out of the tenant's namespace; off the disk too when no other tenant holds it."""
        dropped = self.state.drop_blob(tenant.name, digest)
        if dropped:
            self._forget(digest)
        return dropped

    def _forget(self, digest: str) -> None:
        # A blob is shared by content: it stays while any tenant's namespace names it.
        if not self.state.held_by_anyone(digest):
            self.blobs.store.delete(digest)

    # -- results a worker uploads ------------------------------------------------------------------------------

    def _result_budget(self, worker: WorkerRecord, job_id: str) -> tuple[str, int]:
        job = self.held(worker, job_id)
        inputs = job.spec.get("inputs") if isinstance(job.spec, dict) else None
        n = len(inputs) if isinstance(inputs, list) and inputs else 1
        return self.state.job_owner(job_id) or "", n * self.settings.max_result_mb * 1024 * 1024

    def result_cap(self, worker: WorkerRecord, job_id: str) -> tuple[str, int]:
        """``(tenant, bytes this lease may still upload)``: one result of ``max_result_mb`` per input of the job."""
        tenant, budget = self._result_budget(worker, job_id)
        used = int(self.kv.hget("result_bytes", f"{job_id}:{worker.worker_id}") or 0)
        return tenant, max(0, budget - used)

    def charge_result(self, worker: WorkerRecord, job_id: str, size: int) -> str:
        """Charge a result upload of ``size`` bytes to the lease's budget and the tenant's quota (add first, then
        check and roll back, as :meth:`~.state.State.reserve` does); returns the tenant."""
        tenant, budget = self._result_budget(worker, job_id)
        key = f"{job_id}:{worker.worker_id}"
        if self.kv.hincrby("result_bytes", key, size) > budget:
            self.kv.hincrby("result_bytes", key, -size)
            raise LimitExceeded(f"job {job_id} may produce at most {budget} result bytes per attempt: refused")
        owner = self.state.tenant(tenant)
        if owner is None or not self.state.reserve(tenant, size, owner.max_bytes):
            self.kv.hincrby("result_bytes", key, -size)
            raise _full(tenant, owner.max_bytes if owner else 0)
        return tenant

    def refund_result(self, worker: WorkerRecord, job_id: str, tenant: str, size: int) -> None:
        """Give back a result charge whose upload failed."""
        self.kv.hincrby("result_bytes", f"{job_id}:{worker.worker_id}", -size)
        self.state.release(tenant, size)

    # -- the audit log -----------------------------------------------------------------------------------------

    def audit(self, tenant: Tenant) -> AuditLog:
        """The tenant's own audit log (a JSONL file under the data directory, or Redis keys of its own)."""
        if tenant.name not in self._audit:
            if is_redis(self.settings.state):
                store = RedisStore(self.settings.state)
                store.KEY = coordinator_key(f"audit:{tenant.name}")  # one chain per tenant
                store.HEAD = coordinator_key(f"audit:{tenant.name}:head")
                self._audit[tenant.name] = AuditLog(store)
            else:
                path = Path(self.settings.data) / "audit" / f"{tenant.name}.jsonl"
                self._audit[tenant.name] = AuditLog(JsonlStore(path))
        return self._audit[tenant.name]

    def audit_page(self, tenant: Tenant, start: int, limit: int) -> dict[str, Any]:
        """At most ``limit`` (and :data:`AUDIT_PAGE`) lines from ``start`` (negative: from the end), the log's size
        and head (read before the lines: an append in between only adds lines past the head)."""
        store = self.audit(tenant).store
        head = store.head()
        lines = store.lines()
        n = max(1, min(int(limit), AUDIT_PAGE))
        return {"lines": lines[start:][:n], "size": len(lines), "head": head}

    def append_audit(self, tenant: Tenant, line: str, head: str) -> int:
        """Append a line the tenant built on the log's last entry; :class:`AuditConflict` if that is no longer last.

        The line must be exactly the entry :func:`he_compute.formats.audit.next_entry` makes after the stored
        last line, so a tenant can extend its own chain but never fork or rewrite it.  Its bytes count against
        the tenant's storage quota.
        """
        if len(line) > MAX_AUDIT_LINE or len(head) > 4096:
            raise LimitExceeded(f"audit entries are limited to {MAX_AUDIT_LINE} bytes")
        try:
            entry = json.loads(line)
            kind, job, body, t = entry["kind"], entry["job"], entry["body"], int(entry["t"])
        except (ValueError, KeyError, TypeError):
            raise FormatError("an audit entry must be one JSON object with kind, job, body and t") from None
        index: list[int] = []

        def build(last: str | None) -> tuple[str, str]:
            try:
                expected, expected_head = next_entry(last, kind, job, body, t, "the tenant's audit log")
            except (ValueError, FormatError) as exc:
                raise FormatError(f"bad audit entry: {exc}") from None
            if canonical(expected).decode() != line or expected_head != head:
                raise AuditConflict("the audit log moved on (or the entry does not chain to its end): read it again")
            index.append(int(expected["i"]))
            return line, head

        size = len(line.encode()) + 1
        if not self.state.reserve(tenant.name, size, tenant.max_bytes):
            raise _full(tenant.name, tenant.max_bytes)
        try:
            self.audit(tenant).store.append(build)
        except BaseException:
            self.state.release(tenant.name, size)
            raise
        return index[0]
