"""Who may do what, and who owns what: the coordinator's records over a :class:`~.kv.KV`.

Records (keys of the KV; under ``hec:coord:`` in Redis)::

    tokens            sha256(token) -> "tenant:<name>" | "enroll:<operator>" | "operator:"   (tokens never stored)
    tenants           name -> {"max_jobs", "max_bytes"}
    workers           worker id -> {"public_key", "operator", "how", "enrolled", "revoked"}
    wstats:<worker>   seen, claimed, done, failed, flagged (counters)
    nonce:<w>:<n>     a request nonce already used (expires after twice the clock skew allowed)
    owner             job id -> tenant;   jobs:<tenant> / live:<tenant>: its jobs / jobs in flight by time
    idem:<tenant>     idempotency key -> job id (a retried submit returns the first job)
    blobs:<tenant>    digest -> size (the tenant's namespace);   usage: tenant -> bytes stored
    done              unix minute -> jobs completed (throughput on the status page)

Tokens are random (256 bits) and only their sha256 is kept, so a copy of the
state (or of Redis) does not hand anyone a working token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from ..errors import AuthError
from ..formats.signing import fingerprint
from .kv import KV

NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
"""Tenant and operator names: they become parts of keys and job tags."""
DEFAULT_MAX_JOBS = 10_000
"""Jobs a tenant may have queued or running at once (``hec coordinator add-tenant --max-jobs``)."""
DEFAULT_MAX_BYTES = 20 * 1024**3
"""Bytes of blobs a tenant may keep (``--max-gb``)."""


def check_name(name: str, what: str) -> str:
    """Return ``name`` if it is a valid tenant or operator name; :class:`AuthError` otherwise."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise AuthError(f"{str(name)[:40]!r} is not a valid {what} name: lowercase letters, digits, '.', '_', '-'")
    return name


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Tenant:
    """A client account: its name and quotas."""

    name: str
    max_jobs: int = DEFAULT_MAX_JOBS
    max_bytes: int = DEFAULT_MAX_BYTES


@dataclass(frozen=True)
class WorkerRecord:
    """An admitted worker key and the operator who answers for it."""

    worker_id: str
    public_raw: bytes
    operator: str
    how: str            # "token" (enrolled) or "allow-list"
    enrolled: float
    revoked: bool = False


class State:
    """The coordinator's records; every method is one or two KV calls (safe across coordinator processes)."""

    def __init__(self, kv: KV):
        self.kv = kv

    # -- tokens ------------------------------------------------------------------------------------------------

    def _new_token(self, prefix: str, meaning: str) -> str:
        token = f"{prefix}_{secrets.token_urlsafe(32)}"
        self.kv.hset("tokens", {_hash(token): meaning})
        return token

    def token_meaning(self, token: str) -> str | None:
        """What ``token`` is (``tenant:<name>``, ``enroll:<operator>``, ``operator:``), or ``None``."""
        return self.kv.hget("tokens", _hash(token)) if token else None

    def add_tenant(self, name: str, *, max_jobs: int = DEFAULT_MAX_JOBS, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
        """Create (or update the quotas of) tenant ``name`` and return a new token for it."""
        check_name(name, "tenant")
        self.kv.hset("tenants", {name: json.dumps({"max_jobs": int(max_jobs), "max_bytes": int(max_bytes)})})
        return self._new_token("hect", f"tenant:{name}")

    def tenant(self, name: str) -> Tenant | None:
        """The tenant called ``name``."""
        raw = self.kv.hget("tenants", name)
        if raw is None:
            return None
        q = json.loads(raw)
        return Tenant(name, int(q["max_jobs"]), int(q["max_bytes"]))

    def tenants(self) -> list[Tenant]:
        """Every tenant."""
        return [t for n in sorted(self.kv.hgetall("tenants")) if (t := self.tenant(n)) is not None]

    def add_enroll_token(self, operator: str) -> str:
        """A new enrolment token: workers that present it are admitted under ``operator``."""
        return self._new_token("hece", f"enroll:{check_name(operator, 'operator')}")

    def add_operator_token(self) -> str:
        """A new token for the read-only status page."""
        return self._new_token("heco", "operator:")

    def revoke_token(self, token: str) -> bool:
        """Forget ``token``; ``True`` if it existed."""
        return self.kv.hdel("tokens", _hash(token))

    # -- workers -----------------------------------------------------------------------------------------------

    def admit_worker(self, public_raw: bytes, operator: str, how: str) -> WorkerRecord:
        """Admit a worker key under ``operator``; an already admitted key keeps its first operator."""
        check_name(operator, "operator")
        worker_id = fingerprint(public_raw)
        record = {"public_key": base64.b64encode(public_raw).decode(), "operator": operator, "how": how,
                  "enrolled": time.time(), "revoked": False}
        self.kv.hsetnx("workers", worker_id, json.dumps(record))
        out = self.worker(worker_id)
        assert out is not None  # written just above (or before)
        return out

    def worker(self, worker_id: str) -> WorkerRecord | None:
        """The record of an admitted worker, or ``None``."""
        raw = self.kv.hget("workers", worker_id)
        if raw is None:
            return None
        r = json.loads(raw)
        return WorkerRecord(worker_id, base64.b64decode(r["public_key"]), r["operator"], r["how"],
                            float(r["enrolled"]), bool(r.get("revoked")))

    def revoke_worker(self, worker_id: str) -> bool:
        """Refuse every later request of ``worker_id``; ``False`` if it was never admitted."""
        raw = self.kv.hget("workers", worker_id)
        if raw is None:
            return False
        self.kv.hset("workers", {worker_id: json.dumps({**json.loads(raw), "revoked": True})})
        return True

    def workers(self) -> list[tuple[WorkerRecord, dict[str, float]]]:
        """Every admitted worker with its counters (seen, claimed, done, failed, flagged)."""
        out = []
        for worker_id in self.kv.hgetall("workers"):
            rec = self.worker(worker_id)
            if rec is not None:
                out.append((rec, {k: float(v) for k, v in self.kv.hgetall(f"wstats:{worker_id}").items()}))
        return out

    def count(self, worker_id: str, what: str, n: int = 1) -> None:
        """Add ``n`` to one of a worker's counters."""
        self.kv.hincrby(f"wstats:{worker_id}", what, n)

    def seen(self, worker_id: str, now: float | None = None) -> None:
        """Record that the worker made a request now."""
        self.kv.hset(f"wstats:{worker_id}", {"seen": str(int(time.time() if now is None else now))})

    def fresh_nonce(self, worker_id: str, nonce: str, ttl_s: float) -> bool:
        """``True`` the first time a worker uses ``nonce`` (within ``ttl_s``), ``False`` for a replay."""
        return self.kv.setnx(f"nonce:{worker_id}:{nonce}", ttl_s)

    # -- jobs --------------------------------------------------------------------------------------------------

    def own_job(self, job_id: str, tenant: str, now: float) -> None:
        """Record that ``tenant`` submitted ``job_id`` (and that it is in flight)."""
        self.kv.hset("owner", {job_id: tenant})
        self.kv.zadd(f"jobs:{tenant}", job_id, now)
        self.kv.zadd(f"live:{tenant}", job_id, now)

    def job_owner(self, job_id: str) -> str | None:
        """The tenant that submitted ``job_id``."""
        return self.kv.hget("owner", job_id)

    def tenant_jobs(self, tenant: str, since: float | None, limit: int) -> list[str]:
        """The tenant's job ids, oldest first, created at or after ``since``."""
        return self.kv.zrange(f"jobs:{tenant}", float("-inf") if since is None else since, limit)

    def live_jobs(self, tenant: str, limit: int = 1_000_000) -> list[str]:
        """The tenant's jobs not known to have ended."""
        return self.kv.zrange(f"live:{tenant}", float("-inf"), limit)

    def live_count(self, tenant: str) -> int:
        """How many of the tenant's jobs are not known to have ended."""
        return self.kv.zcard(f"live:{tenant}")

    def ended(self, tenant: str, job_id: str) -> None:
        """The job left the queue (done, dead-lettered or cancelled): it no longer counts against the quota."""
        self.kv.zrem(f"live:{tenant}", job_id)

    def submitted(self, tenant: str, key: str) -> str | None:
        """The job a submission with idempotency ``key`` created, if any."""
        return self.kv.hget(f"idem:{tenant}", key)

    def remember_submit(self, tenant: str, key: str, job_id: str) -> None:
        """Remember the job that idempotency ``key`` created."""
        self.kv.hset(f"idem:{tenant}", {key: job_id})

    def count_done(self, now: float | None = None) -> None:
        """One more job completed this minute."""
        self.kv.hincrby("done", str(int((time.time() if now is None else now) // 60)), 1)

    def done_per_minute(self, minutes: int = 5, now: float | None = None) -> list[tuple[int, int]]:
        """``(unix minute, jobs completed)`` for the last ``minutes`` minutes, oldest first."""
        this = int((time.time() if now is None else now) // 60)
        counts = self.kv.hgetall("done")
        return [(m, int(counts.get(str(m), 0))) for m in range(this - minutes + 1, this + 1)]

    # -- blobs -------------------------------------------------------------------------------------------------

    def owns_blob(self, tenant: str, digest: str) -> bool:
        """Whether ``digest`` is in the tenant's namespace."""
        return self.kv.hget(f"blobs:{tenant}", digest) is not None

    def add_blob(self, tenant: str, digest: str, size: int) -> bool:
        """Put ``digest`` in the tenant's namespace and count its bytes; ``False`` if it was there already."""
        if not self.kv.hsetnx(f"blobs:{tenant}", digest, str(int(size))):
            return False
        self.kv.hincrby("usage", tenant, int(size))
        return True

    def drop_blob(self, tenant: str, digest: str) -> bool:
        """Take ``digest`` out of the tenant's namespace and its usage."""
        size = self.kv.hget(f"blobs:{tenant}", digest)
        if size is None or not self.kv.hdel(f"blobs:{tenant}", digest):
            return False
        self.kv.hincrby("usage", tenant, -int(size))
        return True

    def usage(self, tenant: str) -> int:
        """Bytes of blobs in the tenant's namespace."""
        return int(self.kv.hget("usage", tenant) or 0)

    def summary(self) -> dict[str, Any]:
        """Counts for the status page."""
        return {"tenants": len(self.kv.hgetall("tenants")), "workers": len(self.kv.hgetall("workers"))}
