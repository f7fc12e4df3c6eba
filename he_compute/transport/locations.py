"""Where things live: every queue, blob-store and audit-log URL is parsed here, and every Redis key is named here.

URLs::

    queue   sqlite:///abs/queue.db | sqlite://rel/queue.db    embedded default (./.hec/queue.db or $HEC_QUEUE)
            redis://host:port/db  (rediss://, unix://)         Redis >= 6.2 Streams
    blobs   file:///abs/dir | file://rel/dir                   default: next to an embedded queue
            redis://host:port/db                               default next to a Redis queue
            s3://bucket/prefix[?endpoint_url=..&region=..]
    audit   DIR/audit.jsonl next to sqlite://DIR/queue.db; the same Redis server as a Redis queue

Redis keys (:func:`redis_key`)::

    hec:job:<id>        hash: one job record            hec:jobs        sorted set of job ids by submission
    hec:stream:<device> stream of {"job": id} entries     hec:dead        the dead-letter stream
    hec:blob:<hex>      a blob's chunk count             hec:blob:<hex>:<i>  chunk i of a blob
    hec:audit           the audit log (a list)           hec:audit:head  its head record
    hec:group:<group>   set of operators that claimed a job of a replica group
    hec:coord:<name>    the coordinator's own records (tenants, workers, nonces, ownership), see he_compute.coordinator

Example::

    loc = Locations.resolve(queue="sqlite://.hec/queue.db")
    loc.blobs, loc.audit, loc.logs      # "file://.hec/blobs", ".hec/audit.jsonl", Path(".hec/logs")
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

from .. import settings

DEFAULT_QUEUE = "sqlite://.hec/queue.db"
"""The embedded queue under ``./.hec/`` used when neither a URL nor ``HEC_QUEUE`` is given."""
QUEUE_ENV = "HEC_QUEUE"
HOME_ENV = "HEC_HOME"
"""Directory of the user's own he_compute state (key registry, signing key, audit checkpoints, config)."""
REDIS_SCHEMES = ("redis", "rediss", "unix")


def scheme_of(url: str) -> str:
    """``"sqlite"`` for ``sqlite://...``; ``"file"`` for a bare path."""
    return url.split("://", 1)[0] if "://" in url else "file"


def split_query(url: str) -> tuple[str, dict[str, str]]:
    """``"redis://h/0?lease_s=5"`` -> ``("redis://h/0", {"lease_s": "5"})`` (last value wins)."""
    base, _, query = url.partition("?")
    return base, {k: v[-1] for k, v in parse_qs(query).items()}


def path_of(url: str) -> Path:
    """The filesystem path of a ``sqlite://`` or ``file://`` URL (``///abs`` or ``//rel``), or of a bare path."""
    base = split_query(url)[0]
    return Path(base.split("://", 1)[1] if "://" in base else base)


def is_redis(url: str) -> bool:
    """Whether ``url`` names a Redis server."""
    return scheme_of(url) in REDIS_SCHEMES


def default_queue_url() -> str:
    """``$HEC_QUEUE`` if set, else :data:`DEFAULT_QUEUE`."""
    return str(settings.get(QUEUE_ENV) or DEFAULT_QUEUE)


def blobs_for_queue(queue_url: str) -> str:
    """The blob store that goes with a queue when none is named.

    Next to an embedded queue: ``sqlite://DIR/queue.db`` -> ``file://DIR/blobs``; with Redis,
    the same server (remote workers cannot see the client's disk).
    """
    if scheme_of(queue_url) == "sqlite":
        return f"file://{path_of(queue_url).parent / 'blobs'}"
    if is_redis(queue_url):
        return split_query(queue_url)[0]
    return "file://.hec/blobs"


def audit_location(queue_url: str) -> str:
    """Where the audit log of a queue lives: ``DIR/audit.jsonl`` for ``sqlite://DIR/queue.db``, else the Redis URL."""
    if scheme_of(queue_url) == "sqlite":
        return str(path_of(queue_url).parent / "audit.jsonl")
    if is_redis(queue_url):
        return split_query(queue_url)[0]
    return os.path.join(".hec", "audit.jsonl")


def hec_home() -> Path:
    """The user's he_compute state directory: ``$HEC_HOME``, else ``~/.hec``."""
    configured = settings.get(HOME_ENV)
    if configured:
        return Path(configured)
    return Path(os.environ.get("HOME") or tempfile.gettempdir()) / ".hec"


def state_dir(queue_url: str) -> Path:
    """Where a client keeps per-queue state (run records, worker logs): next to an embedded queue, else
    :func:`hec_home` (a Redis queue or a coordinator)."""
    if scheme_of(queue_url) == "sqlite":
        return path_of(queue_url).parent
    return hec_home()


def redis_key(kind: str, name: str = "", index: int | None = None) -> str:
    """The one place Redis key names are made (see the module docstring)."""
    if kind == "blob":
        return f"hec:blob:{name}" if index is None else f"hec:blob:{name}:{index}"
    keys = {"job": f"hec:job:{name}", "jobs": "hec:jobs", "stream": f"hec:stream:{name}", "dead": "hec:dead",
            "audit": "hec:audit", "audit_head": "hec:audit:head", "group": f"hec:group:{name}"}
    return keys[kind]


def coordinator_key(name: str) -> str:
    """The Redis key of one of the coordinator's own records (``hec:coord:<name>``)."""
    return f"hec:coord:{name}"


@dataclass(frozen=True)
class Locations:
    """The queue, blob store, audit log and client state directory of one deployment."""

    queue: str
    blobs: str
    audit: str
    state: Path

    @classmethod
    def resolve(cls, queue: str | None = None, blobs: str | None = None) -> Locations:
        """Fill in defaults: the queue from ``$HEC_QUEUE``, the rest next to the queue."""
        q = queue or default_queue_url()
        return cls(queue=q, blobs=blobs or blobs_for_queue(q), audit=audit_location(q), state=state_dir(q))

    @property
    def logs(self) -> Path:
        """Where local workers' logs go."""
        return self.state / "logs"
