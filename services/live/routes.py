"""The live routes: ``POST/GET/DELETE /v1/sources``, ``POST /v1/live/tickets`` and ``WS /v1/live`` (wire protocol in
``swapstream.services.live.protocol``). ``mount_live`` adds them to the service's app with what they need."""
from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import time
import uuid
from pathlib import Path
from typing import Annotated, Callable, Iterable, Sequence

from fastapi import APIRouter, FastAPI, File, Form, HTTPException, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response

from swapstream.services.live import protocol
from swapstream.services.live.frames import FrameRejected, check_frame, decode_frame, refusal
from swapstream.services.live.limits import LiveLimits
from swapstream.services.live.metrics import LiveMetrics
from swapstream.services.live.scheduler import Scheduler
from swapstream.services.live.sources import IdentityMaker, SourceQuota, SourceStore
from swapstream.services.live.stream import Frame, LiveStream, StreamOptions
from swapstream.services.live.tickets import TicketBackend, TicketStore
from swapstream.services.engine.errors import ErrorCode, SwapInputError
from swapstream.services.engine.swapper import FaceSwapper
from swapstream.services.engine.swappers import create_swapper
from swapstream.services.engine.swappers.choice import SwapperChoice
from swapstream.services.options import LIVE
from swapstream.services.triton.client import SwapstreamClient, TritonCallError

MAX_SOURCES = 8
SOURCE_SIDE = 2048    # source photos are decoded at 1/2, 1/4 or 1/8 of their size down to this longest side
STOP_SECONDS = 10.0   # a stopping stream's frames in flight are answered within this, or dropped
RESTART_REASON = "the service is restarting; reconnect in a few seconds"


class LiveClosed(Exception):
    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


def _reason(text: str) -> str:
    """A close reason fits in 123 bytes of UTF-8."""
    return text.encode()[:123].decode(errors="ignore")


def _short(text: str, limit: int = 40) -> str:
    """A client's string quoted in a message, cut to ``limit`` characters."""
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


class SourceRefused(SwapInputError):
    """A source photo refused before any face is looked for; ``close``: the WebSocket close code for a start."""

    def __init__(self, message: str, close: int, code: ErrorCode):
        super().__init__(message, code)
        self.close = close


class SourceFailed(Exception):
    """A stream's source (of a ``start`` or a ``source`` message) that cannot be used: ``close`` is the close code
    for a start, ``code`` the error's kind for a ``source`` message (the stream goes on)."""

    def __init__(self, close: int, code: ErrorCode, reason: str):
        super().__init__(reason)
        self.close, self.code, self.reason = close, code, reason


class LiveServer:
    """The scheduler thread, the ticket and source stores, and the identities of one service process."""

    def __init__(self, client: SwapstreamClient, data_dir: Path, device: str, limits: LiveLimits,
                 metrics: LiveMetrics, token: str | None, max_photo_bytes: int, ticket_backend: TicketBackend,
                 choose_swapper: Callable[[str | None], SwapperChoice]):
        self.limits = limits
        self.token = token
        self.max_photo_bytes = max_photo_bytes
        self.metrics = metrics
        self.tickets = TicketStore(ticket_backend, limits.ticket_seconds)  # shared by the replicas (job store)
        self.draining = False  # set when the service drains: new sockets are closed with 1012
        self.sources = SourceStore(data_dir / "sources", limits.max_sources, limits.source_days * 86400.0)
        self.choose_swapper = choose_swapper  # the swapper asked for (None: the service's default) -> name and why
        self._client, self._device = client, device
        self._swappers: dict[tuple[str, str], FaceSwapper] = {}  # (user, swapper name): built when first needed
        self.identities = IdentityMaker(lambda name: self._face_swapper("identities", name))
        self.scheduler = Scheduler(lambda stage, name: self._face_swapper(f"scheduler-{stage}", name), limits,
                                   self.metrics)
        self.scheduler.start()
        self.photo_work = None                   # the service's photo worker, set by mount_live
        self.sessions: set[LiveSession] = set()  # event loop only
        self.starting = 0                        # sockets accepted that have no stream yet (event loop only)

    def _face_swapper(self, user: str, name: str) -> FaceSwapper:
        """One FaceSwapper per swapper for each thread that uses them (their DALI pipelines are not shared)."""
        if (user, name) not in self._swappers:
            self._swappers[user, name] = FaceSwapper(self._client, create_swapper(name, self._client), self._device)
        return self._swappers[user, name]

    def stop(self) -> None:
        self.scheduler.stop()


    def close_all(self) -> None:
        """Closes every socket with 1012 and a reason (the server's own 1012 on shutdown has none). Called from
        the service's exit handler, on the event loop, before the server closes the connections."""
        loop = asyncio.get_running_loop()
        for session in list(self.sessions):
            loop.create_task(session.close(protocol.CLOSE_SERVICE_RESTART, RESTART_REASON))

    def identity_of(self, photos: Iterable[tuple[str, Callable[[int], bytes]]], swapper: str) -> tuple:
        """(``swapper``'s identity, faces per photo, notes) from encoded photos, each [(name, read(limit))] read and
        decoded only when its turn comes (one at a time, at the size the identity needs); ``SwapInputError`` says
        what is wrong."""
        def decoded():
            for name, read in photos:
                data = read(self.max_photo_bytes + 1)
                if len(data) > self.max_photo_bytes:
                    raise SourceRefused(f"source photo {name}: more than the {self.max_photo_bytes} bytes "
                                        "allowed; send a smaller photo", protocol.CLOSE_TOO_BIG, ErrorCode.TOO_LARGE)
                try:
                    kind = check_frame(data, self.limits.max_source_pixels, None, ("JPEG", "WEBP", "PNG"))
                    rgb = decode_frame(data, kind, longest=SOURCE_SIDE)
                except FrameRejected as error:
                    raise SourceRefused(f"source photo {name}: {error}", protocol.CLOSE_BAD_START,
                                        ErrorCode.NOT_A_PHOTO if error.code == ErrorCode.BAD_FRAME else error.code
                                        ) from None
                yield name, rgb
        try:
            return self.identities(decoded(), swapper)
        except SourceRefused:
            raise
        except SwapInputError as error:  # no face: said without the CLI's options, which a live client has not
            first = str(error).split(". ")[0]
            raise SwapInputError(f"{first}. Use a photo where the face is large, visible and frontal",
                                 error.code) from None


def mount_live(app: FastAPI, client: SwapstreamClient, data_dir: Path, device: str, limits: LiveLimits,
               metrics: LiveMetrics, token: str | None, auth: Sequence, max_photo_bytes: int,
               ticket_backend: TicketBackend, photo_work,
               choose_swapper: Callable[[str | None], SwapperChoice]) -> LiveServer:
    """Adds the live routes to ``app``; ``auth`` are the dependencies of the ``/v1`` HTTP routes (the bearer
    token); ``photo_work``: the service's bounded photo worker (``await run(function, *args)``; when it is full it
    raises an error with ``retry_after``, which the service answers with 429), which computes the sources'
    identities; ``choose_swapper``: the swapper asked for (None: the service's default) -> its name and why. The
    caller stops the returned server when the app stops."""
    live = LiveServer(client, data_dir, device, limits, metrics, token, max_photo_bytes, ticket_backend,
                      choose_swapper)
    live.photo_work = photo_work
    app.state.live = live  # the service's exit handler closes its sockets (close_all)
    v1 = APIRouter(prefix="/v1", dependencies=list(auth))

    @v1.post("/sources", status_code=201, summary="Store a source identity (computed once) for live streams")
    async def create_source(source: Annotated[list[UploadFile], File(description="one or more photos of the face")],
                            swapper: Annotated[str | None, Form(description="the swapper this identity is made for "
                                                                "(streams using it swap with it); default: the "
                                                                "service's")] = None):
        try:
            choice = live.choose_swapper(LIVE["swapper"].check(swapper))
        except ValueError as error:
            raise HTTPException(422, str(error)) from None
        if not source:
            raise HTTPException(422, "source: give at least one photo of the face to put in")
        if len(source) > MAX_SOURCES:
            raise HTTPException(422, f"source: at most {MAX_SOURCES} photos")
        try:
            live.sources.check_room()
        except SourceQuota as error:
            raise HTTPException(507, str(error)) from None
        photos = [(upload.filename or f"#{i + 1}", upload.file.read) for i, upload in enumerate(source)]
        try:
            identity, faces, notes = await live.photo_work.run(live.identity_of, photos, choice.name)
            info = live.sources.save(identity, {"photos": len(photos), "faces": faces, "swapper": choice.name,
                                                "notes": [choice.reason] + notes})
        except SourceQuota as error:
            raise HTTPException(507, str(error)) from None
        return JSONResponse(info, status_code=201, headers={"Location": f"/v1/sources/{info['id']}"})

    @v1.get("/sources/{source_id}", summary="A stored source identity")
    def get_source(source_id: str):
        info = live.sources.info(source_id)
        if info is None:
            raise HTTPException(404, f"no source {_short(source_id)}; create one with POST /v1/sources")
        return info

    @v1.delete("/sources/{source_id}", status_code=204, summary="Delete a stored source identity")
    def delete_source(source_id: str):
        if not live.sources.delete(source_id):
            raise HTTPException(404, f"no source {_short(source_id)}")
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
        self.switching: asyncio.Task | None = None  # a ``source`` message being made into an identity

    async def run(self) -> None:
        offered = self.ws.scope.get("subprotocols") or []
        await self.ws.accept(subprotocol=protocol.SUBPROTOCOL if protocol.SUBPROTOCOL in offered else None)
        self.idle_until = asyncio.get_running_loop().time() + self.limits.idle_timeout
        self.live.sessions.add(self)
        sender = None
        starting = False
        try:
            if self.live.draining:  # the replica is leaving: the client comes back through another one
                raise LiveClosed(protocol.CLOSE_SERVICE_RESTART, "this replica is stopping; reconnect with a new "
                                                                 "ticket to reach another")
            self._check_ticket(offered)
            if self.live.scheduler.count() >= self.limits.max_streams:
                raise self._too_many()
            # Sockets still starting hold a start message and its photo: as many as there may be streams.
            if self.live.starting >= self.limits.max_streams:
                raise LiveClosed(protocol.CLOSE_TRY_LATER, f"{self.live.starting} live streams are starting; "
                                                           "try again in a few seconds")
            self.live.starting += 1
            starting = True
            self.stream = await self._start()
            self.live.starting -= 1
            starting = False
            sender = asyncio.create_task(self._send())
            self.stream.send_text({"type": "ready", "stream": self.stream.id, "limits": self.limits.as_dict(),
                                   "swapper": self.stream.options.swapper})
            await self._receive()
            await self._finish(sender)
            await self.ws.close(protocol.CLOSE_NORMAL, "stopped")
        except LiveClosed as closed:
            await self.close(closed.code, closed.reason)
        except WebSocketDisconnect:
            pass
        finally:
            self.live.sessions.discard(self)
            if starting:
                self.live.starting -= 1
            if sender is not None:
                sender.cancel()
            if self.switching is not None:
                self.switching.cancel()
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

    def _idle_deadline(self) -> float:
        """Idle is ``idle_timeout`` after the last frame (or the start) and the last answer, with nothing of the
        stream's being worked on: other messages do not count."""
        stream = self.stream
        if stream is None:
            return self.idle_until
        if not stream.idle.is_set():  # a frame waits or is in the scheduler: the client waits for its answer
            return asyncio.get_running_loop().time() + self.limits.idle_timeout
        return max(self.idle_until, stream.answered_at + self.limits.idle_timeout)

    async def _message(self) -> dict:
        """The next message, or LiveClosed when the stream is idle (``_idle_deadline``)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                message = await asyncio.wait_for(self.ws.receive(), max(0.0, self._idle_deadline() - loop.time()))
                break
            except asyncio.TimeoutError:
                if self._idle_deadline() <= loop.time():
                    raise LiveClosed(protocol.CLOSE_IDLE, f"idle: no frame for {self.limits.idle_timeout:.0f} s; "
                                                          "reconnect when you have frames to send") from None
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        return message

    async def _start(self) -> LiveStream:
        message = await self._message()
        if message.get("text") is None:
            raise LiveClosed(protocol.CLOSE_BAD_START, "a frame before start: send the JSON start message first")
        text = message["text"]
        try:
            start = protocol.parse_start(text)
        except protocol.ProtocolError as error:
            code = protocol.CLOSE_TOO_BIG if len(text) > protocol.MAX_START_BYTES else protocol.CLOSE_BAD_START
            raise LiveClosed(code, str(error)) from None
        options = StreamOptions(**{name: start.get(name, o.default) for name, o in LIVE.items() if o.form})
        try:
            identity, options.swapper = await self._source_identity(start, options.swapper)
        except SourceFailed as failed:
            raise LiveClosed(failed.close, failed.reason) from None
        self.idle_until = asyncio.get_running_loop().time() + self.limits.idle_timeout
        stream = LiveStream(uuid.uuid4().hex[:12], identity, options, self.limits.send_queue, self.live.metrics,
                            asyncio.get_running_loop())
        if not self.live.scheduler.add(stream):
            raise self._too_many()
        self.live.metrics.streams.inc()
        return stream

    async def _source_identity(self, start: dict, asked: str | None) -> tuple[dict, str]:
        """(identity, the swapper's name): a stored source's swapper is the one it was made for (asking for another
        is refused), a start's photo is made into an identity of the swapper asked for, else the service's.
        ``start``: a ``start`` or ``source`` message; SourceFailed says why it cannot be used."""
        if start.get("source_id") is not None:
            info = self.live.sources.info(str(start["source_id"]))
            identity = None if info is None else self.live.sources.identity(str(start["source_id"]))
            if identity is None:
                raise SourceFailed(protocol.CLOSE_UNKNOWN_SOURCE, ErrorCode.NOT_FOUND,
                                   f"no source {_short(start['source_id'])}; create one with POST /v1/sources")
            made_for = info["swapper"]
            if asked is not None and asked != made_for:
                raise SourceFailed(protocol.CLOSE_BAD_START, ErrorCode.WRONG_SWAPPER,
                                   f"this source was made for swapper {made_for}, not {asked}: start without "
                                   f"swapper, or POST /v1/sources with swapper={asked}")
            return identity, made_for
        swapper = self.live.choose_swapper(asked).name
        try:
            photo = base64.b64decode(start["source_image"], validate=True)
        except (binascii.Error, ValueError):
            raise SourceFailed(protocol.CLOSE_BAD_START, ErrorCode.NOT_A_PHOTO,
                               "source_image is not valid base64") from None
        try:
            identity, _, _ = await self.live.photo_work.run(self.live.identity_of,
                                                            [("source_image", io.BytesIO(photo).read)], swapper)
        except SourceRefused as error:
            raise SourceFailed(error.close, error.code, _reason(str(error))) from None
        except SwapInputError as error:
            raise SourceFailed(protocol.CLOSE_NO_FACE, error.code, _reason(str(error))) from None
        except TritonCallError as error:
            raise SourceFailed(protocol.CLOSE_TRY_LATER, ErrorCode.INFERENCE_UNAVAILABLE,
                               _reason(f"the inference server failed ({error.model}); try again shortly")) from None
        except Exception as error:  # the photo worker is full (the service's Busy, with retry_after)
            if getattr(error, "retry_after", None) is None:
                raise
            raise SourceFailed(protocol.CLOSE_TRY_LATER, ErrorCode.TOO_MANY_REQUESTS, _reason(str(error))) from None
        return identity, swapper

    async def _receive(self) -> None:
        stream = self.stream
        while True:
            message = await self._message()
            if message.get("bytes") is not None:
                await self._frame(message["bytes"])
            elif message.get("text") is not None:
                try:
                    text = protocol.parse_message(message["text"])
                except protocol.ProtocolError as error:
                    stream.send_text(protocol.error_message(error.code, str(error)))
                    continue
                if text["type"] == "stop":
                    return
                self._switch_source(text)

    def _switch_source(self, message: dict) -> None:
        """A ``source`` message: the new identity is made aside (frames go on with the old face), then used from the
        next batch on; one at a time, and a failure is that request's alone."""
        if self.switching is not None and not self.switching.done():
            self.stream.send_text(protocol.error_message(
                ErrorCode.SWITCH_PENDING, "the previous source is still being prepared; send the next one after "
                "its switched message", request="source"))
            return
        self.switching = asyncio.create_task(self._switch(message))

    async def _switch(self, message: dict) -> None:
        stream = self.stream
        try:
            identity, _ = await self._source_identity(message, stream.options.swapper)
        except SourceFailed as failed:
            stream.send_text(protocol.error_message(failed.code, failed.reason, request="source"))
            return
        stream.identity = identity  # one reference: the scheduler's next batch reads the new one
        stream.send_text({"type": "switched", "source_id": message.get("source_id")})

    async def _frame(self, data: bytes) -> None:
        stream = self.stream
        if len(data) > self.limits.max_frame_bytes:
            raise LiveClosed(protocol.CLOSE_TOO_BIG, f"frame of {len(data)} bytes is over the "
                                                     f"{self.limits.max_frame_bytes} byte limit; send smaller frames")
        self.live.metrics.frames_received.inc()
        seq = None
        try:
            try:
                header, image = protocol.unpack_frame(data, protocol.MAX_HEADER_BYTES)
            except protocol.ProtocolError as error:
                seq = error.seq
                raise
            seq = header["seq"]
            if self.last_seq is not None and seq <= self.last_seq:
                raise FrameRejected(f"sequence number {seq} is not after {self.last_seq}: seq must increase")
            self.last_seq = seq
            # only the header: the pixels are decoded when the scheduler takes the frame (most are dropped before)
            kind = await asyncio.to_thread(check_frame, image, self.limits.max_pixels, self.limits.max_side)
        except (protocol.ProtocolError, FrameRejected) as error:
            self.live.metrics.frames_refused.inc()
            stream.send_text(refusal(error, seq))
            return
        self.idle_until = asyncio.get_running_loop().time() + self.limits.idle_timeout
        stream.offer(Frame(seq, float(header.get("ts", 0)), image, kind, time.perf_counter()))
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

    async def close(self, code: int, reason: str) -> None:
        try:
            await self.ws.close(code, _reason(reason))
        except (RuntimeError, OSError):
            pass  # already closed


