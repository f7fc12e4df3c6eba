"""A request-header deadline for uvicorn (which has none of its own): the slowloris guard.

uvicorn closes idle keep-alive connections, but a connection that trickles a
request's header bytes (one every few seconds) resets that timer with each byte
and stays open for ever, before any authentication could refuse it.  This
protocol, a subclass of uvicorn's httptools protocol, gives every request
``header_timeout_s`` from its first byte (or from the connection's start) to
the end of its headers; past that the connection is closed.  A request whose
headers arrived is not affected (bodies are bounded by the routes).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a deadline on each request's headers."""

    header_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
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

    def on_message_begin(self) -> None:
        self._arm()  # the next request on a kept-alive connection: its headers get the same deadline
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def guarded_protocol(header_timeout_s: float) -> Any:
    """The protocol class to pass to ``uvicorn.Config(http=...)``."""
    return type("GuardedHttpTools", (HeaderDeadlineProtocol,), {"header_timeout_s": float(header_timeout_s)})
