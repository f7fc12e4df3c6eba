"""A coordinator's settings and its data directory (``hec coordinator --data DIR``).

On first start the data directory gets (0700; every secret 0600):

* ``coordinator.json``: where the queue, blob store and state live, so later
  ``hec coordinator ...`` subcommands (new tenants, enrolment tokens) reach the
  same records;
* ``client.token``: the token of tenant ``default``;
* ``enroll.token``: an enrolment token for operator ``default``;
* ``operator.token``: the token of the read-only status page.

Embedded default: ``sqlite://DIR/queue.db``, ``file://DIR/blobs`` and the
coordinator's own records in ``DIR/coordinator.db``.  With ``--queue redis://...``
the records live in the same Redis (so several coordinator processes share
them) unless ``--state`` names another.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import HECError
from ..files import PRIVATE, atomic_write, private_dir
from ..transport.locations import is_redis, split_query

CONFIG_FILE = "coordinator.json"
TOKEN_FILES = {"client.token": "tenant", "enroll.token": "enroll", "operator.token": "operator"}


@dataclass
class Settings:
    """Everything a coordinator process needs; secrets (Redis passwords in URLs) stay in the 0600 config file."""

    data: str
    queue: str = ""
    blobs: str = ""
    state: str = ""
    lease_s: float = 30.0
    max_upload_mb: int = 1024        # one blob from a tenant (evaluation keys run to hundreds of MB)
    max_result_mb: int = 256         # one result blob from a worker
    worker_rate: str = "200/second"  # per worker key (limits' notation)
    tenant_rate: str = "500/second"  # per tenant token
    max_block_s: float = 10.0        # the longest a claim may wait for work
    long_polls_per_worker: int = 4   # claims one worker key may hold waiting at once (more answer at once, empty)
    long_polls_per_operator: int = 64  # the same for all keys of one operator (shared by processes over one Redis)
    header_timeout_s: float = 10.0   # a connection must send a request's headers within this (slowloris)
    gate: str = ""                   # URL of a blob gate (hec coordinator gate) serving lease blobs; "": none
    body_timeout_s: float = 10.0     # the window over which a request body must keep up min_body_rate
    min_body_rate: int = 1024        # bytes a second a request body must arrive at, per window (else 408)
    request_timeout_s: float = 3600.0  # one request, first byte to the end of its answer (else 408 or closed)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        data = Path(self.data)
        self.queue = self.queue or f"sqlite://{(data / 'queue.db').absolute()}"
        self.blobs = self.blobs or f"file://{(data / 'blobs').absolute()}"
        if not self.state:
            self.state = split_query(self.queue)[0] if is_redis(self.queue) else f"sqlite://{(data / 'coordinator.db').absolute()}"

    @property
    def rate_storage(self) -> str:
        """Where rate-limit counters live: the shared Redis when the coordinator runs on Redis (so N coordinator
        processes hold a caller to one rate, not N), this process's memory when embedded (one process)."""
        return self.state if is_redis(self.state) else "memory://"

    def save(self) -> None:
        """Write ``coordinator.json`` (0600: Redis and S3 URLs may carry credentials)."""
        private_dir(self.data)
        atomic_write(Path(self.data) / CONFIG_FILE, json.dumps(asdict(self), indent=2).encode(), PRIVATE)

    @classmethod
    def load(cls, data: str | os.PathLike[str], **overrides: Any) -> Settings:
        """The settings saved in ``data`` (if any), with ``overrides`` that are not ``None`` on top."""
        path = Path(data) / CONFIG_FILE
        saved: dict[str, Any] = {}
        if path.exists():
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise HECError(f"cannot read {path}: {exc}; fix or delete it") from exc
        saved.update({k: v for k, v in overrides.items() if v is not None})
        saved["data"] = str(data)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in saved.items() if k in known})


def write_token(path: Path, token: str) -> None:
    """Write a token file, 0600."""
    atomic_write(path, (token + "\n").encode(), PRIVATE)
