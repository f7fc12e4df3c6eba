"""The operator's read-only status page: jobs by state, throughput, workers and their operators, dead letters.

``GET /status`` answers 401 with a login form until the browser holds the
operator cookie; the form posts the operator token (``DATA/operator.token``) to
``/status/login``, which sets an HttpOnly, SameSite=Strict cookie.  The page is
plain server-rendered HTML (every value escaped), refreshed by the browser
every few seconds; ``GET /v1/operator/status`` is the same data as JSON.
"""

from __future__ import annotations

import html
import time
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from . import auth
from .auth import COOKIE, Unauthenticated

router = APIRouter()

_STYLE = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
          "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}")


def login_page(message: str = "") -> str:
    """The login form (also the body of a 401 on ``/status``)."""
    note = f"<p id='message'>{html.escape(message)}</p>" if message else ""
    return (f"<!doctype html><html><head><title>he_compute coordinator: sign in</title><style>{_STYLE}</style>"
            f"</head><body><h1>Coordinator status</h1>{note}<form method='post' action='/status/login'>"
            "<label>Operator token <input id='token' name='token' type='password' autocomplete='off'></label> "
            "<button id='login' type='submit'>Sign in</button></form></body></html>")


async def login_form(request: Request) -> str:
    """The operator token posted by the login form; :class:`Unauthenticated` unless it is the operator's."""
    body = await auth.body_of(request)
    token = (parse_qs(body.decode(errors="replace")).get("token") or [""])[-1].strip()
    coord = request.app.state.coordinator
    if await run_in_threadpool(coord.state.token_meaning, token) != "operator:":
        raise Unauthenticated("that is not the operator token (DATA/operator.token)")
    return token


def _table(rows: list[dict[str, Any]], columns: list[str], table_id: str) -> str:
    if not rows:
        return f"<p id='{table_id}-empty'>none</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f"<table id='{table_id}'><tr>{head}</tr>{body}</table>"


def render(data: dict[str, Any]) -> str:
    """The status page for :meth:`~.service.Coordinator.overview` data."""
    jobs = [{"state": s, "jobs": n} for s, n in data["jobs"].items()]
    minutes = data["done_per_minute"]
    full = minutes[:-1] or minutes
    rate = sum(n for _, n in full) / (60.0 * len(full))
    now = time.time()
    workers = [{**w, "seen": f"{now - w['seen']:.0f}s ago" if w["seen"] else "never"} for w in data["workers"]]
    return (f"<!doctype html><html><head><title>he_compute coordinator</title><meta http-equiv='refresh' content='5'>"
            f"<style>{_STYLE}</style></head><body><h1>Coordinator status</h1>"
            f"<p>queue <b>{html.escape(data['queue'])}</b>, blobs <b>{html.escape(data['blobs'])}</b>, "
            f"tenants {len(data['tenants'])}</p>"
            f"<h2>Jobs by state</h2>{_table(jobs, ['state', 'jobs'], 'jobs')}"
            f"<h2>Throughput</h2><p id='throughput'>{rate:.2f} jobs/s over the last {len(full)} full minute(s); "
            f"{minutes[-1][1]} done this minute</p>"
            f"<h2>Workers</h2>{_table(workers, ['worker', 'operator', 'how', 'seen', 'claimed', 'done', 'failed', 'flagged', 'revoked'], 'workers')}"
            f"<h2>Dead letters</h2>{_table(data['dead'], ['job', 'attempts', 'error'], 'dead')}"
            "</body></html>")


@router.get("/status", response_class=HTMLResponse)
async def status_page(request: Request, _: None = Depends(auth.operator)) -> HTMLResponse:
    data = await run_in_threadpool(request.app.state.coordinator.overview)
    return HTMLResponse(render(data))


@router.post("/status/login")
async def login(request: Request, token: str = Depends(login_form)) -> RedirectResponse:
    response = RedirectResponse("/status", status_code=303)
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                        path="/")
    return response


@router.get("/v1/operator/status")
async def status_json(request: Request, _: None = Depends(auth.operator)) -> dict[str, Any]:
    return await run_in_threadpool(request.app.state.coordinator.overview)
