"""Request deadlines for uvicorn (which has none of its own): the slowloris guards.

uvicorn closes idle keep-alive connections, but a connection that trickles a
request's header bytes (one every few seconds) resets that timer with each byte
and stays open for ever, before any authentication could refuse it.  This
protocol, a subclass of uvicorn's httptools protocol, gives every request
``header_timeout_s`` from its first byte (or from the connection's start) to
the end of its headers; past that the connection is closed.

A body trickled one byte a second would hold a connection, and the worker
slot of the route awaiting it, just as long, so a body must also keep coming:
over every ``body_timeout_s`` window at least ``min_body_rate`` bytes a second
must arrive (windows in which uvicorn itself paused reading, because the route
is slow to consume, do not count).  And each request, from its first byte to
the end of its answer, gets ``request_timeout_s`` in all, which ends bodies
sent just fast enough for ever and readers that never drain an answer.  A
request cut while no answer was started gets a one-line 408 in the house
format; otherwise the connection is just closed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a deadline on each request's headers."""

    header_timeout_s = 10.0
    body_timeout_s = 10.0
    min_body_rate = 1024
    request_timeout_s = 3600.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        self._body_watch: asyncio.TimerHandle | None = None
        self._request_deadline: asyncio.TimerHandle | None = None
        self._body_bytes = 0
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        # Only between requests: a request whose headers arrived runs to its end.
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()

    def _cut(self, why: str) -> None:
        """End the request: a one-line 408 if no answer was started, then close."""
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started:
            body = json.dumps({"error": why, "code": "timeout"}).encode()
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        self.transport.close()

    def _watch_body(self) -> None:
        self._body_watch = None
        arrived, self._body_bytes = self._body_bytes, 0
        if arrived < self.min_body_rate * self.body_timeout_s and not self.flow.read_paused:
            self._cut(f"request body too slow: send at least {self.min_body_rate} bytes a second")
        else:
            self._body_watch = self.loop.call_later(self.body_timeout_s, self._watch_body)

    def _request_too_long(self) -> None:
        self._request_deadline = None
        self._cut(f"request not done within {self.request_timeout_s:g} s: send it faster or in parts")

    def _stop_body_watch(self) -> None:
        if self._body_watch is not None:
            self._body_watch.cancel()
            self._body_watch = None

    def on_message_begin(self) -> None:
        self._arm()  # the next request on a kept-alive connection: its headers get the same deadline
        if self._request_deadline is None:
            self._request_deadline = self.loop.call_later(self.request_timeout_s, self._request_too_long)
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        self._body_bytes = 0
        self._stop_body_watch()
        self._body_watch = self.loop.call_later(self.body_timeout_s, self._watch_body)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._stop_body_watch()
        super().on_message_complete()
        self._maybe_done()

    def on_response_complete(self) -> None:
        self._maybe_done()
        super().on_response_complete()

    def _maybe_done(self, lost: bool = False) -> None:
        # A request is done when its body has arrived AND its answer has left: an early answer (a 401 before the
        # body) must not free a body that keeps coming from the total bound.
        done = self._body_watch is None and (self.cycle is None or self.cycle.response_complete)
        if (lost or done) and self._request_deadline is not None:
            self._request_deadline.cancel()
            self._request_deadline = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._stop_body_watch()
        self._maybe_done(lost=True)
        super().connection_lost(exc)


def guarded_protocol(header_timeout_s: float, body_timeout_s: float = 10.0, min_body_rate: int = 1024,
                     request_timeout_s: float = 3600.0) -> Any:
    """The protocol class to pass to ``uvicorn.Config(http=...)``."""
    return type("GuardedHttpTools", (HeaderDeadlineProtocol,), {
        "header_timeout_s": float(header_timeout_s), "body_timeout_s": float(body_timeout_s),
        "min_body_rate": int(min_body_rate), "request_timeout_s": float(request_timeout_s)})
