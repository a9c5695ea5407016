"""Issue 19: a live frame's header is checked when it arrives, its pixels are decoded only when the scheduler takes it.
A real ``swapstream serve`` on the session's Triton, real WebSockets; what was decoded is read from the service's
``swapstream_live_frames_decoded_total`` beside its other frame counters."""
from __future__ import annotations

import json
from contextlib import contextmanager

import cv2
import pytest
from websockets.sync.client import connect

from swapstream.benchmarks.media import cut
from swapstream.services.jobs.process import ServiceProcess
from swapstream.services.live import protocol
from tests.helpers.media import MEDIA, frames_of
from tests.helpers.service import metric_values, stored_source

FRAMES = 30
COUNTERS = ("received", "decoded", "answered", "refused")


@pytest.fixture(scope="module")
def service(tmp_path_factory, triton):
    """A batch waits for every open stream's frame (no window end, no budget), so two streams share each batch."""
    data = tmp_path_factory.mktemp("live-decode") / "data"
    with ServiceProcess(data, "--triton", triton.grpc_url, "--workers", "0", "--min-free-mb", "0",
                        "--max-streams", "2", "--live-window-ms", "600000", "--live-latency-ms", "0") as running:
        yield running


@pytest.fixture(scope="module")
def source(service) -> str:
    with service.client() as http:
        return stored_source(http)


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> list[bytes]:
    clip = cut(MEDIA / "vid03_square_480_expressions.mp4", tmp_path_factory.mktemp("clip") / "clip.mp4", FRAMES)
    return [cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))[1].tobytes() for frame in frames_of(clip)]


def counters(service) -> dict[str, float]:
    with service.client() as http:
        values = metric_values(http)
    counted = {name: values[f"swapstream_live_frames_{name}_total"] for name in COUNTERS}
    for reason in ("newer_frame", "slow_client"):
        counted[reason] = values[f'swapstream_live_frames_dropped_total{{reason="{reason}"}}']
    return counted


@contextmanager
def open_stream(service, source: str):
    with connect(service.url.replace("http://", "ws://") + "/v1/live", subprotocols=[protocol.SUBPROTOCOL],
                 max_size=None, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "start", "source_id": source}))
        assert json.loads(ws.recv(timeout=60))["type"] == "ready"
        yield ws


def reply(ws, timeout: float = 120):
    message = ws.recv(timeout=timeout)
    return protocol.unpack_frame(message) if isinstance(message, bytes) else json.loads(message)


def test_dropped_frames_are_never_decoded(service, source, faces):
    """A burst of frames: the scheduler takes a few, the others are replaced by newer ones before it comes back.
    Every decode is of a frame that was then answered or refused; none of a dropped one."""
    before = counters(service)
    answered, errors = [], []
    with open_stream(service, source) as ws:
        for seq, face in enumerate(faces):
            ws.send(protocol.pack_frame({"seq": seq, "ts": 40.0 * seq}, face))
        ws.send(json.dumps({"type": "stop"}))
        while (message := reply(ws)) and not (isinstance(message, dict) and message["type"] == "end"):
            (answered if isinstance(message, tuple) else errors).append(message)
    counted = {name: value - before[name] for name, value in counters(service).items()}
    assert not errors, errors
    assert counted["received"] == FRAMES and counted["answered"] == len(answered) > 0, counted
    assert counted["newer_frame"] > 0, counted
    assert counted["decoded"] <= counted["answered"] + counted["refused"] + counted["slow_client"], counted
    assert counted["decoded"] == FRAMES - counted["newer_frame"], counted  # each frame taken, decoded once


def test_a_frame_whose_pixels_fail_fails_alone(service, source, faces):
    """A truncated JPEG passes the header checks on arrival; when taken, its pixels cannot be decoded: its stream gets
    the error for that seq and goes on, and the other stream's frame in the same batch is answered."""
    truncated = faces[0][:len(faces[0]) // 2]
    before = counters(service)
    with open_stream(service, source) as good, open_stream(service, source) as bad:
        bad.send(protocol.pack_frame({"seq": 0, "ts": 0}, truncated))
        good.send(protocol.pack_frame({"seq": 0, "ts": 0}, faces[0]))
        error = reply(bad)
        assert error["type"] == "error" and error["seq"] == 0 and error["code"] == "bad_frame", error
        assert "truncated or corrupt" in error["detail"], error
        header, _ = reply(good)
        assert header["seq"] == 0 and header["faces"] == 1 and header["batch"] == 2, header  # one batch, both
        for ws in (bad, good):  # the stream with the bad frame goes on
            ws.send(protocol.pack_frame({"seq": 1, "ts": 40.0}, faces[1]))
        for ws in (bad, good):
            header, _ = reply(ws)
            assert header["seq"] == 1 and header["faces"] == 1, header
    counted = {name: value - before[name] for name, value in counters(service).items()}
    assert counted["decoded"] == 4 and counted["refused"] == 1 and counted["answered"] == 3, counted
    assert "Traceback" not in service.log()
