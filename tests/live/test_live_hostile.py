"""Hostile live clients (issue 18, items 2, 3, 5, 6, 7, 8 and 10) against a real ``swapstream serve`` (default instance:
no token, loopback) on the session's Triton: strips that used to be padded to one huge batch, frame headers outside
the schema next to a neighbour's good frames, many starts at once, errors that used to drop the connection, a slot
held by text messages, and the close when the service stops. The service's peak memory is read from
``/proc/<pid>/status`` (VmHWM, reset through ``clear_refs`` before each measure)."""
from __future__ import annotations

import base64
import io
import json
import struct
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from swapstream.benchmarks.media import cut
from swapstream.services.jobs.process import ServiceProcess
from swapstream.services.live import protocol
from tests.helpers.hostile import scan_bomb
from tests.helpers.media import MEDIA, frames_of
from tests.helpers.service import OBAMA, stored_source

IDLE = 3.0


@pytest.fixture(scope="module")
def service(tmp_path_factory, triton):
    data = tmp_path_factory.mktemp("live-hostile") / "data"
    with ServiceProcess(data, "--triton", triton.grpc_url, "--workers", "0", "--min-free-mb", "0",
                        "--max-streams", "2", "--live-idle-timeout", str(IDLE), "--live-window-ms", "40") as running:
        yield running


@pytest.fixture(scope="module")
def source(service) -> str:
    with service.client() as http:
        return stored_source(http)


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> list[bytes]:
    clip = cut(MEDIA / "vid03_square_480_expressions.mp4", tmp_path_factory.mktemp("clip") / "clip.mp4", 8)
    return [jpeg(frame) for frame in frames_of(clip)]


def jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    return cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def grey(height: int, width: int) -> bytes:
    return jpeg(np.full((height, width, 3), 120, np.uint8))


def raw_frame(header: bytes, image: bytes) -> bytes:
    """A frame with a header written by hand (Python's json would not write 1e400)."""
    return struct.pack(">I", len(header)) + header + image


def strict(text: str) -> dict:
    """Parses JSON as a browser does: NaN or Infinity fail."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def _status_kb(pid: int, field: str) -> int:
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1])


class Peak:
    """How far the service's resident memory rose above where it was at the start of the ``with``, in MB."""

    def __init__(self, service):
        self.pid = service.process.pid

    def __enter__(self) -> "Peak":
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        self.before = _status_kb(self.pid, "VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        self.grown_mb = (_status_kb(self.pid, "VmHWM") - self.before) / 1024


@contextmanager
def open_stream(service, source: str | None = None, **start):
    """A socket to WS /v1/live; with ``source`` (an id) or ``start`` fields, started and ready."""
    with connect(service.url.replace("http://", "ws://") + "/v1/live", subprotocols=[protocol.SUBPROTOCOL],
                 max_size=None, open_timeout=10) as ws:
        if source is not None or start:
            ws.send(json.dumps({"type": "start", **({"source_id": source} if source else {}), **start}))
            ready = strict(ws.recv(timeout=60))
            assert ready["type"] == "ready", ready
        yield ws


def closed_with(ws, timeout: float = 60) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed) as closed:
        for _ in range(1000):
            ws.recv(timeout=timeout)
    assert closed.value.rcvd is not None, "the connection dropped without a close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason


def replies(ws, count: int, timeout: float = 120) -> list:
    """The next ``count`` messages: (header, image) answers and strictly parsed text messages."""
    out = []
    for _ in range(count):
        message = ws.recv(timeout=timeout)
        out.append(protocol.unpack_frame(message) if isinstance(message, bytes) else strict(message))
    return out


def no_tracebacks(service) -> None:
    assert "Traceback" not in service.log(), service.log()[-3000:]


# ------------------------------------------------------------------------------------- 3. headers at the edge

BAD_TS = [b"1e400", b"NaN", b"Infinity", b"-Infinity", b"-1e400", b"1e16", b'"soon"']


def test_a_bad_ts_fails_only_its_own_frame_and_never_its_neighbour_s(service, source, faces):
    with open_stream(service, source) as good, open_stream(service, source) as bad:
        for index, ts in enumerate(BAD_TS):
            seq = 10 * index
            good.send(protocol.pack_frame({"seq": seq, "ts": 1000.0 * index}, faces[index % len(faces)]))
            bad.send(raw_frame(b'{"seq":%d,"ts":%s}' % (seq, ts), faces[(index + 1) % len(faces)]))
            bad.send(protocol.pack_frame({"seq": seq + 1, "ts": 1000.0 * index}, faces[index % len(faces)]))
            # the neighbour's frame is answered (or dropped for a newer one), never refused
            answer = replies(good, 1)[0]
            assert isinstance(answer, tuple), answer
            assert answer[0]["seq"] == seq and answer[0]["faces"] == 1
            refused, answered = replies(bad, 2)
            assert refused["type"] == "error" and refused["seq"] == seq, refused
            assert "finite" in refused["detail"] or "'ts' must be from" in refused["detail"], refused
            assert isinstance(answered, tuple) and answered[0]["seq"] == seq + 1, answered
    no_tracebacks(service)


# --------------------------------------------------------------------------------------- 2. strips, padding

def test_tall_and_wide_strips_cost_their_own_pixels(service, source):
    """Two streams send a wide and a tall strip at once. Each is under the pixel limit; padded to one size they
    made a 10000x10000 batch (1.3 GB). Strips past the side limit are refused; those within it are answered, and
    the service's memory rises by about their own pixels."""
    with open_stream(service, source) as wide, open_stream(service, source) as tall, Peak(service) as peak:
        wide.send(protocol.pack_frame({"seq": 0, "ts": 0}, grey(200, 10000)))
        tall.send(protocol.pack_frame({"seq": 0, "ts": 0}, grey(10000, 200)))
        for ws in (wide, tall):
            refused = replies(ws, 1)[0]
            assert refused["type"] == "error" and "pixels a side" in refused["detail"], refused
        for seq in range(1, 4):
            wide.send(protocol.pack_frame({"seq": seq, "ts": seq}, grey(208, 1920)))
            tall.send(protocol.pack_frame({"seq": seq, "ts": seq}, grey(1920, 208)))
            for ws, shape in ((wide, (208, 1920, 3)), (tall, (1920, 208, 3))):
                header, image = replies(ws, 1)[0]
                assert header["seq"] == seq
                assert cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR).shape == shape
    print(f"peak RSS growth, two streams of strips: {peak.grown_mb:.0f} MB")
    assert peak.grown_mb < 200, f"the service's memory rose by {peak.grown_mb:.0f} MB for strips of 0.4 MP"


# ------------------------------------------------------------------------------------------ 5. many starts

@pytest.fixture(scope="module")
def big_start() -> str:
    rgb = np.random.default_rng(1).integers(0, 256, (3000, 3600, 3), np.uint8)
    start = json.dumps({"type": "start", "source_image": base64.b64encode(jpeg(rgb, 85)).decode()})
    assert 8 << 20 < len(start) < 15 << 20
    return start


def test_pending_starts_are_bounded_and_a_start_is_small(service, big_start):
    with open_stream(service) as first, open_stream(service):  # two sockets starting (max streams 2)
        with open_stream(service) as third:
            code, reason = closed_with(third)
        assert code == protocol.CLOSE_TRY_LATER and "starting" in reason, (code, reason)
        first.send(big_start)
        code, reason = closed_with(first)
        assert code == protocol.CLOSE_TOO_BIG and "start message is" in reason, (code, reason)
    outcomes: list[tuple[int, str]] = []
    lock = threading.Lock()

    def starter():
        try:
            with open_stream(service) as ws:
                ws.send(big_start)
                result = closed_with(ws)
        except (ConnectionClosed, OSError) as error:  # closed while the start was still being sent
            result = (getattr(getattr(error, "rcvd", None), "code", 0), str(error))
        with lock:
            outcomes.append(result)

    with Peak(service) as peak:
        threads = [threading.Thread(target=starter) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    print(f"peak RSS growth, 12 starts of {len(big_start) >> 20} MB at once: {peak.grown_mb:.0f} MB")
    assert len(outcomes) == 12
    allowed = {protocol.CLOSE_TOO_BIG, protocol.CLOSE_TRY_LATER, protocol.CLOSE_IDLE, 0}  # idle: still sending
    assert {code for code, _ in outcomes} <= allowed, outcomes
    assert peak.grown_mb < 300, f"12 starts raised the service's memory by {peak.grown_mb:.0f} MB"
    no_tracebacks(service)


# ---------------------------------------------------------------------------------- 7. errors, cleanly closed

def _bomb_header_jpeg() -> bytes:
    """A small JPEG whose frame header claims 65500x65500 pixels (Pillow's DecompressionBombError)."""
    data = bytearray(grey(16, 16))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 65500, 65500)
    return bytes(data)


def _animated_webp() -> bytes:
    photo = Image.open(OBAMA).convert("RGB")
    out = io.BytesIO()
    photo.save(out, "WEBP", save_all=True, append_images=[photo.transpose(Image.FLIP_LEFT_RIGHT)], duration=100)
    return out.getvalue()


def test_bad_frames_get_an_error_and_the_stream_goes_on(service, source, faces):
    with open_stream(service, source) as ws:
        ws.send(raw_frame(b"[" * 1000, faces[0]))                             # deep JSON (RecursionError)
        ws.send(raw_frame(b'{"seq":1,"x":"' + b"y" * 2000 + b'"}', faces[0]))  # a header over its limit
        ws.send(protocol.pack_frame({"seq": 2, "ts": 0}, _bomb_header_jpeg()))  # DecompressionBombError
        ws.send(protocol.pack_frame({"seq": 3, "ts": 0}, scan_bomb()))          # 16000 progressive scans
        ws.send(protocol.pack_frame({"seq": 4, "ts": 0}, faces[0]))
        errors = replies(ws, 4)
        assert [e["type"] for e in errors] == ["error"] * 4, errors
        assert "nested too deeply" in errors[0]["detail"] or "not JSON" in errors[0]["detail"], errors[0]
        assert "more than 1024" in errors[1]["detail"], errors[1]
        assert errors[2]["seq"] == 2 and "pixels" in errors[2]["detail"], errors[2]
        assert errors[3]["seq"] == 3 and "scans" in errors[3]["detail"], errors[3]
        header, _ = replies(ws, 1)[0]
        assert header["seq"] == 4
    no_tracebacks(service)


@pytest.mark.parametrize("case", ["deep JSON", "bomb", "scan bomb", "animated", "not base64", "no face"])
def test_a_bad_start_is_closed_with_its_own_code_and_a_reason(service, case):
    if case == "deep JSON":
        start, code, words = '{"type":"start","x":' + "[" * 100000 + "]" * 100000 + "}", protocol.CLOSE_BAD_START, \
            "nested too deeply"
    elif case == "not base64":
        start, code, words = json.dumps({"type": "start", "source_image": "%%%"}), protocol.CLOSE_BAD_START, "base64"
    else:
        photo = {"bomb": _bomb_header_jpeg(), "scan bomb": scan_bomb(), "animated": _animated_webp(),
                 "no face": grey(240, 320)}[case]
        start = json.dumps({"type": "start", "source_image": base64.b64encode(photo).decode()})
        code, words = {"bomb": (protocol.CLOSE_BAD_START, "pixels"), "scan bomb": (protocol.CLOSE_BAD_START, "scans"),
                       "animated": (protocol.CLOSE_BAD_START, "animated"),
                       "no face": (protocol.CLOSE_NO_FACE, "no face found")}[case]
    with open_stream(service) as ws:
        ws.send(start)
        closed = closed_with(ws)
    assert closed[0] == code and words in closed[1], closed
    assert "--" not in closed[1], closed  # no CLI option named to a browser user
    no_tracebacks(service)


def test_a_bad_source_photo_is_a_422_not_a_500(service):
    with service.client() as http:
        for name, photo, words in (("bomb.jpg", _bomb_header_jpeg(), "pixels"),
                                   ("animated.webp", _animated_webp(), "animated")):
            answer = http.post("/v1/sources", files=[("source", (name, photo, "image/jpeg"))])
            assert answer.status_code == 422 and words in answer.json()["detail"], answer.text
    no_tracebacks(service)


# ------------------------------------------------------------------------------------------------- 8. idle

def test_only_frames_keep_a_stream_open(service, source):
    code = reason = None
    with open_stream(service, source) as ws:
        for _ in range(int(4 * IDLE / 0.5)):  # a text message every 0.5 s (each answered with an error)
            try:
                ws.send(json.dumps({"type": "ping"}))
                time.sleep(0.5)
                while True:
                    ws.recv(timeout=0.01)
            except TimeoutError:
                continue
            except ConnectionClosed as closed:
                code, reason = closed.rcvd.code, closed.rcvd.reason
                break
    assert code == protocol.CLOSE_IDLE and "no frame" in reason, (code, reason)


# ------------------------------------------------------------------------------------ 10. the service stops

def test_a_stopping_service_closes_streams_with_1012_and_says_to_reconnect(service, source):
    """Last in the module: it stops the service."""
    with open_stream(service, source) as ws:
        service.stop()
        code, reason = closed_with(ws, timeout=30)
    assert code == protocol.CLOSE_SERVICE_RESTART and "reconnect" in reason, (code, reason)
