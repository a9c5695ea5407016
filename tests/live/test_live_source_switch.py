"""WS /v1/live on a real ``swapstream serve`` (the session's Triton, stand-in swap asked for by name): the ``source``
message switches the person mid-stream without reconnecting, a bad ``source`` fails only that request with a
``code``, and every ``error`` message carries a ``code`` beside its ``detail``."""
from __future__ import annotations

import base64
import json
from contextlib import contextmanager

import cv2
import numpy as np
import pytest
from websockets.sync.client import connect

from swapstream.benchmarks.media import cut
from swapstream.services.jobs.process import ServiceProcess
from swapstream.services.live import protocol
from swapstream.services.triton import standins
from tests.helpers.engine import simswap_face_swapper, source_embedding
from tests.helpers.media import MEDIA, frames_of
from tests.helpers.service import OBAMA

ROSE = MEDIA / "img03_single_frontal_rose_leslie.jpg"


@pytest.fixture(scope="module")
def service(tmp_path_factory, triton):
    with ServiceProcess(tmp_path_factory.mktemp("switch") / "data", "--triton", triton.grpc_url) as running:
        yield running


@pytest.fixture(scope="module")
def sources(service):
    ids = {}
    with service.client() as http:
        for name, photo, swapper in (("obama", OBAMA, "simswap"), ("rose", ROSE, "simswap"), ("mesh", OBAMA, "mesh")):
            answer = http.post("/v1/sources", files=[("source", (photo.name, photo.read_bytes(), "image/jpeg"))],
                               data={"swapper": swapper})
            assert answer.status_code == 201, answer.text
            ids[name] = answer.json()["id"]
    return ids


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    clip = cut(MEDIA / "vid03_square_480_expressions.mp4", tmp_path_factory.mktemp("clip") / "clip.mp4", 1)
    return frames_of(clip)[0]


def jpeg(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def faceless() -> bytes:
    wall = np.tile(np.linspace(60, 200, 320, dtype=np.uint8)[None, :, None], (240, 1, 3))
    return jpeg(wall)


class Stream:
    """One synchronous client: a frame out, then read until its answer (text messages kept on the way)."""

    def __init__(self, ws, source_id: str):
        self.ws = ws
        self.ws.send(json.dumps({"type": "start", "source_id": source_id, "quality": 95}))
        assert json.loads(self.ws.recv(timeout=30))["type"] == "ready"
        self.seq = 0
        self.texts: list[dict] = []

    def send_frame(self, image: bytes) -> int:
        self.seq += 1
        self.ws.send(protocol.pack_frame({"seq": self.seq, "ts": 0}, image))
        return self.seq

    def answer(self, image: bytes) -> tuple[dict, np.ndarray | None]:
        """The answer to one frame: (header, RGB), or (the error message, None)."""
        seq = self.send_frame(image)
        for _ in range(50):
            message = self.ws.recv(timeout=120)
            if isinstance(message, bytes):
                header, data = protocol.unpack_frame(message)
                if header["seq"] == seq:
                    return header, cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                                                cv2.COLOR_BGR2RGB)
            else:
                text = json.loads(message)
                if text.get("seq") == seq:
                    return text, None
                self.texts.append(text)
        raise AssertionError("no answer")

    def text(self, kind: str) -> dict:
        """The next text message of ``kind`` (those read on the way first)."""
        for _ in range(50):
            found = [t for t in self.texts if t["type"] == kind]
            if found:
                self.texts.remove(found[0])
                return found[0]
            message = self.ws.recv(timeout=120)
            if isinstance(message, str):
                self.texts.append(json.loads(message))
        raise AssertionError(f"no {kind} message; read {self.texts}")

    def close(self):
        self.ws.send(json.dumps({"type": "stop"}))
        assert self.text("end")["type"] == "end"
        self.ws.close()


@contextmanager
def live(service, source_id: str):
    with connect(service.url.replace("http://", "ws://") + "/v1/live", subprotocols=[protocol.SUBPROTOCOL],
                 max_size=None, open_timeout=10) as ws:
        yield Stream(ws, source_id)


def cheeks_shift(client, original: np.ndarray, swapped: np.ndarray) -> np.ndarray:
    (x1, y1, x2, y2), = client.detect(original[None]).boxes.astype(int)
    cheeks = (slice(y1 + (y2 - y1) // 4, y1 + (y2 - y1) // 2), slice(x1 + (x2 - x1) // 4, x2 - (x2 - x1) // 4))
    return (swapped[cheeks].astype(float) - original[cheeks]).mean(axis=(0, 1)), cheeks


def expected_shift(client, photo, original, cheeks) -> np.ndarray:
    shift = standins.swap_shift(source_embedding(simswap_face_swapper(client), [photo])) * 255
    before = original[cheeks].astype(float)
    return (np.clip(before + shift, 0, 255) - before).mean(axis=(0, 1))


def test_source_message_switches_the_person_without_reconnecting(service, sources, frame, client):
    with live(service, sources["obama"]) as stream:
        header, as_obama = stream.answer(jpeg(frame))
        assert header["faces"] == 1
        stream.ws.send(json.dumps({"type": "source", "source_id": sources["rose"]}))
        assert stream.text("switched") == {"type": "switched", "source_id": sources["rose"]}
        header, as_rose = stream.answer(jpeg(frame))
        assert header["faces"] == 1
        # a photo sent in the message (base64) works the same, and back to the first person
        stream.ws.send(json.dumps({"type": "source", "source_image": base64.b64encode(OBAMA.read_bytes()).decode()}))
        assert stream.text("switched")["source_id"] is None
        _, as_obama_again = stream.answer(jpeg(frame))
        stream.close()
    original = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg(frame), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    obama_shift, cheeks = cheeks_shift(client, original, as_obama)
    rose_shift, _ = cheeks_shift(client, original, as_rose)
    again_shift, _ = cheeks_shift(client, original, as_obama_again)
    obama_expected = expected_shift(client, OBAMA, original, cheeks)
    rose_expected = expected_shift(client, ROSE, original, cheeks)
    assert np.abs(obama_expected - rose_expected).max() > 10  # the two people are told apart by their shift
    np.testing.assert_allclose(obama_shift, obama_expected, atol=6)
    np.testing.assert_allclose(rose_shift, rose_expected, atol=6)
    np.testing.assert_allclose(again_shift, obama_expected, atol=6)


def test_a_bad_source_fails_only_its_request_with_a_code(service, sources, frame):
    big = "A" * (protocol.MAX_START_BYTES + 10)
    requests = {
        "no_face_in_source": {"type": "source", "source_image": base64.b64encode(faceless()).decode()},
        "not_found": {"type": "source", "source_id": "nope"},
        "wrong_swapper": {"type": "source", "source_id": sources["mesh"]},
        "not_a_photo": {"type": "source", "source_image": base64.b64encode(b"not a photo at all").decode()},
        "bad_message": {"type": "source"},
    }
    with live(service, sources["obama"]) as stream:
        for code, request in requests.items():
            stream.ws.send(json.dumps(request))
            refused = stream.text("error")
            assert refused["code"] == code and refused["detail"], (code, refused)
            assert refused.get("request") == ("source" if code != "bad_message" else None), refused
            header, swapped = stream.answer(jpeg(frame))  # the stream goes on, with the first person
            assert swapped is not None and header["faces"] == 1
        stream.ws.send(json.dumps({"type": "source", "source_image": big}))
        assert stream.text("error")["code"] == "too_large"
        stream.ws.send("not json")
        assert stream.text("error")["code"] == "bad_message"
        # one source at a time: a second while the first photo is being made into an identity is refused
        photo = base64.b64encode(OBAMA.read_bytes()).decode()
        stream.ws.send(json.dumps({"type": "source", "source_image": photo}))
        stream.ws.send(json.dumps({"type": "source", "source_id": sources["rose"]}))
        pending = stream.text("error")
        assert pending["code"] == "switch_pending" and pending["request"] == "source", pending
        assert stream.text("switched")["source_id"] is None
        # frames refused with a code, the stream going on
        refused, image = stream.answer(b"\xff\xd8 not a jpeg")
        assert image is None and refused["type"] == "error" and refused["code"] == "bad_frame", refused
        assert stream.answer(jpeg(frame))[1] is not None
        stream.close()


def test_post_sources_answers_the_code_of_a_refused_photo(service):
    with service.client() as http:
        for code, data in (("no_face_in_source", faceless()), ("not_a_photo", b"hello, not a photo")):
            answer = http.post("/v1/sources", files=[("source", ("photo.jpg", data, "image/jpeg"))])
            assert answer.status_code == 422 and answer.json()["code"] == code, answer.text
