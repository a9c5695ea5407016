"""The live routes: ``POST/GET/DELETE /v1/sources``, ``POST /v1/live/tickets`` and ``WS /v1/live`` (wire protocol in
``swapstream.services.live.protocol``). ``mount_live`` adds them to the service's app with what they need."""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
import uuid
from pathlib import Path
from typing import Annotated, Sequence

from fastapi import APIRouter, FastAPI, File, HTTPException, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response

from swapstream.services.live import protocol
from swapstream.services.live.frames import FrameRejected, decode_frame
from swapstream.services.live.limits import LiveLimits
from swapstream.services.live.metrics import LiveMetrics
from swapstream.services.live.scheduler import Scheduler
from swapstream.services.live.sources import IdentityMaker, SourceStore
from swapstream.services.live.stream import Frame, LiveStream, StreamOptions
from swapstream.services.live.tickets import TicketBackend, TicketStore
from swapstream.services.engine.errors import SwapInputError
from swapstream.services.engine.swapper import FaceSwapper
from swapstream.services.engine.swappers import create_swapper
from swapstream.services.options import LIVE, check
from swapstream.services.triton.client import SwapstreamClient, TritonCallError

MAX_SOURCES = 8
STOP_SECONDS = 10.0   # a stopping stream's frames in flight are answered within this, or dropped


class LiveClosed(Exception):
    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


def _reason(text: str) -> str:
    """A close reason fits in 123 bytes of UTF-8."""
    return text.encode()[:123].decode(errors="ignore")


class LiveServer:
    """The scheduler thread, the ticket and source stores, and the identities of one service process."""

    def __init__(self, client: SwapstreamClient, data_dir: Path, device: str, limits: LiveLimits,
                 metrics: LiveMetrics, token: str | None, max_photo_bytes: int, ticket_backend: TicketBackend):
        self.limits = limits
        self.token = token
        self.max_photo_bytes = max_photo_bytes
        self.metrics = metrics
        self.tickets = TicketStore(ticket_backend, limits.ticket_seconds)  # shared by the replicas (job store)
        self.draining = False  # set when the service drains: new sockets are closed with 1012
        self.sources = SourceStore(data_dir / "sources")
        swapper = create_swapper("simswap", client)
        self.identities = IdentityMaker(FaceSwapper(client, swapper, device))
        self.scheduler = Scheduler(FaceSwapper(client, swapper, device), limits, self.metrics)
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.stop()

    def identity_of(self, photos: list[tuple[str, bytes]]) -> tuple:
        """(identity, faces per photo, notes) from encoded photos; ``SwapInputError`` says what is wrong."""
        decoded = []
        for name, data in photos:
            if len(data) > self.max_photo_bytes:
                raise SwapInputError(f"source photo {name}: {len(data)} bytes is more than the "
                                     f"{self.max_photo_bytes} bytes allowed; send a smaller photo")
            try:
                rgb, _ = decode_frame(data, self.limits.max_source_pixels, formats=("JPEG", "WEBP", "PNG"))
            except FrameRejected as error:
                raise SwapInputError(f"source photo {name}: {error}") from None
            decoded.append((name, rgb))
        return self.identities(decoded)


def mount_live(app: FastAPI, client: SwapstreamClient, data_dir: Path, device: str, limits: LiveLimits,
               metrics: LiveMetrics, token: str | None, auth: Sequence, max_photo_bytes: int,
               ticket_backend: TicketBackend) -> LiveServer:
    """Adds the live routes to ``app``; ``auth`` are the dependencies of the ``/v1`` HTTP routes (the bearer
    token). The caller stops the returned server when the app stops."""
    live = LiveServer(client, data_dir, device, limits, metrics, token, max_photo_bytes, ticket_backend)
    v1 = APIRouter(prefix="/v1", dependencies=list(auth))

    @v1.post("/sources", status_code=201, summary="Store a source identity (computed once) for live streams")
    def create_source(source: Annotated[list[UploadFile], File(description="one or more photos of the face")]):
        if not source:
            raise HTTPException(422, "source: give at least one photo of the face to put in")
        if len(source) > MAX_SOURCES:
            raise HTTPException(422, f"source: at most {MAX_SOURCES} photos")
        photos = [(upload.filename or f"#{i + 1}", upload.file.read(live.max_photo_bytes + 1))
                  for i, upload in enumerate(source)]
        try:
            identity, faces, notes = live.identity_of(photos)
        except SwapInputError as error:
            raise HTTPException(422, str(error)) from None
        info = live.sources.save(identity, {"photos": len(photos), "faces": faces, "notes": notes})
        return JSONResponse(info, status_code=201, headers={"Location": f"/v1/sources/{info['id']}"})

    @v1.get("/sources/{source_id}", summary="A stored source identity")
    def get_source(source_id: str):
        info = live.sources.info(source_id)
        if info is None:
            raise HTTPException(404, f"no source {source_id!r}; create one with POST /v1/sources")
        return info

    @v1.delete("/sources/{source_id}", status_code=204, summary="Delete a stored source identity")
    def delete_source(source_id: str):
        if not live.sources.delete(source_id):
            raise HTTPException(404, f"no source {source_id!r}")
        return Response(status_code=204)

    @v1.post("/live/tickets", status_code=201, summary="A single-use ticket that opens WS /v1/live")
    def create_ticket():
        ticket = live.tickets.issue()
        return {"ticket": ticket, "expires_in": live.limits.ticket_seconds,
                "subprotocols": [protocol.SUBPROTOCOL, protocol.TICKET_PREFIX + ticket]}

    app.include_router(v1)

    @app.websocket("/v1/live")
    async def live_socket(websocket: WebSocket):
        await LiveSession(live, websocket).run()

    return live


class LiveSession:
    """One WebSocket: ticket, ``start``, then frames in and answers out until ``stop``, a limit, or a disconnect."""

    def __init__(self, live: LiveServer, websocket: WebSocket):
        self.live = live
        self.ws = websocket
        self.limits = live.limits
        self.stream: LiveStream | None = None
        self.last_seq: int | None = None

    async def run(self) -> None:
        offered = self.ws.scope.get("subprotocols") or []
        await self.ws.accept(subprotocol=protocol.SUBPROTOCOL if protocol.SUBPROTOCOL in offered else None)
        sender = None
        try:
            if self.live.draining:  # the replica is leaving: the client comes back through another one
                raise LiveClosed(protocol.CLOSE_SERVICE_RESTART, "this replica is stopping; reconnect with a new "
                                                                 "ticket to reach another")
            self._check_ticket(offered)
            if self.live.scheduler.count() >= self.limits.max_streams:
                raise self._too_many()
            self.stream = await self._start()
            sender = asyncio.create_task(self._send())
            self.stream.send_text({"type": "ready", "stream": self.stream.id, "limits": self.limits.as_dict()})
            await self._receive()
            await self._finish(sender)
            await self.ws.close(protocol.CLOSE_NORMAL, "stopped")
        except LiveClosed as closed:
            await self._close(closed.code, closed.reason)
        except WebSocketDisconnect:
            pass
        finally:
            if sender is not None:
                sender.cancel()
            if self.stream is not None:
                self.live.scheduler.remove(self.stream)
                self.live.metrics.streams.dec()

    def _too_many(self) -> LiveClosed:
        return LiveClosed(protocol.CLOSE_TRY_LATER, f"too many live streams ({self.limits.max_streams} open); "
                                                    "try again later")

    def _check_ticket(self, offered: list[str]) -> None:
        if not self.live.token:
            return
        tickets = [p[len(protocol.TICKET_PREFIX):] for p in offered if p.startswith(protocol.TICKET_PREFIX)]
        if not tickets:
            raise LiveClosed(protocol.CLOSE_POLICY, "no ticket: POST /v1/live/tickets with the bearer token, then "
                                                    "offer subprotocol ticket.<ticket>")
        problem = self.live.tickets.redeem(tickets[0])
        if problem:
            raise LiveClosed(protocol.CLOSE_POLICY, problem)

    async def _message(self) -> dict:
        try:
            message = await asyncio.wait_for(self.ws.receive(), self.limits.idle_timeout)
        except asyncio.TimeoutError:
            raise LiveClosed(protocol.CLOSE_IDLE, f"idle: no message for {self.limits.idle_timeout:.0f} s; "
                                                  "reconnect when you have frames to send") from None
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        return message

    async def _start(self) -> LiveStream:
        message = await self._message()
        if message.get("text") is None:
            raise LiveClosed(protocol.CLOSE_BAD_START, "a frame before start: send the JSON start message first")
        try:
            start = json.loads(message["text"])
        except json.JSONDecodeError:
            start = None
        if not isinstance(start, dict) or start.get("type") != "start":
            raise LiveClosed(protocol.CLOSE_BAD_START, 'the first message must be {"type": "start", ...}')
        options = _options(start)
        identity = await self._source_identity(start)
        stream = LiveStream(uuid.uuid4().hex[:12], identity, options, self.limits.send_queue, self.live.metrics,
                            asyncio.get_running_loop())
        if not self.live.scheduler.add(stream):
            raise self._too_many()
        self.live.metrics.streams.inc()
        return stream

    async def _source_identity(self, start: dict):
        if start.get("source_id") is not None:
            identity = self.live.sources.identity(str(start["source_id"]))
            if identity is None:
                raise LiveClosed(protocol.CLOSE_UNKNOWN_SOURCE, f"no source {str(start['source_id'])[:40]!r}; "
                                                                "create one with POST /v1/sources")
            return identity
        if not isinstance(start.get("source_image"), str):
            raise LiveClosed(protocol.CLOSE_BAD_START, "start needs source_id or source_image (base64 photo)")
        try:
            photo = base64.b64decode(start["source_image"], validate=True)
        except (binascii.Error, ValueError):
            raise LiveClosed(protocol.CLOSE_BAD_START, "source_image is not valid base64") from None
        try:
            identity, _, _ = await asyncio.to_thread(self.live.identity_of, [("source_image", photo)])
        except SwapInputError as error:
            raise LiveClosed(protocol.CLOSE_NO_FACE, _reason(str(error))) from None
        except TritonCallError as error:
            raise LiveClosed(protocol.CLOSE_TRY_LATER, _reason(f"the inference server failed ({error.model}); "
                                                               "try again shortly")) from None
        return identity

    async def _receive(self) -> None:
        stream = self.stream
        while True:
            message = await self._message()
            if message.get("bytes") is not None:
                await self._frame(message["bytes"])
            elif message.get("text") is not None:
                try:
                    text = json.loads(message["text"])
                except json.JSONDecodeError:
                    text = None
                kind = text.get("type") if isinstance(text, dict) else None
                if kind == "stop":
                    return
                stream.send_text({"type": "error", "seq": None,
                                  "detail": f"unexpected text message {str(kind)[:20]!r} after start: send frames "
                                            "(binary) or {\"type\": \"stop\"}"})

    async def _frame(self, data: bytes) -> None:
        stream = self.stream
        if len(data) > self.limits.max_frame_bytes:
            raise LiveClosed(protocol.CLOSE_TOO_BIG, f"frame of {len(data)} bytes is over the "
                                                     f"{self.limits.max_frame_bytes} byte limit; send smaller frames")
        self.live.metrics.frames_received.inc()
        seq = None
        try:
            header, image = protocol.unpack_frame(data)
            seq = header.get("seq")
            if not isinstance(seq, int) or isinstance(seq, bool):
                seq = None
                raise FrameRejected('the frame header needs an integer "seq"')
            if self.last_seq is not None and seq <= self.last_seq:
                raise FrameRejected(f"sequence number {seq} is not after {self.last_seq}: seq must increase")
            self.last_seq = seq
            ts = header.get("ts", 0)
            rgb, kind = await asyncio.to_thread(decode_frame, image, self.limits.max_pixels)
        except (protocol.ProtocolError, FrameRejected) as error:
            self.live.metrics.frames_refused.inc()
            stream.send_text({"type": "error", "seq": seq, "detail": str(error)})
            return
        stream.offer(Frame(seq, ts if isinstance(ts, (int, float)) else 0, rgb, kind, time.perf_counter()))
        self.live.scheduler.wake()

    async def _send(self) -> None:
        stream = self.stream
        while True:
            kind, payload = await stream.outbox.get()
            if kind == "answer":
                stream.answers_queued -= 1
            try:
                await (self.ws.send_bytes(payload) if kind == "answer" else self.ws.send_text(payload))
            except (WebSocketDisconnect, RuntimeError, OSError):
                return  # the client went away: the receiving side ends the stream

    async def _finish(self, sender: asyncio.Task) -> None:
        """After ``stop``: the frames in flight are answered, then the drops not yet reported are sent."""
        stream = self.stream
        try:
            await asyncio.wait_for(stream.idle.wait(), STOP_SECONDS)
            deadline = asyncio.get_running_loop().time() + STOP_SECONDS
            while not stream.outbox.empty() and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
        except asyncio.TimeoutError:
            pass
        sender.cancel()
        await self.ws.send_text(json.dumps({"type": "end", "answered": stream.answered,
                                            "dropped": stream.take_dropped()}))

    async def _close(self, code: int, reason: str) -> None:
        try:
            await self.ws.close(code, _reason(reason))
        except RuntimeError:
            pass  # already closed


def _options(start: dict) -> StreamOptions:
    """The stream's options (the options table's ``LIVE``: types, choices, bounds, defaults)."""
    try:
        return StreamOptions(**check("live", {name: start[name] for name in LIVE if name in start}))
    except ValueError as error:
        raise LiveClosed(protocol.CLOSE_BAD_START, f"start: {error}") from None
