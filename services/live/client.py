"""The live client: streams a video file (at its own frame rate) or a camera to ``WS /v1/live`` and collects what
comes back, the swapped frames (written, if asked, as a video with the input's frame count and timing) and the
figures (round-trip latency, frames sent / answered / dropped / refused, frames/s).

``swapstream live`` is this module; the live benchmark runs its streams with the same ``LiveStream``. The wire
format is ``protocol.py``.
"""
from __future__ import annotations

import json
import os
import stat
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator
from urllib.parse import urlsplit, urlunsplit

import av
import cv2
import httpx
import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from swapstream.services.live import protocol
from swapstream.services.engine.encoder import VideoWriter

LIVE_PATH = "/v1/live"
DEFAULT_URL = "ws://127.0.0.1:8080"     # `swapstream serve`'s default address
MAX_ANSWER_BYTES = 32 * 2**20
STOP_GRACE_SECONDS = 30.0               # after `stop`, how long the server may take to answer what is in flight
RECONNECT_SECONDS = 30.0                # how long a stream closed by a leaving replica tries to come back
# Closes after which the client comes back with a new ticket (through another replica): the service is restarting
# or draining (1012), going away (1001), or the connection was lost without a close (a replica died).
RECONNECT_CODES = {protocol.CLOSE_SERVICE_RESTART, 1001, None}
TIMING_KEYS = ("queue", "detect", "swap", "blend", "encode", "total")


class LiveError(RuntimeError):
    """Something that stops a live stream, said so that the user knows what to do."""


# ---------------------------------------------------------------------------------------------
# addresses, the source, the ticket


def endpoints(url: str) -> tuple[str, str]:
    """``ws://host:port[/v1/live]`` (or ``http://``, ``https://``, ``wss://``) -> (HTTP base URL, WebSocket URL)."""
    parts = urlsplit(url if "://" in url else f"ws://{url}")
    secure = parts.scheme in ("wss", "https")
    if parts.scheme not in ("ws", "wss", "http", "https") or not parts.netloc:
        raise LiveError(f"--url {url!r} is not a service address: give ws://HOST:PORT (or wss://, http://, https://)")
    path = parts.path.rstrip("/")
    if path.endswith(LIVE_PATH):
        path = path[: -len(LIVE_PATH)]
    http = urlunsplit(("https" if secure else "http", parts.netloc, path, "", ""))
    ws = urlunsplit(("wss" if secure else "ws", parts.netloc, path + LIVE_PATH, "", ""))
    return http, ws


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except (ValueError, AttributeError):
        return response.text.strip() or response.reason_phrase


def _call(http: httpx.Client, what: str, method: str, path: str, **kwargs) -> dict:
    try:
        response = http.request(method, path, **kwargs)
    except httpx.TransportError as error:
        raise LiveError(f"cannot reach the service at {http.base_url} ({error}): is `swapstream serve` running "
                        "there? Check --url") from None
    if response.status_code == 401:
        raise LiveError(f"{what}: the service refused the token ({_detail(response)}). Pass the service's token "
                        "with --token or $SWAPSTREAM_TOKEN")
    if response.status_code >= 400:
        raise LiveError(f"{what}: HTTP {response.status_code}: {_detail(response)}")
    return response.json()


def upload_source(http: httpx.Client, photos: list[Path], swapper: str | None = None) -> str:
    """``POST /v1/sources``: the identity of the source photos, computed once by the service for ``swapper`` (None:
    the service's default; streams of this source use that swapper); returns its id."""
    for photo in photos:
        if not photo.is_file():
            raise LiveError(f"source photo {photo} does not exist")
    files = [("source", (p.name, p.read_bytes(), "application/octet-stream")) for p in photos]
    data = {"swapper": swapper} if swapper else {}
    return _call(http, "uploading the source", "POST", "/v1/sources", files=files, data=data)["id"]


def live_ticket(http: httpx.Client) -> str:
    """``POST /v1/live/tickets`` (bearer token): a short-lived, single-use ticket for one WebSocket."""
    return _call(http, "asking for a live ticket", "POST", "/v1/live/tickets")["ticket"]


@contextmanager
def open_stream(ws_url: str, source_id: str, ticket: str | None = None, *, faces: str = "all",
                smoothing: bool = True, quality: int = 80) -> Iterator[tuple[ClientConnection, dict]]:
    """The socket open, ``start`` sent and ``ready`` received: yields the connection and the ``ready`` message."""
    ws, ready = start_stream(ws_url, source_id, ticket, faces=faces, smoothing=smoothing, quality=quality)
    with ws:
        yield ws, ready


def start_stream(ws_url: str, source_id: str, ticket: str | None = None, *, faces: str = "all",
                 smoothing: bool = True, quality: int = 80) -> tuple[ClientConnection, dict]:
    """``open_stream`` without the ``with``: the caller closes the connection."""
    subprotocols = [protocol.SUBPROTOCOL] + ([protocol.TICKET_PREFIX + ticket] if ticket else [])
    try:
        ws = connect(ws_url, subprotocols=subprotocols, compression=None, max_size=MAX_ANSWER_BYTES,
                     open_timeout=15, legacy=True)
    except InvalidStatus as error:
        body = error.response.body.decode(errors="replace").strip() if error.response.body else ""
        raise LiveError(f"the service refused the live socket at {ws_url}: HTTP {error.response.status_code} "
                        f"{body}".strip()) from None
    except (OSError, InvalidHandshake, TimeoutError) as error:
        raise LiveError(f"cannot open the live socket at {ws_url} ({error}): is `swapstream serve` running there? "
                        "Check --url") from None
    try:
        return ws, _start(ws, {"type": "start", "source_id": source_id, "faces": faces, "smoothing": smoothing,
                               "quality": quality})
    except BaseException:
        ws.close()
        raise


def _start(ws: ClientConnection, start: dict) -> dict:
    try:
        ws.send(json.dumps(start))
        while True:
            reply = ws.recv(timeout=60)
            if isinstance(reply, str):
                message = json.loads(reply)
                if message.get("type") == "ready":
                    return message
                if message.get("type") == "error":
                    raise LiveError(f"the service refused the stream: {message.get('detail')}")
    except ConnectionClosed as closed:
        raise LiveError(f"the service closed the stream: {_close_text(closed)}") from None
    except TimeoutError:
        raise LiveError("the service did not answer `start` within 60 s") from None


def _close_code(closed: ConnectionClosed) -> int | None:
    frame = closed.rcvd or closed.sent
    return frame.code if frame else None


def _close_text(closed: ConnectionClosed) -> str:
    frame = closed.rcvd or closed.sent
    if frame is None:
        return "the connection was lost without a close frame"
    return f"code {frame.code}: {frame.reason or '(no reason given)'}"


# ---------------------------------------------------------------------------------------------
# frames in


@dataclass
class Frame:
    seq: int
    due: float | None   # seconds after the stream's first frame when it is sent; None: send when captured (camera)
    data: bytes         # JPEG


@dataclass
class InputVideo:
    """What the output needs to match: frame size and rate (a camera's as it reports them)."""
    width: int
    height: int
    fps: float
    camera: bool


def is_camera(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return path.startswith("/dev/video")


def _open_input(path: str, camera: bool):
    if camera:
        # Untested here (the machine has no camera): FFmpeg's v4l2 input as PyAV documents it.
        return av.open(path, format="v4l2", options={"framerate": "30", "video_size": "640x480"})
    if not Path(path).is_file():
        raise LiveError(f"input {path} does not exist: give a video file or a camera such as /dev/video0")
    return av.open(path)


def encode_jpeg(bgr: np.ndarray, quality: int) -> bytes:
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise LiveError("JPEG encoding failed")
    return data.tobytes()


def read_input(path: str, quality: int, limit: int | None = None) -> tuple[InputVideo, Iterator[Frame]]:
    """The input's size and rate, and its frames as JPEG, decoded one at a time just before they are due."""
    camera = is_camera(path)
    try:
        container = _open_input(path, camera)
    except (av.error.FFmpegError, OSError) as error:
        raise LiveError(f"cannot open input {path}: {error}") from None
    if not container.streams.video:
        container.close()
        raise LiveError(f"input {path} has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    info = InputVideo(stream.codec_context.width, stream.codec_context.height,
                      float(stream.average_rate or stream.guessed_rate or 30), camera)

    def frames() -> Iterator[Frame]:
        start = None
        try:
            for seq, frame in enumerate(container.decode(stream)):
                if limit is not None and seq >= limit:
                    break
                due = None
                if not camera:
                    at = frame.time if frame.time is not None else seq / info.fps
                    start = at if start is None else start
                    due = at - start
                yield Frame(seq, due, encode_jpeg(frame.to_ndarray(format="bgr24"), quality))
        except av.error.FFmpegError as error:
            raise LiveError(f"cannot decode input {path}: {error}") from None
        finally:
            container.close()

    return info, frames()


# ---------------------------------------------------------------------------------------------
# one stream


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


@dataclass
class LiveStats:
    sent: int = 0
    received: int = 0
    dropped: int = 0                      # reported dropped by the server
    refused: int = 0                      # refused by the server with an ``error`` message
    lost: int = 0                         # in flight when a replica closed the stream (it reconnected)
    reconnects: list[dict] = field(default_factory=list)   # each: why, and the ms until ``ready`` again
    faces: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    server_ms: dict[str, float] = field(default_factory=dict)   # summed per timing key
    first_sent: float | None = None
    last_sent: float | None = None
    last_received: float | None = None
    close: str = ""
    errors: list[str] = field(default_factory=list)

    @property
    def unaccounted(self) -> int:
        """Frames neither answered, dropped nor refused (the stream ended before the server said)."""
        return self.sent - self.received - self.dropped - self.refused - self.lost

    def figures(self) -> dict:
        span = (self.last_received - self.first_sent) if self.last_received and self.first_sent else None
        send_span = (self.last_sent - self.first_sent) if self.sent > 1 else None
        return {
            "frames_sent": self.sent, "frames_received": self.received, "frames_dropped": self.dropped,
            "frames_refused": self.refused, "frames_lost_reconnecting": self.lost,
            "frames_unaccounted": self.unaccounted, "faces": self.faces, "reconnects": self.reconnects,
            "dropped_percent": 100.0 * self.dropped / self.sent if self.sent else 0.0,
            "latency_ms": {f"p{q}": percentile(self.latencies_ms, q) for q in (50, 95, 99)}
                          | {"mean": float(np.mean(self.latencies_ms)) if self.latencies_ms else None},
            "sent_fps": (self.sent - 1) / send_span if send_span else None,
            "received_fps": self.received / span if span else None,
            "seconds": span,
            "server_ms_mean": {k: v / self.received for k, v in self.server_ms.items()} if self.received else {},
            "close": self.close, "errors": self.errors,
        }


def summary_text(figures: dict) -> str:
    latency = figures["latency_ms"]
    ms = ", ".join(f"{k} {v:.0f}" for k, v in latency.items() if v is not None) or "-"
    server = ", ".join(f"{k} {v:.0f}" for k, v in figures["server_ms_mean"].items())
    lines = [f"frames sent {figures['frames_sent']}, received {figures['frames_received']}, dropped "
             f"{figures['frames_dropped']} ({figures['dropped_percent']:.1f}%), refused {figures['frames_refused']}"
             + (f", lost reconnecting {figures['frames_lost_reconnecting']}" if figures["reconnects"] else "")
             + (f", unaccounted {figures['frames_unaccounted']}" if figures["frames_unaccounted"] else ""),
             f"round-trip latency ms: {ms}",
             f"frames/s: sent {_f(figures['sent_fps'])}, received {_f(figures['received_fps'])}; faces "
             f"{figures['faces']}"]
    if server:
        lines.append(f"server ms per answered frame: {server}")
    for again in figures["reconnects"]:
        lines.append(f"reconnected after {again['why']}: ready again in {again['ms']:.0f} ms")
    return "\n".join(lines)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


class LiveStream:
    """One open stream: sends frames (paced to their ``due`` times) from a thread while this thread reads the
    answers, until the frames end (then ``stop``: the server answers what is in flight and closes), the server
    closes, or ``interrupt()``.

    With ``reconnect`` (a function that opens a new stream, up to ``ready``), a close by a leaving replica
    (``RECONNECT_CODES``) is not the end: the frames in flight are counted ``lost``, a new stream is opened and
    the frames go on from where they were."""

    def __init__(self, ws: ClientConnection, on_answer: Callable[[dict, bytes], None] | None = None,
                 reconnect: Callable[[], tuple[ClientConnection, dict]] | None = None):
        self.ws = ws
        self.on_answer = on_answer
        self.reconnect = reconnect
        self.stats = LiveStats()
        self._sent_at: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._connected.set()
        self._send_error: BaseException | None = None

    def interrupt(self) -> None:
        self._stop.set()

    def run(self, frames: Iterable[Frame]) -> LiveStats:
        sender = threading.Thread(target=self._send_all, args=(frames,), name="live-sender", daemon=True)
        sender.start()
        try:
            self._receive_all(sender)
        except KeyboardInterrupt:
            self._stop.set()
            self._receive_all(sender)
        finally:
            self._stop.set()
            sender.join(STOP_GRACE_SECONDS)
            self.ws.close()
        if isinstance(self._send_error, LiveError):
            raise self._send_error
        return self.stats

    def _send_all(self, frames: Iterable[Frame]) -> None:
        start = None
        try:
            for frame in frames:
                if self._stop.is_set():
                    break
                now = time.monotonic()
                if frame.due is not None:
                    start = now - frame.due if start is None else start
                    if self._stop.wait(max(0.0, start + frame.due - now)):
                        break
                    now = time.monotonic()
                if not self._wait_connected():
                    break
                with self._lock:
                    self._sent_at[frame.seq] = now
                    self.stats.sent += 1
                    self.stats.first_sent = self.stats.first_sent or now
                    self.stats.last_sent = now
                ws = self.ws
                try:
                    ws.send(protocol.pack_frame({"seq": frame.seq, "ts": time.time() * 1000.0}, frame.data))
                except ConnectionClosed:
                    with self._lock:  # never reached the server: lost, unless the receiver counted it already
                        if self._sent_at.pop(frame.seq, None) is not None:
                            self.stats.lost += 1
                    if self.reconnect is None:
                        return  # the receiver reports why
                    while self.ws is ws and not self._stop.wait(0.05):
                        pass  # until the receiver has a new stream (or gives up)
            while self._wait_connected():
                ws = self.ws
                try:
                    ws.send(json.dumps({"type": "stop"}))
                    return
                except ConnectionClosed:
                    if self.reconnect is None:
                        return
                    while self.ws is ws and not self._stop.wait(0.05):
                        pass
        except ConnectionClosed:
            pass  # the receiver reports why
        except BaseException as error:  # a decode error of the input: end the stream, report it
            self._send_error = error
            try:
                self.ws.close(protocol.CLOSE_NORMAL, "client input failed")
            except ConnectionClosed:
                pass

    def _receive_all(self, sender: threading.Thread) -> None:
        stopped_at = None
        while True:
            if not sender.is_alive() and stopped_at is None:
                stopped_at = time.monotonic()
            if stopped_at is not None and time.monotonic() - stopped_at > STOP_GRACE_SECONDS:
                self.stats.close = f"no close from the server within {STOP_GRACE_SECONDS:.0f} s of `stop`"
                return
            try:
                message = self.ws.recv(timeout=0.5)
            except TimeoutError:
                continue
            except ConnectionClosed as closed:
                self.stats.close = _close_text(closed)
                if self.reconnect is None or _close_code(closed) not in RECONNECT_CODES or not sender.is_alive():
                    return
                if not self._reconnect(self.stats.close):
                    return
                continue
            if isinstance(message, str):
                self._text(json.loads(message))
            else:
                self._answer(*protocol.unpack_frame(message))

    def _wait_connected(self) -> bool:
        """Waits while a reconnect is under way; False when the stream is stopping."""
        while not self._connected.wait(0.05):
            if self._stop.is_set():
                return False
        return not self._stop.is_set()

    def _reconnect(self, why: str) -> bool:
        """A new stream in place of the closed one; False (the close stays the stream's end) when none opens."""
        self._connected.clear()
        began = time.monotonic()
        with self._lock:
            self.stats.lost += len(self._sent_at)
            self._sent_at.clear()
        try:
            self.ws.close()
            self.ws, _ready = self.reconnect()
        except LiveError as error:
            self.stats.close = f"{why}; reconnecting failed: {error}"
            self._stop.set()
            self._connected.set()
            return False
        self.stats.reconnects.append({"why": why, "ms": (time.monotonic() - began) * 1000.0})
        self.stats.close = ""
        self._connected.set()
        return True

    def _text(self, message: dict) -> None:
        if message.get("type") == "error":
            with self._lock:
                if message.get("seq") is not None:
                    self.stats.refused += 1
                    self._sent_at.pop(message["seq"], None)
                self.stats.errors.append(f"seq {message.get('seq')}: {message.get('detail')}")

    def _answer(self, header: dict, image: bytes) -> None:
        now = time.monotonic()
        with self._lock:
            sent = self._sent_at.pop(header["seq"], None)
            for seq in header.get("dropped", []):
                self._sent_at.pop(seq, None)
            stats = self.stats
            stats.received += 1
            stats.dropped += len(header.get("dropped", []))
            stats.faces += int(header.get("faces", 0))
            stats.last_received = now
            if sent is not None:
                stats.latencies_ms.append((now - sent) * 1000.0)
            for key, value in header.get("timings", {}).items():
                stats.server_ms[key] = stats.server_ms.get(key, 0.0) + float(value)
        if self.on_answer:
            self.on_answer(header, image)


# ---------------------------------------------------------------------------------------------
# the output video


class AnswerVideo:
    """Writes the answers as a video with one frame per frame sent: a frame the server dropped or refused repeats
    the last answer before it (the frames before the first answer repeat the first answer)."""

    def __init__(self, output: Path, video: InputVideo, quality: int):
        self.output, self.video = output, video
        self.writer: VideoWriter | None = None
        self.next_seq = 0
        self.last: np.ndarray | None = None
        self.crf = max(0, min(51, round(51 - quality * 0.4)))

    def answer(self, header: dict, image: bytes) -> None:
        bgr = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise LiveError(f"the answer to frame {header['seq']} is not an image")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if self.writer is None:
            height, width = rgb.shape[:2]
            self.writer = VideoWriter(self.output, width, height, self.video.fps, crf=self.crf, preset="veryfast")
        self._repeat(self.last if self.last is not None else rgb, header["seq"] - self.next_seq)
        self.writer.write(rgb)
        self.last, self.next_seq = rgb, header["seq"] + 1

    def _repeat(self, rgb: np.ndarray, times: int) -> None:
        for _ in range(max(0, times)):
            self.writer.write(rgb)

    def close(self, frames: int) -> Path:
        if self.writer is None:
            raise LiveError(f"no frame came back: {self.output} not written")
        self._repeat(self.last, frames - self.next_seq)
        return self.writer.close()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


# ---------------------------------------------------------------------------------------------
# `swapstream live`


@dataclass
class LiveRequest:
    sources: list[Path]
    input: str
    url: str = DEFAULT_URL
    token: str | None = None
    output: Path | None = None
    stats: Path | None = None
    faces: str = "all"
    smoothing: bool = True
    quality: int = 80
    frames: int | None = None
    swapper: str | None = None  # None: the service's default


class Connector:
    """Opens streams for one request: the source uploaded once (stored identities are shared by the replicas),
    then for each stream a new ticket and socket. ``request.url`` may list several service addresses
    (``ws://a:8080,ws://b:8080``): each new stream tries the next address in turn, so that a stream closed by a
    leaving replica comes back through another one (behind one load-balanced address, list just that)."""

    def __init__(self, request: LiveRequest, retry_seconds: float = RECONNECT_SECONDS):
        self.request = request
        self.addresses = [endpoints(url) for url in request.url.split(",") if url.strip()]
        if not self.addresses:
            raise LiveError(f"--url {request.url!r} names no service address")
        self.retry_seconds = retry_seconds
        self._next = 0
        self.source_id = self._first_reachable(lambda http: upload_source(http, request.sources, request.swapper))

    def _http(self, http_url: str) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.request.token}"} if self.request.token else {}
        return httpx.Client(base_url=http_url, headers=headers, timeout=120)

    def _first_reachable(self, call):
        """``call(http)`` on the addresses in turn until one is reachable; its error if none is."""
        error = None
        for _ in self.addresses:
            http_url, _ws = self.addresses[self._next % len(self.addresses)]
            try:
                with self._http(http_url) as http:
                    return call(http)
            except LiveError as failed:
                if not str(failed).startswith("cannot reach"):
                    raise  # the service answered: a refusal is not a reason to try another address
                error = failed
                self._next += 1
        raise error

    def open(self) -> tuple[ClientConnection, dict]:
        """A new stream (ticket, socket, ``ready``), from the next address that opens one."""
        request = self.request
        deadline = time.monotonic() + self.retry_seconds
        while True:
            http_url, ws_url = self.addresses[self._next % len(self.addresses)]
            self._next += 1
            try:
                ticket = None
                if request.token:
                    with self._http(http_url) as http:
                        ticket = live_ticket(http)
                return start_stream(ws_url, self.source_id, ticket, faces=request.faces,
                                    smoothing=request.smoothing, quality=request.quality)
            except LiveError as error:
                # A replica on its way out refuses (1012) or is gone; another may take the stream.
                if time.monotonic() > deadline or not _worth_retrying(str(error)):
                    raise
                time.sleep(0.2)


def _worth_retrying(message: str) -> bool:
    return message.startswith(("cannot reach", "cannot open")) or f"code {protocol.CLOSE_SERVICE_RESTART}" in message


@contextmanager
def connect_stream(request: LiveRequest) -> Iterator[tuple[ClientConnection, dict]]:
    """Source uploaded, ticket taken (with a token), socket open and ``ready``."""
    ws, ready = Connector(request).open()
    with ws:
        yield ws, ready


def run_live(request: LiveRequest, say: Callable[[str], None] = print) -> dict:
    """Streams ``request.input``; returns (and writes to ``request.stats``) the figures."""
    if not 1 <= request.quality <= 100:
        raise LiveError(f"--quality {request.quality} is out of range: give 1 to 100")
    if request.frames is not None and request.frames < 1:
        raise LiveError(f"--frames {request.frames}: give 1 or more (or leave it out for the whole input)")
    if request.output is not None and not request.output.parent.resolve().is_dir():
        raise LiveError(f"output folder {request.output.parent} does not exist; create it first")
    video, frames = read_input(request.input, request.quality, request.frames)
    answers = AnswerVideo(request.output, video, request.quality) if request.output else None
    try:
        connector = Connector(request)
        ws, ready = connector.open()
        with ws:
            say(f"streaming {request.input} ({video.width}x{video.height}, {video.fps:.3g} frames/s"
                f"{', camera: Ctrl-C stops' if video.camera else ''}) as stream {ready.get('stream')}, swapper "
                f"{ready.get('swapper')}")
            stats = LiveStream(ws, answers.answer if answers else None, reconnect=connector.open).run(frames)
        if answers:
            answers.close(stats.sent)
    except BaseException:
        if answers:
            answers.abort()
        raise
    figures = stats.figures() | {"input": request.input, "input_fps": video.fps,
                                 "size": [video.width, video.height]}
    if request.stats:
        request.stats.write_text(json.dumps(figures, indent=2))
    if stats.close and not stats.close.startswith(f"code {protocol.CLOSE_NORMAL}"):
        raise LiveError(f"the service closed the stream: {stats.close}\n{summary_text(figures)}")
    return figures
