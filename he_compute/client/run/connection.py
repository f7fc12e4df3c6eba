"""What a client talks to: the queue (as a producer), the blob store and the audit log, opened and closed together.

A :class:`Connection` takes URLs (or engines someone else opened and will
close) and owns what it opens: ``with Connection(queue_url) as conn:`` closes
the queue and the blob store on the way out.

Example::

    with Connection("sqlite://.hec/queue.db") as conn:
        conn.q.status(job_id); conn.store.exists(digest)
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from ...transport import blobs, queue
from ...transport.audit import AuditLog
from ...transport.blobs import BlobStore
from ...transport.locations import Locations
from ...transport.queue import Producer


class Connection:
    """The queue, blob store and audit location of one deployment, as a client uses them."""

    def __init__(self, queue_: str | Producer | None = None, blobs_: str | BlobStore | None = None):
        self._owned: list[Any] = []
        queue_url = queue_ if isinstance(queue_, str) or queue_ is None else queue_.url
        blobs_url = blobs_ if isinstance(blobs_, str) or blobs_ is None else blobs_.url
        self.where = Locations.resolve(queue_url, blobs_url)
        try:
            self.q: Producer = (self._own(queue.connect(self.where.queue)) if queue_ is None or isinstance(queue_, str)
                                else queue_)
            self.store: BlobStore = (self._own(blobs.connect(self.where.blobs)) if blobs_ is None or isinstance(blobs_, str)
                                     else blobs_)
        except BaseException:
            self.close()
            raise

    def _own(self, engine: Any) -> Any:
        self._owned.append(engine)
        return engine

    @property
    def queue_url(self) -> str:
        """The queue's URL (what local workers are pointed at)."""
        return self.q.url

    @property
    def blobs_url(self) -> str:
        """The blob store's URL."""
        return self.store.url

    @contextmanager
    def audit_log(self, enabled: bool = True) -> Iterator[AuditLog | None]:
        """The audit log kept with the queue, open for the block (``None`` when disabled)."""
        if not enabled:
            yield None
            return
        remote = getattr(self.q, "audit_store", None)  # a coordinator keeps each tenant's log itself
        with (AuditLog(remote()) if callable(remote) else AuditLog.open(self.where.audit)) as log:
            yield log

    def close(self) -> None:
        """Close what this connection opened (not the engines it was handed)."""
        while self._owned:
            self._owned.pop().close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
