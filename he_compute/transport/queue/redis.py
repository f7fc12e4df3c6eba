"""``redis://`` queue: Redis Streams with one consumer group, for many workers on many machines.

Keys (named by :func:`he_compute.transport.locations.redis_key`)::

    hec:job:<id>        hash: the job record (state, spec, attempts, lease token, stream entry, ...)
    hec:jobs            sorted set of job ids by submission time (for listing)
    hec:stream:<device> stream of {"job": id} entries, read by group "hec-workers"
    hec:dead            the dead-letter stream: {"job": id, "error": ...}

A claim is ``XREADGROUP`` (new entries) or ``XAUTOCLAIM`` (entries whose
consumer has been idle longer than the lease: its worker died).  Heartbeats
``XCLAIM ... JUSTID`` the entry to reset its idle time without counting a
delivery.  A claim counts an attempt; an entry delivered more than
``max_attempts`` times (``XPENDING`` delivery count), or a job past its
attempts, goes to the dead letter.  State changes run as Lua scripts, so
each is atomic on the server.  With persistence on (AOF), jobs, streams and
pending entries survive a Redis restart.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Iterable

from ...errors import QueueError
from .._closing import Closing
from ..locations import redis_key as key_for
from .base import (DEFAULT_LEASE_S, DEFAULT_MAX_ATTEMPTS, MAX_ATTEMPTS_CAP, JobState, Lease, check_tag, dumps, sleep_wait)
from .redis_reads import DEAD, RedisReads, _hash_to_job, _text

GROUP = "hec-workers"


# The attempt limit is the record's, capped by the queue's own (ARGV[7]): a record rewritten to ask for a
# million attempts, or one whose count is not a number, gets the cap (or one attempt).
# A job of a replica group (KEYS[4], a hash operator -> the job it claimed) from which this operator
# (ARGV[8]) already took another job is put back at the end of the stream, unclaimed.
# KEYS: job hash, stream, dead stream, group set (or '').  ARGV: msg id, token, worker, now, deliveries,
# consumer group, cap, operator, job id.  Answers the taken job's record (HGETALL), or why it was not taken.
_TAKE = """
local st = redis.call('HGET', KEYS[1], 'state')
if st ~= 'queued' and st ~= 'running' then
  redis.call('XACK', KEYS[2], ARGV[6], ARGV[1]); return 'skip'
end
local taken = KEYS[4] ~= '' and redis.call('HGET', KEYS[4], ARGV[8])
if taken and taken ~= ARGV[9] then
  redis.call('XACK', KEYS[2], ARGV[6], ARGV[1])
  redis.call('XADD', KEYS[2], '*', 'job', ARGV[9])
  return 'busy'
end
local attempts = tonumber(redis.call('HINCRBY', KEYS[1], 'attempts', 1))
local maxa = math.min(tonumber(redis.call('HGET', KEYS[1], 'max_attempts')) or 1, tonumber(ARGV[7]))
if attempts > maxa or tonumber(ARGV[5]) > maxa then
  local err = redis.call('HGET', KEYS[1], 'error')
  if not err or err == '' then err = 'worker stopped heartbeating (killed or crashed)' end
  err = err .. ' [gave up after ' .. (attempts - 1) .. ' attempt(s)]'
  redis.call('HSET', KEYS[1], 'state', 'failed', 'error', err, 'updated', ARGV[4], 'token', '', 'worker', '')
  redis.call('HINCRBY', KEYS[1], 'attempts', -1)
  redis.call('XACK', KEYS[2], ARGV[6], ARGV[1])
  redis.call('XADD', KEYS[3], '*', 'job', redis.call('HGET', KEYS[1], 'id'), 'error', err)
  return 'dead'
end
if st == 'running' then
  local prev = redis.call('HGET', KEYS[1], 'worker')
  redis.call('HSET', KEYS[1], 'error', 'worker ' .. prev .. ' stopped heartbeating (killed or crashed) during attempt '
    .. (attempts - 1) .. '/' .. maxa)
end
redis.call('HSET', KEYS[1], 'state', 'running', 'token', ARGV[2], 'worker', ARGV[3], 'updated', ARGV[4],
  'msg', ARGV[1], 'stream', KEYS[2], 'operator', ARGV[8])
if KEYS[4] ~= '' then
  redis.call('HSET', KEYS[4], ARGV[8], ARGV[9]); redis.call('EXPIRE', KEYS[4], 604800)
end
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: job hash, stream.  ARGV: token, group, consumer, now, progress (or '').
_HEARTBEAT = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'state') ~= 'running' then
  return 0
end
redis.call('XCLAIM', KEYS[2], ARGV[2], ARGV[3], 0, redis.call('HGET', KEYS[1], 'msg'), 'JUSTID')
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'progress', ARGV[5]) end
redis.call('HSET', KEYS[1], 'updated', ARGV[4])
return 1
"""

# Only the current holder of the lease may complete: a stale or forged token changes nothing.
# KEYS: job hash, stream.  ARGV: msg, group, result, now, token.
_COMPLETE = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[5] or redis.call('HGET', KEYS[1], 'state') ~= 'running' then
  return 0
end
redis.call('XACK', KEYS[2], ARGV[2], redis.call('HGET', KEYS[1], 'msg'))
redis.call('HSET', KEYS[1], 'state', 'done', 'result', ARGV[3], 'error', '', 'updated', ARGV[4], 'token', '')
return 1
"""

# A record that cannot be parsed goes to the dead letter with the reason.
# KEYS: job hash, stream, dead.  ARGV: msg, group, error, now, id.
_BURY = """
redis.call('XACK', KEYS[2], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[1], 'state', 'failed', 'error', ARGV[3], 'updated', ARGV[4], 'token', '', 'worker', '')
redis.call('XADD', KEYS[3], '*', 'job', ARGV[5], 'error', ARGV[3])
return 1
"""

# A dead-lettered job keeps the name of the worker that failed it last (the client counts it against it).
# KEYS: job hash, stream, dead, group hash (or '').  ARGV: token, group, error, now, retry ('1'/'0'),
# release ('1'/'0'), cap, operator (on release: it may claim from the job's group again: it ran nothing).
_FAIL = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'state') ~= 'running' then
  return redis.call('HGET', KEYS[1], 'state')
end
local id = redis.call('HGET', KEYS[1], 'id')
redis.call('XACK', KEYS[2], ARGV[2], redis.call('HGET', KEYS[1], 'msg'))
if ARGV[6] == '1' then
  if KEYS[4] ~= '' and redis.call('HGET', KEYS[4], ARGV[8]) == id then redis.call('HDEL', KEYS[4], ARGV[8]) end
  redis.call('HINCRBY', KEYS[1], 'attempts', -1)
  redis.call('HSET', KEYS[1], 'state', 'queued', 'token', '', 'worker', '', 'updated', ARGV[4])
  redis.call('XADD', KEYS[2], '*', 'job', id)
  return 'queued'
end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts')) or 0
local maxa = math.min(tonumber(redis.call('HGET', KEYS[1], 'max_attempts')) or 1, tonumber(ARGV[7]))
if ARGV[5] == '1' and attempts < maxa then
  redis.call('HSET', KEYS[1], 'state', 'queued', 'error', ARGV[3], 'token', '', 'worker', '', 'updated', ARGV[4])
  redis.call('XADD', KEYS[2], '*', 'job', id)
  return 'queued'
end
redis.call('HSET', KEYS[1], 'state', 'failed', 'error', ARGV[3], 'token', '', 'updated', ARGV[4])
redis.call('XADD', KEYS[3], '*', 'job', id, 'error', ARGV[3])
return 'failed'
"""

# KEYS: job hash.  ARGV: now.
_CANCEL = """
local st = redis.call('HGET', KEYS[1], 'state')
if st ~= 'queued' and st ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'token', '', 'updated', ARGV[1])
return 1
"""


class RedisQueue(RedisReads, Closing):
    """The scale-out queue on Redis >= 6.2.

    Example::

        q = RedisQueue.from_url("redis://127.0.0.1:6379/0"); q.submit({"op": "noop"})
    """

    def __init__(self, client: Any, url: str, *, lease_s: float = DEFAULT_LEASE_S,
                 max_attempts: int = MAX_ATTEMPTS_CAP):
        self._r, self.url, self.lease_s = client, url, float(lease_s)
        self.max_attempts_cap = int(max_attempts)
        self._groups: set[str] = set()
        self._cursor: dict[str, str] = {}
        self._take = client.register_script(_TAKE)
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._complete = client.register_script(_COMPLETE)
        self._fail = client.register_script(_FAIL)
        self._cancel = client.register_script(_CANCEL)
        self._bury = client.register_script(_BURY)

    @classmethod
    def from_url(cls, url: str, *, lease_s: float = DEFAULT_LEASE_S) -> RedisQueue:
        """Connect (redis-py imported lazily)."""
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_keepalive=True)
        return cls(client, url, lease_s=lease_s)

    def _group(self, stream: str) -> None:
        import redis

        if stream in self._groups:
            return
        try:
            self._r.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(stream)

    def submit(self, spec: dict[str, Any], *, device: str = "cpu", max_attempts: int = DEFAULT_MAX_ATTEMPTS,
               group: str | None = None, run: str | None = None) -> str:
        """Write the job hash, then add its entry to the device's stream."""
        check_tag(group, "job group")
        check_tag(run, "run id")
        if max_attempts < 1:
            raise QueueError("max_attempts must be at least 1")
        max_attempts = min(int(max_attempts), self.max_attempts_cap)
        job_id = "j" + uuid.uuid4().hex[:20]
        now = time.time()
        stream = key_for("stream", device)

        def go() -> None:
            self._group(stream)
            pipe = self._r.pipeline(transaction=True)
            pipe.hset(key_for("job", job_id), mapping={
                "id": job_id, "state": JobState.QUEUED.value, "device": device, "spec": dumps(spec),
                "attempts": 0, "max_attempts": int(max_attempts), "created": now, "updated": now, "progress": "{}",
                "group": group or "", "run": run or ""})
            pipe.zadd(key_for("jobs"), {job_id: now})
            pipe.xadd(stream, {"job": job_id})
            pipe.execute()

        self._call("submit", go)
        return job_id

    def _deliveries(self, stream: str, msg_id: Any) -> int:
        info = self._r.xpending_range(stream, GROUP, min=msg_id, max=msg_id, count=1)
        return int(info[0]["times_delivered"]) if info else 1

    def _try_take(self, stream: str, msg_id: Any, fields: dict[Any, Any], worker: str,
                  operator: str, fresh: bool = False) -> Lease | str | None:
        """Take the entry's job; ``"busy"`` when it belongs to a group ``operator`` already claimed from.

        ``fresh``: the entry was just read as new (``XREADGROUP >``), so this is its first delivery."""
        job_id = _text(fields.get(b"job", fields.get("job", b"")))
        token = uuid.uuid4().hex
        found = self._r.hmget(key_for("job", job_id), ["id", "group"]) if job_id else [None, None]
        if found[0] is None:  # no such job
            self._r.xack(stream, GROUP, msg_id)
            return None
        group = _text(found[1] or b"")
        group_key = key_for("group", group) if group else ""
        record = self._take(keys=[key_for("job", job_id), stream, DEAD, group_key],
                            args=[msg_id, token, worker, time.time(), 1 if fresh else self._deliveries(stream, msg_id),
                                  GROUP, self.max_attempts_cap, operator, job_id])
        if not isinstance(record, list):
            return "busy" if _text(record) == "busy" else None
        job = _hash_to_job(dict(zip(record[::2], record[1::2])), job_id)
        if job.state is JobState.FAILED:  # unreadable: bury it instead of handing it out
            self._bury(keys=[key_for("job", job_id), stream, DEAD],
                       args=[msg_id, GROUP, str(job.error)[:4000], time.time(), job_id])
            return None
        return Lease(job=job, token=token, worker=worker, ref={"stream": stream, "msg": _text(msg_id)},
                     operator=operator)

    def _reclaim(self, stream: str, worker: str, operator: str) -> Lease | None:
        """Take over one entry whose consumer has been idle past the lease (its worker is gone)."""
        start = self._cursor.get(stream, "0-0")
        # One entry at a time: XAUTOCLAIM counts a delivery for every entry it hands over, so claiming a batch
        # and taking only the first would push the rest towards the dead letter without a single attempt.
        for _ in range(16):
            reply = self._r.xautoclaim(stream, GROUP, worker, int(self.lease_s * 1000), start_id=start, count=1)
            start = _text(reply[0])
            self._cursor[stream] = start
            for msg_id, fields in reply[1]:
                if fields is None:
                    self._r.xack(stream, GROUP, msg_id)
                    continue
                lease = self._try_take(stream, msg_id, fields, worker, operator)
                if isinstance(lease, Lease):
                    return lease
            if start == "0-0":
                break
        return None

    def claim(self, worker: str, *, devices: Iterable[str] = ("cpu",), block_s: float = 0.0,
              operator: str | None = None) -> Lease | None:
        """Reclaim a dead worker's job if any, else read a new entry (blocking up to ``block_s``).

        Entries of a group ``operator`` already claimed from go back to the end of the stream; once
        only those are left, the claim waits out ``block_s`` instead of spinning on them.
        """
        streams = [key_for("stream", d) for d in devices]
        deadline = time.monotonic() + block_s
        who = operator or worker

        def go() -> Lease | None:
            for s in streams:
                self._group(s)
            skipped: set[bytes] = set()
            while True:
                for s in streams:
                    lease = self._reclaim(s, worker, who)
                    if lease is not None:
                        return lease
                left = deadline - time.monotonic()
                block_ms = int(min(max(left, 0), self.lease_s / 2) * 1000)
                reply = self._r.xreadgroup(GROUP, worker, {s: ">" for s in streams}, count=1,
                                           block=block_ms if block_ms > 0 else None)
                cycled = False
                for stream, entries in reply or []:
                    for msg_id, fields in entries:
                        taken = self._try_take(_text(stream), msg_id, fields, worker, who, fresh=True)
                        if isinstance(taken, Lease):
                            return taken
                        if taken == "busy":
                            job = fields.get(b"job", b"")
                            cycled = cycled or job in skipped
                            skipped.add(job)
                if not reply or cycled:  # nothing new, or only groups this operator already has
                    if time.monotonic() >= deadline:
                        return None
                    if cycled:
                        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
                        skipped.clear()

        taken: Lease | None = self._call("claim", go)
        return taken

    def heartbeat(self, lease: Lease, progress: dict[str, Any] | None = None) -> bool:
        """Reset the entry's idle time (``XCLAIM JUSTID``) and record progress."""
        out = self._call("heartbeat", self._heartbeat, keys=[key_for("job", lease.job.id), lease.ref["stream"]],
                         args=[lease.token, GROUP, lease.worker, time.time(), dumps(progress) if progress else ""])
        return int(out) == 1

    def complete(self, lease: Lease, result: dict[str, Any]) -> bool:
        """Acknowledge the entry; store the result unless the job already ended (first result wins)."""
        out = self._call("complete", self._complete, keys=[key_for("job", lease.job.id), lease.ref["stream"]],
                         args=[lease.ref["msg"], GROUP, dumps(result), time.time(), lease.token])
        return int(out) == 1

    def fail(self, lease: Lease, error: str, *, retry: bool = True) -> JobState:
        """Requeue with a fresh entry while attempts remain, else add to the dead-letter stream."""
        out = self._call("fail", self._fail, keys=[key_for("job", lease.job.id), lease.ref["stream"], DEAD, ""],
                         args=[lease.token, GROUP, str(error)[:4000], time.time(), int(retry), 0,
                               self.max_attempts_cap, ""])
        return JobState(_text(out))

    def release(self, lease: Lease) -> None:
        """Requeue with a fresh entry without counting the attempt."""
        group_key = key_for("group", lease.job.group) if lease.job.group else ""
        self._call("release", self._fail, keys=[key_for("job", lease.job.id), lease.ref["stream"], DEAD, group_key],
                   args=[lease.token, GROUP, "", time.time(), 1, 1, self.max_attempts_cap,
                         lease.operator or lease.worker])

    wait = sleep_wait  # Redis says nothing of other clients' writes without a subscription

    def cancel(self, job_id: str) -> bool:
        """Mark cancelled; a pending entry is acknowledged by whoever meets it next."""
        self.status(job_id)
        return int(self._call("cancel", self._cancel, keys=[key_for("job", job_id)], args=[time.time()])) == 1

    def close(self) -> None:
        """Close the connection pool."""
        self._r.close()
