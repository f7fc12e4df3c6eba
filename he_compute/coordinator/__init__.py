"""The coordinator: the one party that holds the queue and the blob store, and gives everyone else a narrow door.

Untrusted workers and tenants never see the queue's database or the blob
store's credentials.  They speak HTTPS to the coordinator (FastAPI on uvicorn),
which authenticates every request (:mod:`.auth`) and lets each caller do only
its part (:mod:`.service`):

* a **worker** signs each request with its Ed25519 key; it is admitted by an
  enrolment token or the operator's allow-list, under an operator; it claims
  jobs for its devices or routed to itself, heartbeats, completes, fails or
  releases only its own lease, reads only the blobs its lease names and uploads
  size-capped, digest-checked results for it;
* a **tenant** (bearer token) submits and steers only its own jobs, reads only
  its own blobs and its own audit log, within quotas;
* the **operator** reads the status page (:mod:`.status`).

Layout: :mod:`.config` (settings, data directory), :mod:`.kv` and :mod:`.state`
(its records, on SQLite or a shared Redis), :mod:`.blobs` (streaming and
presigned transfer), :mod:`.service` (the rules), :mod:`.auth` and
:mod:`.routes` (HTTP), :mod:`.app` (errors, first start, uvicorn).  The
clients of this protocol live in :mod:`he_compute.transport.remote`.
"""

from __future__ import annotations

from .app import create_app, first_start, serve
from .config import Settings
from .service import Coordinator

__all__ = ["Coordinator", "Settings", "create_app", "first_start", "serve"]
