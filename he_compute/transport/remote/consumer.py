"""A worker's side of a coordinator: the :class:`~he_compute.transport.queue.Consumer` role and the blobs of its leases.

Every request is signed with the worker's key (a :class:`~he_compute.formats.receipt.Signer`).
The coordinator decides the worker's name in the queue (its key) and its
operator; the ``worker`` and ``operator`` arguments of :meth:`RemoteConsumer.claim`
are kept for the Protocol and ignored.  :class:`LeaseBlobs` is the
:class:`~he_compute.transport.blobs.BlobStore` a worker gets: it reads only the
blobs its current leases name and writes results for them.

Example::

    session = Session(url, signer=identity)
    enroll(session, identity, token)                  # once, with the operator's enrolment token
    q = RemoteConsumer(session); store = LeaseBlobs(q)
    Worker(q, store, identity=identity).run()
"""

from __future__ import annotations

import base64
import threading
from typing import Any, Iterable

from ...errors import AuthError, FormatError, LimitExceeded, StoreError, TransportError
from ...formats.digests import check_digest, digest_of
from ...formats.receipt import Signer
from .._closing import Closing
from ..blobs.base import max_blob_bytes, verified
from ..queue.base import Job, JobState, Lease
from .session import Session, Streamed
from .wire import API, job_from_wire

CHUNK = 1 << 20


def enroll(session: Session, signer: Signer, token: str) -> dict[str, Any]:
    """Admit ``signer``'s key with an enrolment token (idempotent); returns ``{"worker", "operator"}``."""
    body = {"public_key": base64.b64encode(signer.public_raw).decode()}
    return dict(session.json("POST", f"{API}/enroll", body=body, headers={"authorization": f"Bearer {token}"}))


def _lost(exc: AuthError) -> bool:
    """Whether the coordinator says the job no longer runs under this worker (cancelled or handed on)."""
    return getattr(exc, "code", "") == "lease"


class RemoteConsumer(Closing):
    """Claims and reports through a coordinator, signed by this worker."""

    def __init__(self, session: Session):
        if session.signer is None:
            raise AuthError("a worker's session signs its requests: build it with Session(url, signer=identity)")
        self.session = session
        hello = session.json("GET", f"{API}/worker/hello")
        self.url, self.lease_s = session.url, float(hello["lease_s"])
        self.operator, self.presigned = str(hello["operator"]), bool(hello["presigned"])
        self.gate = bool(hello.get("gate"))  # results go to the coordinator's blob gate
        self.held: dict[str, Lease] = {}
        self.gate_urls: dict[str, dict[str, str]] = {}  # job id -> blob -> the gate's signed read URL
        self._lock = threading.Lock()

    def claim(self, worker: str, *, devices: Iterable[str] = ("cpu",), block_s: float = 0.0,
              operator: str | None = None) -> Lease | None:
        """A lease on a job for ``devices`` (or routed to this worker), waiting up to ``block_s``."""
        out = self.session.json("POST", f"{API}/worker/claim", body={"devices": list(devices),
                                                                          "block_s": float(block_s)},
                                timeout_s=float(block_s) + 30.0)
        if out.get("lease") is None:
            return None
        try:
            job: Job = job_from_wire(out["lease"]["job"])
        except (FormatError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"the coordinator sent an unreadable lease ({exc})") from None
        lease = Lease(job=job, token=str(out["lease"]["token"]), worker=self.session.signer.worker_id)  # type: ignore[union-attr]
        urls = out["lease"].get("gate")
        with self._lock:
            self.held[job.id] = lease
            if isinstance(urls, dict):
                self.gate_urls[job.id] = {str(d): str(u) for d, u in urls.items()}
        return lease

    def _drop(self, lease: Lease) -> None:
        with self._lock:
            self.held.pop(lease.job.id, None)
            self.gate_urls.pop(lease.job.id, None)

    def _post(self, lease: Lease, what: str, body: dict[str, Any]) -> Any:
        return self.session.json("POST", f"{API}/worker/jobs/{lease.job.id}/{what}",
                                 body={"token": lease.token, **body})

    def heartbeat(self, lease: Lease, progress: dict[str, Any] | None = None) -> bool:
        """Extend the lease; ``False`` once the job is no longer this worker's."""
        try:
            return bool(self._post(lease, "heartbeat", {"progress": progress})["ok"])
        except AuthError as exc:
            if _lost(exc):
                return False
            raise

    def complete(self, lease: Lease, result: dict[str, Any]) -> bool:
        """Report the result; ``False`` if the lease is no longer this worker's."""
        try:
            return bool(self._post(lease, "complete", {"result": result})["accepted"])
        except AuthError as exc:
            if _lost(exc):
                return False
            raise
        finally:
            self._drop(lease)

    def fail(self, lease: Lease, error: str, *, retry: bool = True) -> JobState:
        """Report a failure; the state the job went to."""
        try:
            return JobState(self._post(lease, "fail", {"error": str(error)[:4000], "retry": bool(retry)})["state"])
        except AuthError as exc:
            if _lost(exc):
                return JobState.RUNNING  # it runs elsewhere now, or was cancelled: nothing of ours changed it
            raise
        finally:
            self._drop(lease)

    def release(self, lease: Lease) -> None:
        """Give the job back unrun."""
        try:
            self._post(lease, "release", {})
        except AuthError as exc:
            if not _lost(exc):
                raise
        finally:
            self._drop(lease)

    def lease_naming(self, digest: str) -> Lease | None:
        """A held lease whose job names ``digest``."""
        with self._lock:
            for lease in self.held.values():
                spec = lease.job.spec
                if digest in (spec.get("server"), spec.get("keys")) or digest in (spec.get("inputs") or []):
                    return lease
        return None

    def current(self) -> Lease:
        """The most recent lease held (results are uploaded for it)."""
        with self._lock:
            if not self.held:
                raise AuthError("no lease held: a worker uploads results only for a job it holds")
            return list(self.held.values())[-1]

    def close(self) -> None:
        """Close the session."""
        self.session.close()


def read_stream(resp: Any, digest: str, where: str, limit: int | None = None) -> bytes:
    """Read a streamed blob response, refusing it past ``limit`` bytes, and check it against ``digest``."""
    limit = limit or max_blob_bytes()
    parts, n = [], 0
    try:
        for chunk in resp.iter_bytes(CHUNK):
            n += len(chunk)
            if n > limit:
                raise LimitExceeded(f"blob {digest[:19]} from {where} is over {limit} bytes: refused")
            parts.append(chunk)
    finally:
        resp.close()
    return verified(digest, b"".join(parts), where)


def fetch(session: Session, path: str, digest: str) -> bytes:
    """GET a blob from the coordinator, following its redirect to a presigned URL, checked against ``digest``."""
    resp = session.request("GET", path, stream=True)
    if resp.status_code == 303:
        resp.close()
        resp = session.get_plain(resp.headers["location"])
    return read_stream(resp, digest, session.url)


def chunks_of(data: bytes) -> Any:
    """A body factory that streams ``data`` in pieces (no copy)."""
    view = memoryview(data)
    return lambda: (bytes(view[i : i + CHUNK]) for i in range(0, max(1, len(view)), CHUNK))


class LeaseBlobs(Closing):
    """The worker's blob store: the blobs named by its held leases, and result uploads for them."""

    def __init__(self, consumer: RemoteConsumer):
        self.consumer, self.session = consumer, consumer.session
        self.url = f"{consumer.url}{API}/worker"

    def get(self, digest: str) -> bytes:
        """A blob named by a held lease (streamed, or from a presigned URL), checked against its digest."""
        check_digest(digest)
        lease = self.consumer.lease_naming(digest)
        if lease is None:
            raise AuthError(f"blob {digest[:19]} is not named by any lease this worker holds")
        url = self.consumer.gate_urls.get(lease.job.id, {}).get(digest)
        if url is not None:
            try:
                return read_stream(self.session.get_plain(url), digest, "the blob gate")
            except TransportError:
                pass  # expired (a long job) or refused: the coordinator signs a fresh URL below
        return fetch(self.session, f"{API}/worker/jobs/{lease.job.id}/blobs/{digest}", digest)

    def put(self, data: bytes) -> str:
        """Upload a result blob for the current lease (streamed, or to the gate or a presigned URL); returns its
        digest."""
        digest = digest_of(data)
        job = self.consumer.current().job.id
        path = f"{API}/worker/jobs/{job}/outputs/{digest}"
        if self.consumer.gate:
            ticket = self.session.json("POST", f"{path}/upload", body={"size": len(data)})
            self.session.put_plain(str(ticket["gate"]), bytes(data), ticket.get("headers", {}))
            return digest
        if not self.consumer.presigned:
            self.session.request("PUT", path, body=Streamed(chunks_of(data), digest.split(":", 1)[1]),
                                 headers={"content-length": str(len(data))}).close()
            return digest
        ticket = self.session.json("POST", f"{path}/upload", body={"size": len(data)})
        self.session.put_plain(ticket["url"], bytes(data), ticket.get("headers", {}))
        self.session.json("POST", f"{path}/commit", body={"staging": ticket["staging"]})
        return digest

    def exists(self, digest: str) -> bool:
        """Whether a held lease names ``digest`` (a worker sees nothing else)."""
        return self.consumer.lease_naming(digest) is not None

    def delete(self, digest: str) -> None:
        """Workers delete nothing."""
        raise AuthError("workers cannot delete blobs")

    def close(self) -> None:
        """The session belongs to the consumer."""

