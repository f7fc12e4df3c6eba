"""A tenant's side of a coordinator: the :class:`~he_compute.transport.queue.Producer` role and its audit log.

:class:`RemoteProducer` is what ``run()``, ``EncryptedModel`` and the ``hec``
job commands use in place of a queue engine when given ``--coordinator``; it
sees only this tenant's jobs.  :class:`RemoteAuditStore` is an
:class:`~he_compute.transport.audit.AuditStore` kept by the coordinator: the
tenant builds each entry on the log's last line and the coordinator appends it
only if it still chains; every read is checked against the checkpoint (size
and Merkle root) this client kept from its previous read, so a coordinator
that rewrites or truncates the tenant's history is caught
(:class:`~he_compute.errors.AuditError`).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

from ... import settings
from ...errors import AuditError, FormatError, QueueError
from ...files import PRIVATE, atomic_write
from ...formats import audit as entries
from .._closing import Closing
from ..locations import hec_home
from ..queue.base import DEFAULT_MAX_ATTEMPTS, Job, JobState, sleep_wait
from .session import Session
from .wire import API, H_IDEMPOTENCY, job_from_wire

STATUS_TTL_S = 0.2
"""How stale a job's status may be when it comes from a refresh of its whole run."""
COUNT_LIMIT = 1_000_000  # jobs a count over a coordinator looks at
STATUS_PAGE = 500
"""Job ids per batch-status request (the coordinator's ``MAX_STATUS_IDS``)."""


def _job(obj: Any) -> Job:
    try:
        return job_from_wire(obj)
    except (FormatError, ValueError, KeyError, TypeError) as exc:
        raise QueueError(f"the coordinator sent an unreadable job record ({exc})") from None


class RemoteProducer(Closing):
    """This tenant's jobs at a coordinator.

    Example::

        q = RemoteProducer(Session("https://coord:8443", token=token)); q.submit(spec)
    """

    def __init__(self, session: Session, *, checkpoints: str | os.PathLike[str] | None = None):
        self.session = session
        self.url = session.url
        self.checkpoints = checkpoints
        self._seen: dict[str, tuple[float, Job]] = {}

    def submit(self, spec: dict[str, Any], *, device: str = "cpu", max_attempts: int = DEFAULT_MAX_ATTEMPTS,
               group: str | None = None, run: str | None = None) -> str:
        """Queue a job (the idempotency key makes a retried request return the same job)."""
        body = {"spec": spec, "device": device, "max_attempts": int(max_attempts), "group": group, "run": run}
        out = self.session.json("POST", f"{API}/jobs", body=body, headers={H_IDEMPOTENCY: uuid.uuid4().hex})
        return str(out["id"])

    def status(self, job_id: str) -> Job:
        """One of this tenant's jobs, at most :data:`STATUS_TTL_S` old.

        A verifier polls every pending job of its run in turn, many times a second; over HTTPS that is one
        request per job per poll.  So a lookup of a job that belongs to a run refreshes the whole run in one
        request and answers the other jobs of the run from that for a moment.
        """
        now = time.monotonic()
        hit = self._seen.get(job_id)
        if hit is not None and now - hit[0] < STATUS_TTL_S:
            return hit[1]
        job = _job(self.session.json("GET", f"{API}/jobs/{job_id}"))
        if len(self._seen) > 100_000:
            self._seen.clear()
        if job.run:  # only a run's jobs are polled in turn; any other lookup always asks the coordinator
            self._seen[job_id] = (now, job)
            for other in self.jobs(run=job.run, since=job.created - 3600, limit=100_000):
                self._seen[other.id] = (now, other)
        return job

    def statuses(self, job_ids: Sequence[str]) -> dict[str, Job]:
        """Those of ``job_ids`` that are this tenant's jobs, one request per :data:`STATUS_PAGE` ids (another
        tenant's job reads as absent)."""
        ids = list(dict.fromkeys(job_ids))
        out: dict[str, Job] = {}
        for i in range(0, len(ids), STATUS_PAGE):
            page = ids[i : i + STATUS_PAGE]
            found = self.session.json("POST", f"{API}/jobs/statuses", body={"ids": page}).get("jobs")
            if not isinstance(found, dict):
                raise QueueError("the coordinator sent an unreadable batch status (no 'jobs' map)")
            for job_id in page:  # only ids asked for: a coordinator cannot slip in records of its choosing
                if job_id in found:
                    out[job_id] = _job(found[job_id])
        return out

    def counts(self, *, run: str | None = None) -> dict[JobState, int]:
        """Jobs per state, counted from this tenant's listing (the coordinator lists at most its own limit)."""
        out: dict[JobState, int] = {}
        for job in self.jobs(run=run, limit=COUNT_LIMIT):
            out[job.state] = out.get(job.state, 0) + 1
        return out

    def jobs(self, state: JobState | None = None, limit: int = 1000, *, run: str | None = None,
             since: float | None = None) -> list[Job]:
        """This tenant's jobs, oldest first."""
        params = {"state": JobState(state).value if state else None, "limit": int(limit), "run": run, "since": since}
        return [_job(j) for j in self.session.json("GET", f"{API}/jobs", params=params)["jobs"]]

    def wait(self, timeout_s: float) -> None:
        """Sleep at least :data:`STATUS_TTL_S`: the coordinator is polled, not subscribed to, so a verifier's
        loop asks it at most a few times a second (one batch-status request each) however short its tick."""
        sleep_wait(self, max(timeout_s, STATUS_TTL_S))

    def cancel(self, job_id: str) -> bool:
        """Cancel one of this tenant's jobs."""
        self._seen.pop(job_id, None)
        return bool(self.session.json("POST", f"{API}/jobs/{job_id}/cancel", body={})["cancelled"])

    def report_flag(self, job_id: str, worker_id: str) -> None:
        """Tell the operator that this tenant's verifier rejected ``worker_id``'s result for ``job_id``."""
        self.session.json("POST", f"{API}/jobs/{job_id}/flag", body={"worker": worker_id})

    def operators(self) -> dict[str, str]:
        """The operator the coordinator admitted each worker under (worker id -> operator name)."""
        found = self.session.json("GET", f"{API}/operators").get("operators", {})
        return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}

    def tenant(self) -> dict[str, Any]:
        """This tenant's name, quotas and usage."""
        return dict(self.session.json("GET", f"{API}/tenant"))

    def audit_store(self) -> RemoteAuditStore:
        """This tenant's audit log at the coordinator."""
        return RemoteAuditStore(self.session, checkpoints=self.checkpoints)

    def close(self) -> None:
        """Close the session."""
        self.session.close()


def default_checkpoints() -> Path:
    """Where clients keep audit checkpoints: ``$HEC_CHECKPOINTS`` or ``$HEC_HOME/audit-checkpoints.json``."""
    return Path(settings.get("HEC_CHECKPOINTS") or hec_home() / "audit-checkpoints.json")


class RemoteAuditStore(Closing):
    """The tenant's audit log at the coordinator, checked against this client's own checkpoints on every read."""

    def __init__(self, session: Session, *, checkpoints: str | os.PathLike[str] | None = None):
        self.session = session
        self.location = f"{session.url}{API}/audit"
        self.checkpoints = Path(checkpoints) if checkpoints else default_checkpoints()
        self._head: str | None = None
        self._key: str | None = None

    @property
    def checkpoint_key(self) -> str:
        """This log among those one client checks: the coordinator's URL and the tenant (one user may hold two)."""
        return self._checkpoint_key()

    def _checkpoint_key(self) -> str:
        if self._key is None:
            self._key = f"{self.session.url}#{self.session.json('GET', f'{API}/tenant')['tenant']}"
        return self._key

    def _saved(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.checkpoints.read_text()))
        except (OSError, ValueError):
            return {}

    def checkpoint(self) -> tuple[int, str] | None:
        """The ``(size, root)`` this client last saw, if any."""
        kept = self._saved().get(self._checkpoint_key())
        return (int(kept["size"]), str(kept["root"])) if kept else None

    def append(self, build: Callable[[str | None], tuple[str, str]]) -> str:
        """Build on the log's last line and append; start again if another append got there first."""
        for _ in range(50):
            tail = self.session.json("GET", f"{API}/audit", params={"start": -1})["lines"]
            line, head = build(tail[-1] if tail else None)
            try:
                self.session.json("POST", f"{API}/audit", body={"line": line, "head": head})
                return line
            except QueueError as exc:
                if getattr(exc, "code", "") != "conflict":
                    raise
            # A retried request (its coordinator died mid-way) may have landed already: then it is done.
            if self.session.json("GET", f"{API}/audit", params={"start": -1})["lines"] == [line]:
                return line
        raise QueueError("the audit log kept moving while appending (50 tries): try again")

    def lines(self) -> list[str]:
        """Every line, after checking them against this client's checkpoint; the checkpoint then moves forward."""
        got = self.session.json("GET", f"{API}/audit")  # the first page carries the size and head all pages share
        lines, self._head, size = list(got["lines"]), got["head"], int(got["size"])
        while len(lines) < size:  # the coordinator answers in bounded pages
            page = self.session.json("GET", f"{API}/audit", params={"start": len(lines)})["lines"]
            if not page:
                break
            lines += page
        lines = lines[:size]
        head = entries.verify_lines(lines, self._head, checkpoint=self.checkpoint())
        self._save(head.size, head.root)
        return lines

    def _save(self, size: int, root: str) -> None:
        saved = self._saved()
        key = self._checkpoint_key()
        if saved.get(key, {}).get("size", -1) > size:
            raise AuditError(f"the coordinator's log has {size} entries, fewer than this client's checkpoint")
        saved[key] = {"size": size, "root": root}
        atomic_write(self.checkpoints, json.dumps(saved, indent=1).encode(), PRIVATE)

    def head(self) -> str | None:
        """The head record read together with the last :meth:`lines` (so the two always agree)."""
        if self._head is None:
            self._head = self.session.json("GET", f"{API}/audit", params={"start": -1})["head"]
        return self._head

    def close(self) -> None:
        """Nothing to release (the session belongs to the producer)."""
