"""The /v1 gate, an ASGI middleware: what is checked before a request's body is read.

FastAPI reads (and spools) a whole multipart body before any handler or dependency runs, so the token and the
size limit cannot wait for them: a client without the token could otherwise stream any amount of data. This
middleware, around the whole app, answers HTTP requests and WebSocket handshakes under ``/v1``:

- 403 for a request from a web page of another site, or to a name that is not the service's (``Host`` and
  ``Origin`` below), HTTP and WebSocket alike;
- 401 without the right bearer token (when the service has one), before a byte of the body is read;
- 413 when Content-Length is above the route's limit, or, whatever the transfer encoding (chunked included), as
  soon as the bytes received pass it;
- an optional ``refuse(scope)`` check (e.g. 507 when the disk is nearly full) before the body.

Host and Origin. A page on any site can make the browser send requests to a service on loopback (a form post, a
``fetch``, a WebSocket), and through DNS rebinding (its own name resolved to 127.0.0.1) even read the answers.
So a request is refused when:

- its ``Host`` is a DNS name other than ``localhost`` and not in ``allowed_hosts`` (an IP address or
  ``localhost`` cannot be rebound; a name given to the service through a proxy or DNS must be listed);
- it comes from a page (``Origin``, or without it ``Sec-Fetch-Site``) of another origin than the service's own,
  unless that origin is in ``allowed_origins``. Clients that are not browsers send neither header.

It also turns a plain-text error that a framework component answers by itself (a bad Range: 416) into the API's
JSON ``{"detail": "...", "code": "..."}``. Pages, /healthz, /readyz and /metrics pass through untouched; the WebSocket
``/v1/live`` checks its own ticket after this gate.
"""
from __future__ import annotations

import ipaddress
import json
import secrets
from typing import Awaitable, Callable
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException

from swapstream.services.engine.errors import ErrorCode, code_for_status

PREFIX = "/v1"
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` mid-body; an HTTPException so that FastAPI's body parser passes it on as it is."""

    def __init__(self, detail: str):
        super().__init__(413, detail)


def _json_response(status: int, detail: str, headers: list[tuple[bytes, bytes]] = (),
                   kind: str = "http.response", code: ErrorCode | None = None) -> list[dict]:
    body = json.dumps({"detail": detail, "code": code or code_for_status(status)}).encode()
    return [{"type": f"{kind}.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         *headers]},
            {"type": f"{kind}.body", "body": body}]


def _split_host(value: str) -> tuple[str, int | None] | None:
    """``Host`` (or an origin's netloc) -> (lower-case name or address, port or None); None when malformed."""
    try:
        parts = urlsplit(f"//{value.strip()}")
        return (parts.hostname or "").rstrip("."), parts.port
    except ValueError:
        return None


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


class V1Guard:
    def __init__(self, app, *, token: str | None, body_limit: Callable[[str], int],
                 refuse: Callable[[dict], tuple[int, str] | None] | None = None,
                 allowed_hosts: tuple[str, ...] = (), allowed_origins: tuple[str, ...] = (),
                 public: tuple[str, ...] = ()):
        self.app = app
        self.token = token
        self.public = set(public)  # GET paths open without the token (what is public anyway, e.g. the options)
        self.body_limit = body_limit
        self.refuse = refuse
        self.allowed_hosts = {h.lower().rstrip(".") for h in allowed_hosts}
        self.allowed_origins = {o.lower().rstrip("/") for o in allowed_origins}

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        if scope["type"] not in ("http", "websocket") or not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if scope["type"] == "websocket":
            refusal = self._check_site(headers)
            if refusal:
                await self._refuse_handshake(scope, send, refusal[1], refusal[3])
                return
            await self.app(scope, receive, send)
            return
        refusal = self._check_site(headers) or self._check(scope, headers)
        if refusal:
            await self._answer(send, *refusal)
            return
        limit = self.body_limit(path)
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(self._too_large(limit))
            return message

        started = False
        plain_error: dict | None = None

        async def checked_send(message):
            nonlocal started, plain_error
            if message["type"] == "http.response.start":
                started = True
                content_type = dict(message.get("headers", [])).get(b"content-type", b"")
                if message["status"] >= 400 and content_type.startswith(b"text/plain"):
                    plain_error = message  # held back: its body becomes the JSON detail
                    return
            elif plain_error is not None:
                detail = message.get("body", b"").decode("utf-8", "replace").strip() or "error"
                kept = [(k, v) for k, v in plain_error.get("headers", [])
                        if k.lower() not in (b"content-type", b"content-length")]
                for part in _json_response(plain_error["status"], detail, kept):
                    await send(part)
                plain_error = None
                return
            await send(message)

        try:
            await self.app(scope, counted_receive, checked_send)
        except BodyTooLarge:
            if started:
                raise
            await self._answer(send, 413, self._too_large(limit))

    def _check_site(self, headers: dict[str, str]) -> tuple | None:
        """403 for a Host that could be a rebound name, or a request from another site's page."""
        host = _split_host(headers.get("host", ""))
        if host is None or not host[0]:
            return 403, "the request has no valid Host header", [], ErrorCode.BAD_HOST
        name, port = host
        if not (name == "localhost" or _is_address(name) or name in self.allowed_hosts or "*" in self.allowed_hosts):
            return 403, (f"Host {name[:100]!r} is not a name of this service: call it by its address or localhost, "
                         "or list the name with the service's --allowed-hosts"), [], ErrorCode.BAD_HOST
        origin = headers.get("origin")
        if origin is not None:
            if self._same_origin(origin, name, port) or origin.lower().rstrip("/") in self.allowed_origins \
                    or "*" in self.allowed_origins:
                return None
            return 403, (f"a request from the page origin {origin[:100]!r} (another site) is refused: only this "
                         "service's own pages, clients that are not browsers, and origins listed with the "
                         "service's --allowed-origins may call the API"), [], ErrorCode.FORBIDDEN_ORIGIN
        if headers.get("sec-fetch-site") in ("cross-site", "same-site"):
            return 403, ("a request from another site's page is refused: only this service's own pages and "
                         "clients that are not browsers may call the API"), [], ErrorCode.FORBIDDEN_ORIGIN
        return None

    @staticmethod
    def _same_origin(origin: str, name: str, port: int | None) -> bool:
        try:
            parts = urlsplit(origin.strip())
            origin_port = parts.port
        except ValueError:
            return False
        default = _DEFAULT_PORTS.get(parts.scheme.lower())
        if default is None or not parts.hostname:
            return False  # "null" (a sandboxed page, a file) and unknown schemes
        return (parts.hostname.rstrip(".") == name
                and (origin_port or default) == (port or default))

    def _check(self, scope, headers: dict[str, str]) -> tuple | None:
        if self.token is not None and not (scope["method"] == "GET" and scope["path"] in self.public):
            scheme, _, credentials = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(credentials.strip().encode(),
                                                                         self.token.encode()):
                return 401, "missing or wrong bearer token: send 'Authorization: Bearer <token>'", \
                    [(b"www-authenticate", b"Bearer")]
        length = headers.get("content-length", "")
        limit = self.body_limit(scope["path"])
        if length.isdigit() and int(length) > limit:
            return 413, f"request of {int(length)} bytes: {self._too_large(limit)}", []
        if self.refuse:
            refusal = self.refuse(scope)
            if refusal:
                return (*refusal, [])
        return None

    @staticmethod
    def _too_large(limit: int) -> str:
        return (f"the request is larger than the {limit} bytes allowed on this route; send smaller or fewer "
                "files (see the service's --max-video-mb and --max-photo-mb)")

    @staticmethod
    async def _answer(send: Callable[[dict], Awaitable[None]], status: int, detail: str,
                      headers: list = (), code: ErrorCode | None = None) -> None:
        for message in _json_response(status, detail, list(headers), code=code):
            await send(message)

    @staticmethod
    async def _refuse_handshake(scope, send, detail: str, code: ErrorCode) -> None:
        """The handshake answered 403 (with the JSON detail where the server supports it), never accepted."""
        if "websocket.http.response" in scope.get("extensions", {}):
            for message in _json_response(403, detail, kind="websocket.http.response", code=code):
                await send(message)
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": detail[:123]})
