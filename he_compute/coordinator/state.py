"""Who may do what, and who owns what: the coordinator's records over a :class:`~.kv.KV`.

Records (keys of the KV; under ``hec:coord:`` in Redis)::

    tokens            sha256(token) -> "tenant:<name>" | "enroll:<operator>" | "operator:"   (tokens never stored)
    tenants           name -> {"max_jobs", "max_bytes", "tokens": sha256 of its valid tokens}
    enroll_uses / enroll_until   sha256(enrolment token) -> admissions left / unix time it stops working
    workers           worker id -> {"public_key", "operator", "how", "enrolled", "revoked", "token"}
    wstats:<worker>   seen, claimed, done, failed, flagged (counters)
    nonce:<w>:<n>     a request nonce already used (expires after twice the clock skew allowed)
    owner             job id -> tenant;   jobs:<tenant> / live:<tenant>: its jobs / jobs in flight by time
    idem:<tenant>     idempotency key -> job id (a retried submit returns the first job)
    blobs:<tenant>    digest -> size (the tenant's namespace);   usage: tenant -> bytes stored or reserved
    blobjob:<tenant>  digest -> job id (a worker's result, charged to the tenant and listed with its job)
    flags             job id -> the worker a tenant flagged for it (one flag per job)
    done              unix minute -> jobs completed (throughput on the status page)
    polls:w:<worker> / polls:o:<operator>   waiting claims' slots, scored by when each lapses (service.LongPolls)

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
ENROLL_USES = 1
"""Worker keys one enrolment token admits (``hec coordinator enroll-token --uses``)."""
ENROLL_VALID_S = 24 * 3600.0
"""How long an enrolment token works (``--valid-hours``)."""


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
        """Create (or update the quotas of) tenant ``name`` and return a new token for it; its old token stops working."""
        check_name(name, "tenant")
        old = self.kv.hget("tenants", name)
        token = self._new_token("hect", f"tenant:{name}")
        self.kv.hset("tenants", {name: json.dumps({"max_jobs": int(max_jobs), "max_bytes": int(max_bytes),
                                                   "tokens": [_hash(token)]})})
        for previous in json.loads(old).get("tokens", []) if old else []:
            self.kv.hdel("tokens", previous)
        return token

    def another_tenant_token(self, name: str) -> str:
        """One more token for an existing tenant, the old ones kept (a second coordinator's first start over
        shared records writes its own ``client.token``); ``add_tenant`` revokes them all."""
        raw = self.kv.hget("tenants", name)
        if raw is None:
            return self.add_tenant(name)
        token = self._new_token("hect", f"tenant:{name}")
        record = json.loads(raw)
        record["tokens"] = [*record.get("tokens", []), _hash(token)]
        self.kv.hset("tenants", {name: json.dumps(record)})
        return token

    def tenant_of_token(self, token: str) -> str | None:
        """The tenant whose current token ``token`` is (a replaced token names no one)."""
        meaning = self.token_meaning(token)
        if not meaning or not meaning.startswith("tenant:"):
            return None
        name = meaning.split(":", 1)[1]
        raw = self.kv.hget("tenants", name)
        valid = json.loads(raw).get("tokens") if raw else None
        return name if valid is None or _hash(token) in valid else None

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

    def add_enroll_token(self, operator: str, *, uses: int = ENROLL_USES, valid_s: float = ENROLL_VALID_S) -> str:
        """A new enrolment token: up to ``uses`` new worker keys that present it within ``valid_s`` seconds are
        admitted under ``operator``."""
        token = self._new_token("hece", f"enroll:{check_name(operator, 'operator')}")
        self.kv.hset("enroll_uses", {_hash(token): str(int(uses))})
        self.kv.hset("enroll_until", {_hash(token): str(time.time() + float(valid_s))})
        return token

    def spend_enroll_token(self, token: str) -> bool:
        """Count one admission against an enrolment token; ``False`` if it is used up, expired or revoked."""
        h = _hash(token)
        until = self.kv.hget("enroll_until", h)
        if until is None or float(until) < time.time() or self.kv.hget("tokens", h) is None:
            return False
        if self.kv.hincrby("enroll_uses", h, -1) < 0:  # atomic: parallel enrolments cannot overspend it
            self.kv.hincrby("enroll_uses", h, 1)
            return False
        return True

    def add_operator_token(self) -> str:
        """A new token for the read-only status page."""
        return self._new_token("heco", "operator:")

    def revoke_token(self, token: str) -> bool:
        """Forget ``token``; ``True`` if it existed."""
        return self.kv.hdel("tokens", _hash(token))

    # -- workers -----------------------------------------------------------------------------------------------

    def admit_worker(self, public_raw: bytes, operator: str, how: str, token: str = "") -> WorkerRecord:
        """Admit a worker key under ``operator`` (``token``: the enrolment token that admitted it); an already
        admitted key keeps its first operator."""
        check_name(operator, "operator")
        worker_id = fingerprint(public_raw)
        record = {"public_key": base64.b64encode(public_raw).decode(), "operator": operator, "how": how,
                  "enrolled": time.time(), "revoked": False, "token": _hash(token) if token else ""}
        self.kv.hsetnx("workers", worker_id, json.dumps(record))
        out = self.worker(worker_id)
        assert out is not None  # written just above (or before)
        return out

    def worker(self, worker_id: str) -> WorkerRecord | None:
        """The record of an admitted worker, or ``None``."""
        return self._record(worker_id, self.kv.hget("workers", worker_id))

    def worker_and_nonce(self, worker_id: str, nonce: str, ttl_s: float) -> tuple[WorkerRecord | None, bool]:
        """:meth:`worker` and :meth:`fresh_nonce` in one round trip (for a request whose signature was already
        checked against this worker's key)."""
        raw, fresh = self.kv.batch([("hget", ("workers", worker_id)),
                                    ("setnx", (f"nonce:{worker_id}:{nonce}", ttl_s))])
        return self._record(worker_id, raw), bool(fresh)

    @staticmethod
    def _record(worker_id: str, raw: str | None) -> WorkerRecord | None:
        if raw is None:
            return None
        r = json.loads(raw)
        return WorkerRecord(worker_id, base64.b64decode(r["public_key"]), r["operator"], r["how"],
                            float(r["enrolled"]), bool(r.get("revoked")))

    def revoke_worker(self, worker_id: str) -> bool:
        """Refuse every later request of ``worker_id``, and burn the enrolment token that admitted it (a key that
        leaked with its token must not come back as a new key); ``False`` if it was never admitted."""
        raw = self.kv.hget("workers", worker_id)
        if raw is None:
            return False
        record = json.loads(raw)
        self.kv.hset("workers", {worker_id: json.dumps({**record, "revoked": True})})
        if record.get("token"):
            self.kv.hdel("tokens", record["token"])
        return True

    def flag_once(self, job_id: str, worker_id: str) -> bool:
        """Count one flag against ``worker_id`` for ``job_id``; ``False`` if that job was flagged already."""
        if not self.kv.hsetnx("flags", job_id, worker_id):
            return False
        self.count(worker_id, "flagged")
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

    def claimed(self, worker_id: str, *, got: bool, seen: bool = True) -> None:
        """Record a claim of the worker now (:meth:`seen` if ``seen``, one more claimed job if ``got``), in one
        round trip."""
        calls: list[tuple[str, tuple[Any, ...]]] = []
        if seen:
            calls.append(("hset", (f"wstats:{worker_id}", {"seen": str(int(time.time()))})))
        if got:
            calls.append(("hincrby", (f"wstats:{worker_id}", "claimed", 1)))
        if calls:
            self.kv.batch(calls)

    def completed(self, tenant: str, job_id: str, worker_id: str, operator: str) -> None:
        """A worker's result for the tenant's job was accepted: the tenant may now see the operator's name, the job
        no longer counts against its quota, and the counters move on (one round trip)."""
        self.kv.batch([("hsetnx", (f"ran:{tenant}", operator, "1")), ("zrem", (f"live:{tenant}", job_id)),
                       ("hincrby", (f"wstats:{worker_id}", "done", 1)),
                       ("hincrby", ("done", str(int(time.time() // 60)), 1))])

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

    def job_owners(self, job_ids: list[str]) -> list[str | None]:
        """The tenant that submitted each of ``job_ids`` (one read)."""
        return self.kv.hmget("owner", job_ids)

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

    def not_owned(self, tenant: str, digests: list[str]) -> list[str]:
        """Those of ``digests`` not in the tenant's namespace (one read)."""
        return [d for d, size in zip(digests, self.kv.hmget(f"blobs:{tenant}", digests)) if size is None]

    def reserve(self, tenant: str, size: int, max_bytes: int) -> bool:
        """Charge ``size`` bytes to the tenant if that keeps it within ``max_bytes``: add first, then check and roll
        back, so parallel requests (in any coordinator process) can never pass the quota together."""
        if self.kv.hincrby("usage", tenant, int(size)) <= max_bytes:
            return True
        self.kv.hincrby("usage", tenant, -int(size))
        return False

    def release(self, tenant: str, size: int) -> None:
        """Give back a reservation that was not used."""
        if size:
            self.kv.hincrby("usage", tenant, -int(size))

    def add_blob(self, tenant: str, digest: str, size: int, *, reserved: int = 0, job: str | None = None) -> bool:
        """Put ``digest`` in the tenant's namespace and count its bytes (``reserved`` of them were charged already);
        ``False`` if it was there already (the reservation is then given back).  ``job``: a worker's result."""
        if not self.kv.hsetnx(f"blobs:{tenant}", digest, str(int(size))):
            self.release(tenant, reserved)
            return False
        if job:
            self.kv.hset(f"blobjob:{tenant}", {digest: job})
        self.kv.hincrby("usage", tenant, int(size) - int(reserved))
        return True

    def drop_blob(self, tenant: str, digest: str) -> bool:
        """Take ``digest`` out of the tenant's namespace and its usage."""
        size = self.kv.hget(f"blobs:{tenant}", digest)
        if size is None or not self.kv.hdel(f"blobs:{tenant}", digest):
            return False
        self.kv.hdel(f"blobjob:{tenant}", digest)
        self.kv.hincrby("usage", tenant, -int(size))
        return True

    def held_by_anyone(self, digest: str) -> bool:
        """Whether any tenant's namespace still holds ``digest`` (one lookup per tenant)."""
        return any(self.owns_blob(name, digest) for name in self.kv.hgetall("tenants"))

    def list_blobs(self, tenant: str, after: str, limit: int) -> list[dict[str, Any]]:
        """The tenant's blobs by digest after ``after``: ``{"digest", "size", "job"}`` (job: a worker's result)."""
        sizes = self.kv.hgetall(f"blobs:{tenant}")
        jobs = self.kv.hgetall(f"blobjob:{tenant}")
        return [{"digest": d, "size": int(sizes[d]), "job": jobs.get(d)}
                for d in sorted(d for d in sizes if d > after)[:limit]]

    def usage(self, tenant: str) -> int:
        """Bytes of blobs in the tenant's namespace."""
        return int(self.kv.hget("usage", tenant) or 0)

    def summary(self) -> dict[str, Any]:
        """Counts for the status page."""
        return {"tenants": len(self.kv.hgetall("tenants")), "workers": len(self.kv.hgetall("workers"))}
