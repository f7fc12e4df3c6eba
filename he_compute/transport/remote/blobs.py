"""A tenant's blob store at a coordinator: its own namespace, streamed or by presigned URL.

A tenant sees only blobs it uploaded and the results of its own jobs; another
tenant's blob reads as absent even when the same bytes are stored.  To put a
blob in its namespace a tenant must send the bytes (checked against their
digest on arrival), so it cannot learn what others stored.  Reads are checked
against the digest here too.
"""

from __future__ import annotations

from ...formats.digests import check_digest, digest_of
from .._closing import Closing
from .consumer import chunks_of, fetch
from .session import Session, Streamed
from .wire import API


class RemoteBlobs(Closing):
    """The :class:`~he_compute.transport.blobs.BlobStore` of one tenant at a coordinator.

    Example::

        store = RemoteBlobs(Session("https://coord:8443", token=token)); d = store.put(b"x"); store.get(d)
    """

    def __init__(self, session: Session):
        self.session = session
        self.url = f"{session.url}{API}/blobs"

    def put(self, data: bytes) -> str:
        """Upload unless the namespace has it (streamed to the coordinator, or to S3 by presigned URL)."""
        digest = digest_of(data)
        path = f"{API}/blobs/{digest}"
        ticket = self.session.json("POST", f"{path}/upload", body={"size": len(data)})
        if ticket.get("have"):
            return digest
        if "url" in ticket:
            self.session.put_plain(ticket["url"], bytes(data), ticket.get("headers", {}))
            self.session.json("POST", f"{path}/commit", body={"staging": ticket["staging"]})
            return digest
        self.session.request("PUT", path, body=Streamed(chunks_of(data)),
                             headers={"content-length": str(len(data))}).close()
        return digest

    def get(self, digest: str) -> bytes:
        """A blob of this tenant's namespace, checked against its digest."""
        check_digest(digest)
        return fetch(self.session, f"{API}/blobs/{digest}", digest)

    def exists(self, digest: str) -> bool:
        """Whether this tenant's namespace holds ``digest``."""
        check_digest(digest)
        return bool(self.session.json("GET", f"{API}/blobs/{digest}/exists")["exists"])

    def delete(self, digest: str) -> None:
        """Take ``digest`` out of this tenant's namespace."""
        check_digest(digest)
        self.session.json("DELETE", f"{API}/blobs/{digest}")

    def close(self) -> None:
        """The session belongs to whoever opened it."""
