"""The ASGI app, its error mapping, first-start set-up, and the uvicorn server (with TLS through uvicorn's options).

Library errors become one JSON line ``{"error": ..., "code": ...}`` with a
status code, at the edge: 401 unauthenticated, 403 out of scope, 404 absent
(another tenant's job or blob reads as absent), 409 conflict, 413 too large,
422 malformed, 429 rate or quota, 503 a backing store failed.  Nothing else
about an exception leaves the process.  The interactive API docs are off:
every route is authenticated, and a schema is no one's business but the code's.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from ..errors import (
    AuthError,
    BlobNotFound,
    FormatError,
    HECError,
    IntegrityError,
    LimitExceeded,
    TransportError,
)
from ..files import private_dir
from .auth import RateLimited, RateLimits, Unauthenticated
from .config import TOKEN_FILES, Settings, write_token
from .routes import clients, workers
from .service import AuditConflict, Coordinator, NoSuchJob, NotYourLease, QuotaExceeded
from .guard import guarded_protocol
from .status import login_page, router as status_router

log = logging.getLogger("he_compute.coordinator")

FIRST_ENROLL_USES = 100
"""New worker keys the first start's ``enroll.token`` admits (later tokens: ``hec coordinator enroll-token``)."""
FIRST_ENROLL_VALID_S = 7 * 24 * 3600.0
"""How long the first start's ``enroll.token`` works."""

# Most specific first: the first class an error is an instance of decides its status and code.
_STATUS: list[tuple[type[BaseException], int, str]] = [
    (Unauthenticated, 401, "unauthenticated"), (NotYourLease, 403, "lease"), (AuthError, 403, "forbidden"),
    (RateLimited, 429, "rate"), (QuotaExceeded, 429, "quota"), (LimitExceeded, 413, "too-large"),
    (IntegrityError, 422, "integrity"), (FormatError, 422, "malformed"), (NoSuchJob, 404, "no-job"),
    (BlobNotFound, 404, "no-blob"), (AuditConflict, 409, "conflict"), (TransportError, 503, "unavailable"),
    (HECError, 400, "refused"),
]


def status_of(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and short code an error maps to."""
    for kind, status, code in _STATUS:
        if isinstance(exc, kind):
            return status, code
    return 500, "internal"


def create_app(coordinator: Coordinator, *, threads: int | None = None) -> FastAPI:
    """The coordinator's app over an opened :class:`Coordinator` (closed when the app shuts down); ``threads``
    sets the size of the thread pool that blocking store calls run in, once the server's loop runs."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if threads is not None:
            import anyio

            anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        try:
            yield
        finally:
            coordinator.close()

    app = FastAPI(title="he_compute coordinator", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.coordinator = coordinator
    coordinator.limits = RateLimits(coordinator.settings.rate_storage, coordinator.settings.worker_rate,
                                    coordinator.settings.tenant_rate)
    app.include_router(clients)
    app.include_router(workers)
    app.include_router(status_router)

    _answer_errors(app)
    return app


def _answer_errors(app: FastAPI) -> None:
    """Every error as one JSON line with a status and a code; a backing store's failure and anything unexpected
    are logged here and answered without detail."""

    @app.exception_handler(HECError)
    async def _hec(request: Request, exc: HECError) -> Any:
        status, code = status_of(exc)
        message = str(exc)
        if status == 503:  # a backing store failed: its message may name hosts or credentials; log it, say less
            log.warning("backing store unavailable on %s %s: %s", request.method, request.url.path, exc)
            message = "the coordinator's queue or blob store is unavailable right now: retry in a moment"
        if status == 401 and request.url.path == "/status":
            return HTMLResponse(login_page(), status_code=401)
        if status == 401 and request.url.path == "/status/login":
            return HTMLResponse(login_page(str(exc)), status_code=401)
        return JSONResponse({"error": message, "code": code}, status_code=status)

    @app.exception_handler(ValidationError)
    async def _invalid(request: Request, exc: ValidationError) -> Any:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid"}
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        return JSONResponse({"error": f"malformed request: {where}: {first.get('msg')}", "code": "malformed"},
                            status_code=422)

    @app.exception_handler(ValueError)
    async def _value(request: Request, exc: ValueError) -> Any:
        return JSONResponse({"error": f"malformed request: {str(exc)[:200]}", "code": "malformed"}, status_code=422)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> Any:
        # The peer left (or its too-slow body was cut by the guard): nothing to answer, and nothing to log, so a
        # stream of cut connections cannot flood the log with tracebacks.
        return JSONResponse({"error": "client disconnected", "code": "gone"}, status_code=408)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Any:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal error (see the coordinator's log)", "code": "internal"},
                            status_code=500)


def first_start(settings: Settings) -> list[Path]:
    """Create the data directory and, the first time, the three token files (0600); return the files written."""
    data = private_dir(settings.data)
    settings.save()
    written = []
    coord_state = Coordinator(settings)
    try:
        for name, kind in TOKEN_FILES.items():
            path = data / name
            if path.exists():
                continue
            if kind == "tenant":
                token = coord_state.state.another_tenant_token("default")
            elif kind == "enroll":
                token = coord_state.state.add_enroll_token("default", uses=FIRST_ENROLL_USES,
                                                           valid_s=FIRST_ENROLL_VALID_S)
            else:
                token = coord_state.state.add_operator_token()
            write_token(path, token)
            written.append(path)
    finally:
        coord_state.close()
    return written


def serve(settings: Settings, host: str, port: int, *, certfile: str | None = None, keyfile: str | None = None,
          log_level: str = "warning") -> None:
    """Run the coordinator until interrupted (uvicorn; TLS when ``certfile`` and ``keyfile`` are given)."""
    import uvicorn

    first_start(settings)
    coordinator = Coordinator(settings)
    # Store calls (claims, uploads, Redis) run in threads; long polls wait on the event loop, not in them.
    app = create_app(coordinator, threads=200)

    config = uvicorn.Config(app, host=host, port=port, ssl_certfile=certfile, ssl_keyfile=keyfile,
                            http=guarded_protocol(settings.header_timeout_s, settings.body_timeout_s,
                                                 settings.min_body_rate, settings.request_timeout_s),
                            log_level=log_level, access_log=False, server_header=False, date_header=False,
                            timeout_keep_alive=30, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run()

