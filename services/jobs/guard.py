"""The /v1 gate, an ASGI middleware: what is checked before a request's body is read.

FastAPI reads (and spools) a whole multipart body before any handler or dependency runs, so the token and the
size limit cannot wait for them: a client without the token could otherwise stream any amount of data. This
middleware, around the whole app, answers HTTP requests under ``/v1``:

- 401 without the right bearer token (when the service has one), before a byte of the body is read;
- 413 when Content-Length is above the route's limit, or, whatever the transfer encoding (chunked included), as
  soon as the bytes received pass it;
- an optional ``refuse(scope)`` check (e.g. 507 when the disk is nearly full) before the body.

It also turns a plain-text error that a framework component answers by itself (a bad Range: 416) into the API's
JSON ``{"detail": "..."}``. Everything else (pages, /healthz, /readyz, /metrics, WebSocket scopes such as
``/v1/live`` with their own ticket) passes through untouched.
"""
from __future__ import annotations

import json
import secrets
from typing import Awaitable, Callable

from starlette.exceptions import HTTPException

PREFIX = "/v1"


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` mid-body; an HTTPException so that FastAPI's body parser passes it on as it is."""

    def __init__(self, detail: str):
        super().__init__(413, detail)


def _json_response(status: int, detail: str, headers: list[tuple[bytes, bytes]] = ()) -> list[dict]:
    body = json.dumps({"detail": detail}).encode()
    return [{"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         *headers]},
            {"type": "http.response.body", "body": body}]


class V1Guard:
    def __init__(self, app, *, token: str | None, body_limit: Callable[[str], int],
                 refuse: Callable[[dict], tuple[int, str] | None] | None = None):
        self.app = app
        self.token = token
        self.body_limit = body_limit
        self.refuse = refuse

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._check(scope, headers)
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

    def _check(self, scope, headers: dict[str, str]) -> tuple | None:
        if self.token is not None:
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
                      headers: list = ()) -> None:
        for message in _json_response(status, detail, list(headers)):
            await send(message)
