"""The Redis queue's read-only side: job records, counts and the dead letter (``RedisQueue`` mixes it in).

Nothing here changes a job; state changes are the Lua scripts of :mod:`.redis`.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from ...errors import QueueError
from ..locations import redis_key as key_for
from .base import Job, JobState, check_job_id, unreadable_job

DEAD = key_for("dead")
_STATES = {s.value for s in JobState}


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _hash_to_job(h: dict[bytes, bytes], job_id: str = "") -> Job:
    """The hash as a :class:`Job`; a record that does not parse becomes a failed job saying so."""
    d = {_text(k): _text(v) for k, v in h.items()}
    try:
        return Job(
            id=d["id"], state=JobState(d["state"]), spec=json.loads(d["spec"]), device=d["device"],
            attempts=int(d.get("attempts", 0)), max_attempts=int(d["max_attempts"]), error=d.get("error") or None,
            result=json.loads(d["result"]) if d.get("result") else None,
            progress=json.loads(d.get("progress") or "{}"), worker=d.get("worker") or None,
            created=float(d["created"]), updated=float(d.get("updated", d["created"])),
            group=d.get("group") or None, run=d.get("run") or None,
        )
    except (ValueError, TypeError, KeyError) as exc:
        return unreadable_job(d.get("id") or job_id, exc)


class RedisReads:
    """Queries over the job hashes; the engine supplies the connection (``_r``) and its URL."""

    _r: Any
    url: str
    _groups: set[str]

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import redis

        try:
            return fn(*args, **kwargs)
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis restarted without persistence: recreate groups next time
                self._groups.clear()
            raise QueueError(f"queue {self.url}: {what} failed ({exc})") from exc
        except redis.RedisError as exc:
            raise QueueError(f"queue {self.url}: {what} failed ({exc}): is Redis (>= 6.2) running there?") from exc

    def status(self, job_id: str) -> Job:
        """One job's record."""
        h = self._call("status", self._r.hgetall, key_for("job", check_job_id(job_id)))
        if not h:
            raise QueueError(f"no job {job_id} in {self.url}: list jobs with hec jobs --queue {self.url}")
        return _hash_to_job(h, job_id)

    def statuses(self, job_ids: Sequence[str]) -> dict[str, Job]:
        """The records of those of ``job_ids`` that exist, read in one pipeline."""
        ids = [check_job_id(j) for j in job_ids]

        def go() -> list[Any]:
            pipe = self._r.pipeline(transaction=False)
            for i in ids:
                pipe.hgetall(key_for("job", i))
            return list(pipe.execute())

        return {i: _hash_to_job(h, i) for i, h in zip(ids, self._call("status", go)) if h}

    def counts(self, *, run: str | None = None) -> dict[JobState, int]:
        """Jobs per state (of ``run``): two fields of each job read in one pipeline, never the records."""
        def go() -> list[Any]:
            pipe = self._r.pipeline(transaction=False)
            for i in self._r.zrange(key_for("jobs"), 0, -1):
                pipe.hmget(key_for("job", _text(i)), "state", "run")
            return list(pipe.execute())

        out: dict[JobState, int] = {}
        for state, tag in self._call("counts", go):
            if state is not None and _text(state) in _STATES and (run is None or (tag and _text(tag) == run)):
                out[JobState(_text(state))] = out.get(JobState(_text(state)), 0) + 1
        return out

    def jobs(self, state: JobState | None = None, limit: int = 1000, *, run: str | None = None,
             since: float | None = None) -> list[Job]:
        """Jobs oldest first, filtered by state, run and creation time."""
        def go() -> list[Job]:
            ids = self._r.zrangebyscore(key_for("jobs"), "-inf" if since is None else float(since), "+inf")
            pipe = self._r.pipeline(transaction=False)
            for i in ids:
                pipe.hgetall(key_for("job", _text(i)))
            return [_hash_to_job(h, _text(i)) for i, h in zip(ids, pipe.execute()) if h]

        out = [j for j in self._call("jobs", go)
               if (state is None or j.state == JobState(state)) and (run is None or j.run == run)]
        return out[:limit]

    def dead_letter(self) -> list[Job]:
        """Jobs named by the dead-letter stream that are still failed (latest error first in each)."""
        entries = self._call("dead letter", self._r.xrange, DEAD)
        seen: dict[str, Job] = {}
        for _, fields in entries:
            job_id = _text(fields[b"job"])
            try:
                job = self.status(job_id)
            except QueueError:
                continue
            if job.state == JobState.FAILED:
                seen[job_id] = job
        return list(seen.values())
