"""One HTTPS session with a coordinator (httpx): authentication on every request, failover, errors translated.

A :class:`Session` holds one or more coordinator URLs (``https://a:8443,https://b:8443``:
several coordinator processes over one Redis); when one cannot be reached it
moves on to the next.  A request is retried elsewhere only when it cannot have
taken effect (the connection failed) or is safe to repeat (reads; submissions
carry an idempotency key).  Every request carries either the tenant's bearer
token or the worker's signature (:func:`.wire.sign_request`).  Error responses
become the library's own exceptions (:func:`raise_for`): 401/403
:class:`~he_compute.errors.AuthError`, 404 :class:`~he_compute.errors.BlobNotFound`
or :class:`~he_compute.errors.QueueError`, 413/429 quota
:class:`~he_compute.errors.LimitExceeded`, 422 :class:`~he_compute.errors.FormatError`,
other failures :class:`~he_compute.errors.TransportError` (worth retrying).
"""

from __future__ import annotations

import json
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import urlencode

from ... import settings
from ...errors import (
    AuthError,
    BlobNotFound,
    FormatError,
    HECError,
    IntegrityError,
    LimitExceeded,
    QueueError,
    TransportError,
)
from ...formats.receipt import Signer
from .wire import sign_request

CA_ENV = "HEC_CA_FILE"
"""A PEM file of certificate authorities to trust for the coordinator (a private CA), when ``ca`` is not given."""
TIMEOUT_S = 60.0
PATIENCE_S = 30.0
"""How long a request keeps trying (every coordinator, with back-off) while none answers, or all answer 503
(their Redis restarting): long enough to ride out a restart, short enough to report a dead deployment."""


def read_token(path: str | os.PathLike[str]) -> str:
    """The token in ``path`` (first line); a one-line error when it is missing, empty or readable by others."""
    p = Path(path)
    try:
        mode = p.stat().st_mode & 0o777
        text = p.read_text().strip()
    except OSError as exc:
        raise AuthError(f"cannot read token file {p}: {exc.strerror}; pass --token-file FILE") from exc
    if mode & 0o077:
        raise AuthError(f"token file {p} is readable by others (mode {mode:04o}): chmod 600 it")
    if not text:
        raise AuthError(f"token file {p} is empty")
    return text.splitlines()[0].strip()


def raise_for(status: int, body: bytes, where: str) -> None:
    """Raise the library error an error response stands for (its ``code`` attribute is the coordinator's code)."""
    try:
        payload = json.loads(body)
        message, code = str(payload.get("error"))[:500], str(payload.get("code", ""))
    except (ValueError, AttributeError):
        message, code = body[:200].decode(errors="replace") or f"HTTP {status}", ""
    kind: type[HECError]
    if status in (401, 403):
        kind = AuthError
    elif status == 404:
        kind = BlobNotFound if code == "no-blob" else QueueError
    elif status == 413 or (status == 429 and code == "quota"):
        kind = LimitExceeded
    elif status == 422:
        kind = IntegrityError if code == "integrity" else FormatError
    elif status == 409:
        kind = QueueError
    else:
        kind = TransportError
    exc = kind(f"coordinator {where}: {message}")
    setattr(exc, "code", code)  # the coordinator's machine-readable reason, for callers that branch on it
    raise exc


def _ssl_context(ca: str | None) -> ssl.SSLContext | bool:
    cafile = ca or settings.get(CA_ENV) or None
    return ssl.create_default_context(cafile=cafile) if cafile else True


@dataclass(frozen=True)
class Streamed:
    """A request body sent in chunks: ``chunks()`` makes a fresh iterator for each attempt; ``sha256`` (hex), when
    given, is the body's digest, which a worker's signature declares up front (the coordinator checks it as the
    bytes arrive)."""

    chunks: Callable[[], Any]
    sha256: str | None = None


class _Arrived(TransportError):
    """The connection failed after the request was sent: it may have taken effect."""


class Session:
    """Authenticated requests to a coordinator; see the module docstring."""

    def __init__(self, urls: str | Iterable[str], *, token: str | None = None, signer: Signer | None = None,
                 ca: str | None = None, timeout_s: float = TIMEOUT_S):
        import httpx

        self.urls = [u.strip().rstrip("/") for u in (urls.split(",") if isinstance(urls, str) else urls) if u.strip()]
        if not self.urls:
            raise TransportError("no coordinator URL: pass --coordinator https://HOST:PORT (or set HEC_COORDINATOR)")
        for u in self.urls:
            if not u.startswith(("https://", "http://")):
                raise TransportError(f"{u!r} is not a coordinator URL: use https://HOST:PORT")
        self.token, self.signer, self._i = token, signer, 0
        timeout = httpx.Timeout(timeout_s, connect=5.0)
        self._http = httpx.Client(verify=_ssl_context(ca), timeout=timeout, follow_redirects=False)
        # Presigned and gate URLs: no credentials of ours ever go there.  They trust the coordinator's CA as
        # well as the system's, since a blob gate (hec coordinator gate) is served under the coordinator's.
        plain = ssl.create_default_context()
        if cafile := ca or settings.get(CA_ENV) or None:
            plain.load_verify_locations(cafile=cafile)
        self._plain = httpx.Client(timeout=timeout, verify=plain)

    @property
    def url(self) -> str:
        """The coordinator in use now."""
        return self.urls[self._i]

    def _headers(self, method: str, path: str, body: bytes, body_sha256: str | None) -> dict[str, str]:
        if self.signer is not None:
            return sign_request(self.signer, method, path, body, body_sha256=body_sha256)
        return {"authorization": f"Bearer {self.token}"} if self.token else {}

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None, body: Any = None,
                headers: dict[str, str] | None = None, retry: bool = True, stream: bool = False,
                timeout_s: float | None = None) -> Any:
        """Send one request (to the next coordinator if this one cannot be reached); return the httpx response.

        ``body``: a JSON value, or a :class:`Streamed` upload (a fresh chunk iterator per attempt).  ``headers``
        go on top of the session's credentials (enrolment adds its token there).  ``retry=False`` retries only
        when the request cannot have arrived.
        """
        import httpx

        query = {k: v for k, v in (params or {}).items() if v is not None}
        full = path + (f"?{urlencode(query)}" if query else "")
        streamed = body if isinstance(body, Streamed) else None
        data = b"" if body is None or streamed else json.dumps(body, separators=(",", ":")).encode()
        deadline, attempt, pause, last = time.monotonic() + PATIENCE_S, 0, 0.2, None
        while True:
            if attempt and attempt % len(self.urls) == 0:  # every coordinator failed once: wait, then go round again
                if time.monotonic() + pause > deadline:
                    break
                time.sleep(pause)
                pause = min(2.0, pause * 2)
            attempt += 1
            base = self.url
            hdrs = {**self._headers(method, full, data, streamed.sha256 if streamed else None), **(headers or {})}
            if body is not None and not streamed:
                hdrs["content-type"] = "application/json"
            req = self._http.build_request(method, base + full, headers=hdrs,
                                           content=streamed.chunks() if streamed else data,
                                           timeout=timeout_s or httpx.USE_CLIENT_DEFAULT)
            outcome = self._attempt(base, req, stream, deadline)
            if not isinstance(outcome, Exception):
                return outcome
            last = outcome
            if isinstance(outcome, _Arrived) and not retry:
                break
            self._i = (self._i + 1) % len(self.urls)
        raise TransportError(f"cannot reach the coordinator at {', '.join(self.urls)} ({type(last).__name__}: "
                             f"{last}): is it running, and is the URL and CA right?")

    def _attempt(self, base: str, req: Any, stream: bool, deadline: float) -> Any:
        """One try at coordinator ``base``: the response, or the exception that says to try elsewhere (an
        :class:`_Arrived` when the request may have taken effect).  An error answer raises (:func:`raise_for`)."""
        import httpx

        try:
            resp = self._http.send(req, stream=stream)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            return exc
        except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadTimeout,
                httpx.WriteTimeout) as exc:
            return _Arrived(f"{type(exc).__name__}: {exc}")
        if resp.status_code in (502, 503) and time.monotonic() < deadline:
            failed = TransportError(f"HTTP {resp.status_code}: {resp.read()[:200]!r}")
            resp.close()
            return failed
        if resp.status_code >= 400:
            data = resp.read()
            resp.close()
            raise_for(resp.status_code, data, base)
        return resp

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """``request`` and parse the JSON answer."""
        resp = self.request(method, path, **kwargs)
        try:
            return resp.json()
        except ValueError:
            raise TransportError(f"coordinator {self.url} sent something that is not JSON") from None

    def get_plain(self, url: str, *, stream: bool = True) -> Any:
        """GET a presigned URL (no credentials of ours)."""
        import httpx

        try:
            resp = self._plain.send(self._plain.build_request("GET", url), stream=stream)
        except httpx.HTTPError as exc:
            raise TransportError(f"cannot fetch a presigned blob URL ({type(exc).__name__})") from exc
        if resp.status_code >= 400:
            resp.close()
            raise TransportError(f"the blob store refused a presigned URL (HTTP {resp.status_code})")
        return resp

    def put_plain(self, url: str, content: Any, headers: dict[str, str]) -> None:
        """PUT to a presigned URL (no credentials of ours)."""
        import httpx

        try:
            resp = self._plain.put(url, content=content, headers=headers)
        except httpx.HTTPError as exc:
            raise TransportError(f"cannot upload to a presigned blob URL ({type(exc).__name__})") from exc
        if resp.status_code >= 400:
            raise TransportError(f"the blob store refused a presigned upload (HTTP {resp.status_code})")

    def close(self) -> None:
        """Close the connections."""
        self._http.close()
        self._plain.close()
