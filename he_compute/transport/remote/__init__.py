"""Speaking to a coordinator over HTTPS: the same roles as a queue and a blob store, with narrow rights.

Instead of a queue URL and blob-store credentials, a party gets a coordinator
URL and its own credential:

* a **tenant** (client) has a token: :func:`open_tenant` returns a
  :class:`RemoteProducer` (the :class:`~he_compute.transport.queue.Producer`
  role, plus the tenant's audit log) and a :class:`RemoteBlobs` store;
* a **worker** has its Ed25519 identity: :func:`open_worker` enrols it once with
  an enrolment token if given, and returns a :class:`RemoteConsumer` (the
  :class:`~he_compute.transport.queue.Consumer` role) and a :class:`LeaseBlobs`
  store, so :class:`~he_compute.worker.loop.Worker` runs over it unchanged.

The protocol is :mod:`.wire`; the HTTPS session, failover and error mapping
:mod:`.session`.  URL, token file and CA come from arguments, else from
``HEC_COORDINATOR``, ``HEC_TOKEN_FILE``, ``HEC_CA_FILE``, else from the config
file ``$HEC_CONFIG`` (default ``$HEC_HOME/config.toml``: ``coordinator``,
``token_file``, ``ca_file`` keys).

Example::

    q, store = open_tenant("https://coord.example:8443", token_file="client.token")
    job = q.submit(spec); q.status(job).state
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from ... import settings
from ...errors import TransportError
from ...formats.receipt import Signer
from ..locations import hec_home
from .blobs import RemoteBlobs
from .consumer import LeaseBlobs, RemoteConsumer, enroll
from .producer import RemoteAuditStore, RemoteProducer
from .session import Session, read_token

__all__ = ["LeaseBlobs", "RemoteAuditStore", "RemoteBlobs", "RemoteConsumer", "RemoteProducer", "Session",
           "client_settings", "enroll", "open_tenant", "open_worker", "read_token"]

ENV = {"coordinator": "HEC_COORDINATOR", "token_file": "HEC_TOKEN_FILE", "ca_file": "HEC_CA_FILE"}


def client_settings(coordinator: str | None = None, token_file: str | None = None,
                    ca_file: str | None = None) -> dict[str, str | None]:
    """Fill in the coordinator URL, token file and CA file from the environment, then the config file."""
    given = {"coordinator": coordinator, "token_file": token_file, "ca_file": ca_file}
    config_path = Path(settings.get("HEC_CONFIG") or hec_home() / "config.toml")
    config: dict[str, Any] = {}
    if config_path.exists():
        try:
            config = tomllib.loads(config_path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise TransportError(f"cannot read {config_path}: {exc}") from None
    return {k: v or settings.get(ENV[k]) or (str(config[k]) if config.get(k) else None) for k, v in given.items()}


def open_tenant(coordinator: str | None = None, *, token: str | None = None, token_file: str | None = None,
                ca_file: str | None = None) -> tuple[RemoteProducer, RemoteBlobs]:
    """A tenant's producer and blob store (they share one session; closing the producer closes it)."""
    s = client_settings(coordinator, token_file, ca_file)
    if not s["coordinator"]:
        raise TransportError("no coordinator: pass --coordinator URL or set HEC_COORDINATOR")
    if token is None:
        if not s["token_file"]:
            raise TransportError("no tenant token: pass --token-file FILE or set HEC_TOKEN_FILE")
        token = read_token(s["token_file"])
    session = Session(s["coordinator"], token=token, ca=s["ca_file"])
    return RemoteProducer(session), RemoteBlobs(session)


def open_worker(coordinator: str, signer: Signer, *, token_file: str | None = None,
                ca_file: str | None = None) -> tuple[RemoteConsumer, LeaseBlobs]:
    """A worker's consumer and blob store, enrolling ``signer`` first when an enrolment token file is given.

    The enrolment token is taken only from ``token_file`` (never from ``HEC_TOKEN_FILE``, a tenant's).
    """
    s = client_settings(coordinator, None, ca_file)
    session = Session(s["coordinator"] or coordinator, signer=signer, ca=s["ca_file"])
    try:
        if token_file:
            enroll(session, signer, read_token(token_file))
        consumer = RemoteConsumer(session)
    except BaseException:
        session.close()
        raise
    return consumer, LeaseBlobs(consumer)
