"""WS /v1/live on a real ``swapstream serve`` process (the session's Triton: the default swapper is mesh; the tests of
the stand-ins' known colour shift ask for swapper simswap), spoken to by real WebSocket clients that stream real
clips at their own frame rate."""
from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field

import cv2
import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from swapstream.benchmarks.media import cut
from swapstream.services.engine.swapper import similarity_to
from swapstream.services.jobs.process import ServiceProcess
from swapstream.services.live import protocol
from swapstream.services.triton import standins
from tests.helpers.engine import simswap_face_swapper, source_embedding
from tests.helpers.judge import SAME_PERSON, distances_to, judge
from tests.helpers.media import MEDIA, frames_of
from tests.helpers.service import OBAMA, metric_values

ROSE = MEDIA / "img03_single_frontal_rose_leslie.jpg"
TOKEN = "live-test-token"
FPS = 25.0
SECONDS = 2.0


@pytest.fixture(scope="module")
def service(tmp_path_factory, triton):
    data = tmp_path_factory.mktemp("live") / "data"
    # No latency budget: on a CPU it would cut every round to one frame (a stand-in swap takes longer than the
    # budget), and these tests check what two streams' frames in one batch get. The budget has its own tests.
    with ServiceProcess(data, "--triton", triton.grpc_url, "--token", TOKEN, "--max-streams", "2",
                        "--live-idle-timeout", "2", "--live-window-ms", "5", "--live-latency-ms", "0") as running:
        yield running


@pytest.fixture(scope="module")
def http(service):
    with service.client(TOKEN) as client:
        yield client


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two real clips of different sizes, as JPEG frames (what a camera page sends)."""
    folder = tmp_path_factory.mktemp("clips")
    count = int(FPS * SECONDS)
    square = frames_of(cut(MEDIA / "vid03_square_480_expressions.mp4", folder / "square.mp4", count))
    wide = frames_of(cut(MEDIA / "vid01_talking_head_1280x720_audio.mp4", folder / "wide.mp4", count))
    return {"square": [jpeg(f) for f in square], "wide": [jpeg(f) for f in wide]}


@pytest.fixture(scope="module")
def swapper(client):
    return simswap_face_swapper(client)


@pytest.fixture(scope="module")
def sources(http):
    """Stored sources: "obama" on the service's default swapper (mesh), "obama_simswap" and "rose_simswap" for the
    stand-ins' colour shift."""
    ids = {}
    for name, photo, form in (("obama", OBAMA, {}), ("obama_simswap", OBAMA, {"swapper": "simswap"}),
                              ("rose_simswap", ROSE, {"swapper": "simswap"})):
        response = http.post("/v1/sources", files=[("source", (photo.name, photo.read_bytes(), "image/jpeg"))],
                             data=form)
        assert response.status_code == 201, response.text
        assert response.json()["swapper"] == form.get("swapper", "mesh")
        ids[name] = response.json()["id"]
    return ids


@pytest.fixture(scope="module")
def warm(service, http, clips, sources):
    """One frame of each size through the server first, with each swapper: Triton's and DALI's first run of a shape
    is slow."""
    for source in ("obama", "obama_simswap"):
        with open_socket(service, http) as ws:
            ws.send(json.dumps({"type": "start", "source_id": sources[source]}))
            ws.recv(timeout=30)
            for seq, frame in enumerate((clips["square"][0], clips["wide"][0])):
                ws.send(protocol.pack_frame({"seq": seq, "ts": 0}, frame))
                assert protocol.unpack_frame(ws.recv(timeout=120))[0]["seq"] == seq


def jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    return cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def rgb_of(data: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def ws_url(service) -> str:
    return service.url.replace("http://", "ws://") + "/v1/live"


def open_socket(service, http, ticket: str | None = "new", small_buffers: bool = False):
    """A WebSocket to WS /v1/live with a fresh ticket (or the one given, or none). ``small_buffers``: the client
    holds at most one message and a 4 KB kernel buffer, so a client that does not read is felt at once."""
    if ticket == "new":
        response = http.post("/v1/live/tickets")
        assert response.status_code == 201, response.text
        ticket = response.json()["ticket"]
    offered = [protocol.SUBPROTOCOL] + ([protocol.TICKET_PREFIX + ticket] if ticket else [])
    extra = {}
    if small_buffers:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", service.port))
        extra = {"sock": sock, "max_queue": 1}
    return connect(ws_url(service), subprotocols=offered, max_size=None, open_timeout=10, **extra)


def closed_with(ws) -> tuple[int, str]:
    """Reads until the server closes; its close code and reason."""
    with pytest.raises(ConnectionClosed) as closed:
        for _ in range(100):
            ws.recv(timeout=15)
    return closed.value.rcvd.code, closed.value.rcvd.reason


@dataclass
class Run:
    sent: list[int] = field(default_factory=list)
    answers: list[tuple[dict, bytes]] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    end: dict | None = None
    ready: dict | None = None

    @property
    def dropped(self) -> list[int]:
        return [seq for header, _ in self.answers for seq in header["dropped"]] + self.end["dropped"]


def stream(service, http, frames: list[bytes], start: dict, read: bool = True, min_answers: int = 3) -> Run:
    """Streams ``frames`` at FPS (real-time pace), reading answers as they come (or only after the last frame is
    sent, with small buffers: a client that does not read), then stops. A reading client goes on with the clip
    from its start (for at most 10 s) until ``min_answers`` came back: a loaded machine answers fewer frames."""
    run = Run()
    with open_socket(service, http, small_buffers=not read) as ws:
        ws.send(json.dumps({"type": "start", "quality": 95, **start}))
        run.ready = json.loads(ws.recv(timeout=30))
        assert run.ready["type"] == "ready", run.ready

        def receive():
            for message in ws:
                if isinstance(message, bytes):
                    run.answers.append(protocol.unpack_frame(message))
                else:
                    text = json.loads(message)
                    if text["type"] == "end":
                        run.end = text
                    else:
                        run.errors.append(text)

        reader = threading.Thread(target=receive, daemon=True)
        started = time.monotonic()
        if read:
            reader.start()
        seq = 0
        while seq < len(frames) or (read and len(run.answers) < min_answers and seq < 10 * FPS):
            time.sleep(max(0.0, started + seq / FPS - time.monotonic()))
            ws.send(protocol.pack_frame({"seq": seq, "ts": round(time.time() * 1000, 1)}, frames[seq % len(frames)]))
            run.sent.append(seq)
            seq += 1
        if not read:
            reader.start()
        ws.send(json.dumps({"type": "stop"}))
        reader.join(60)
    assert run.end is not None, "no end message after stop"
    return run


def face_regions(swapper, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pixels well inside the detected faces' skin, pixels clear of every face's swapped area) of a frame."""
    found = swapper.detect(rgb[None])
    inside = np.zeros(rgb.shape[:2], bool)
    outside = np.ones(rgb.shape[:2], bool)
    for box, landmarks in zip(found.boxes, found.landmarks):
        eyes, nose = landmarks[:2].mean(axis=0), landmarks[2]
        radius = 0.35 * np.linalg.norm(landmarks[0] - landmarks[1])
        cheeks = (nose + eyes) / 2  # between the eyes and the nose tip: skin, never the mouth
        ys, xs = np.mgrid[:rgb.shape[0], :rgb.shape[1]]
        inside |= (xs - cheeks[0]) ** 2 + (ys - cheeks[1]) ** 2 < radius ** 2
        crop = similarity_to(landmarks[None], "ffhq_512", 512)[0]  # frame -> the 512 crop the swap works in
        u = crop[0, 0] * xs + crop[0, 1] * ys + crop[0, 2]
        v = crop[1, 0] * xs + crop[1, 1] * ys + crop[1, 2]
        (cx, cy), (ax, ay) = standins.SKIN_CENTRE, standins.SKIN_AXES  # the parser stand-in's face area
        outside &= ((u - cx) / (ax + 40)) ** 2 + ((v - cy) / (ay + 40)) ** 2 > 1  # + feather and smoothing drift
    return inside, outside


def check_answers(run: Run, frames: list[bytes], swapper, embedding: np.ndarray) -> np.ndarray:
    """In order, every frame answered or dropped, the source's colour shift inside the faces, nothing changed
    elsewhere; returns the mean shift measured inside the faces."""
    seqs = [header["seq"] for header, _ in run.answers]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert sorted(seqs + run.dropped) == run.sent  # sent = answered + dropped (none refused here)
    assert len(run.answers) >= 3
    expected = standins.swap_shift(embedding) * 255.0
    shifts = []
    for header, image in run.answers:
        assert set(header["timings"]) >= {"queue", "detect", "swap", "blend", "encode", "total"}
        original = rgb_of(frames[header["seq"] % len(frames)])
        sent, answer = original.astype(np.float32), rgb_of(image).astype(np.float32)
        assert answer.shape == sent.shape
        inside, outside = face_regions(swapper, original)
        assert header["faces"] >= 1 and inside.any() and outside.mean() > 0.2
        assert np.abs(answer[outside] - sent[outside]).mean() < 2.0  # JPEG noise only
        shifts.append((answer[inside] - sent[inside]).mean(axis=0))
    measured = np.median(shifts, axis=0)
    np.testing.assert_allclose(measured, expected, atol=6.0)
    return measured


# --------------------------------------------------------------------------------------------- streams

def test_one_stream_answers_in_order_with_the_swap_inside_the_faces_only(service, http, clips, sources, swapper,
                                                                        warm):
    run = stream(service, http, clips["square"], {"source_id": sources["obama_simswap"]})
    assert not run.errors and run.ready["swapper"] == "simswap"
    check_answers(run, clips["square"], swapper, source_embedding(swapper, [OBAMA]))
    assert run.end["answered"] == len(run.answers)


def test_two_streams_with_different_sources_share_calls(service, http, clips, sources, swapper, triton, warm):
    import tritonclient.grpc as grpcclient
    stats = grpcclient.InferenceServerClient(triton.grpc_url)

    def swap_requests() -> int:
        success = stats.get_inference_statistics("swap", as_json=True)["model_stats"][0]["inference_stats"]["success"]
        return int(success.get("count", 0))  # proto3 JSON leaves a zero out
    before = swap_requests()
    runs = {}
    threads = [threading.Thread(target=lambda name=name, clip=clip, start=start: runs.__setitem__(
        name, stream(service, http, clips[clip], start)))
        for name, clip, start in (("obama", "square", {"source_id": sources["obama_simswap"]}),
                                  ("rose", "wide", {"source_image": base64.b64encode(ROSE.read_bytes()).decode(),
                                                    "swapper": "simswap"}))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    calls = swap_requests() - before
    obama = check_answers(runs["obama"], clips["square"], swapper, source_embedding(swapper, [OBAMA]))
    rose = check_answers(runs["rose"], clips["wide"], swapper, source_embedding(swapper, [ROSE]))
    assert np.abs(obama - rose).max() > 10  # two identities, two shifts
    answered = sum(len(run.answers) for run in runs.values())
    shared = [h for run in runs.values() for h, _ in run.answers if h["batch"] == 2]
    assert shared, "no batch held frames of both streams"
    assert calls < answered, f"{calls} swap calls for {answered} frames: the streams did not share calls"
    metrics = metric_values(http)
    batches = {le: metrics[f'swapstream_live_batch_frames_bucket{{le="{le}"}}'] for le in ("1.0", "2.0")}
    assert batches["2.0"] > batches["1.0"]  # batches of 2 frames were formed
    assert metrics["swapstream_live_frames_answered_total"] >= answered
    assert metrics["swapstream_live_streams"] == 0


def outside_boxes(swapper, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the detected faces' boxes, pixels farther than a quarter of a face box from every face box) of a frame."""
    found = swapper.detect(rgb[None])
    keep = np.ones(rgb.shape[:2], bool)
    for x1, y1, x2, y2 in found.boxes:
        mx, my = (x2 - x1) / 4, (y2 - y1) / 4
        keep[max(int(y1 - my), 0):int(y2 + my) + 1, max(int(x1 - mx), 0):int(x2 + mx) + 1] = False
    return found.boxes, keep


def test_a_stream_on_the_default_swapper_changes_the_faces_only_into_the_source_person(service, http, clips,
                                                                                       sources, swapper, warm):
    run = stream(service, http, clips["square"], {"source_id": sources["obama"]})
    assert not run.errors and run.ready["swapper"] == "mesh"
    assert len(run.answers) >= 3
    rgb = cv2.cvtColor(cv2.imread(str(OBAMA)), cv2.COLOR_BGR2RGB)
    person = judge().descriptors(rgb, swapper.detect(rgb[None]).boxes[:1])[0]
    after = []
    for header, image in run.answers:
        original = rgb_of(clips["square"][header["seq"] % len(clips["square"])])
        answer = rgb_of(image)
        boxes, outside = outside_boxes(swapper, original)
        assert header["faces"] == len(boxes) == 1 and outside.mean() > 0.2
        assert np.abs(answer[outside].astype(np.float32) - original[outside]).mean() < 2.0  # JPEG noise only
        # the face changed by more than the JPEG noise allowed outside it (the mesh swap keeps the target's lips,
        # eyes and shading, so most of the box changes little; who the face is, the judge says below)
        assert np.abs(answer[~outside].astype(np.float32) - original[~outside]).mean() > 2.0
        after.append(distances_to(person, answer, boxes)[0])
    assert (np.array(after) < SAME_PERSON).mean() >= 0.5, np.round(after, 2)


def test_a_source_drives_only_the_swapper_it_was_made_for(service, http, sources):
    assert http.get(f"/v1/sources/{sources['obama']}").json()["swapper"] == "mesh"
    with open_socket(service, http) as ws:
        ws.send(json.dumps({"type": "start", "source_id": sources["obama"], "swapper": "simswap"}))
        code, reason = closed_with(ws)
    assert code == protocol.CLOSE_BAD_START and "made for swapper mesh, not simswap" in reason
    with open_socket(service, http) as ws:
        ws.send(json.dumps({"type": "start", "source_id": sources["obama"], "swapper": "faceapp"}))
        code, reason = closed_with(ws)
    assert code == protocol.CLOSE_BAD_START and "swapper" in reason
    response = http.post("/v1/sources", files=[("source", (OBAMA.name, OBAMA.read_bytes(), "image/jpeg"))],
                         data={"swapper": "faceapp"})
    assert response.status_code == 422 and "swapper" in response.json()["detail"]


# ------------------------------------------------------------------------------------------ sources

def test_sources_are_stored_read_and_deleted(http, service):
    response = http.post("/v1/sources", files=[("source", ("a.jpg", OBAMA.read_bytes(), "image/jpeg")),
                                               ("source", ("b.jpg", OBAMA.read_bytes(), "image/jpeg"))])
    assert response.status_code == 201
    source = response.json()
    assert source["photos"] == 2 and source["faces"] == [1, 1]
    assert (service.data / "sources" / f"{source['id']}.npz").exists()
    assert http.get(f"/v1/sources/{source['id']}").json()["id"] == source["id"]
    assert http.delete(f"/v1/sources/{source['id']}").status_code == 204
    assert http.get(f"/v1/sources/{source['id']}").status_code == 404
    assert not (service.data / "sources" / f"{source['id']}.npz").exists()


def test_source_without_a_face_or_not_an_image_is_refused(http, service):
    before = sorted((service.data / "sources").iterdir())
    grey = jpeg(np.full((240, 320, 3), 128, np.uint8))
    response = http.post("/v1/sources", files=[("source", ("grey.jpg", grey, "image/jpeg"))])
    assert response.status_code == 422 and "no face found" in response.json()["detail"]
    response = http.post("/v1/sources", files=[("source", ("notes.jpg", b"hello, not a photo", "image/jpeg"))])
    assert response.status_code == 422 and "not a JPEG" in response.json()["detail"]
    assert httpx.post(f"{service.url}/v1/sources", files=[("source", ("a.jpg", grey))]).status_code == 401
    assert sorted((service.data / "sources").iterdir()) == before


# ---------------------------------------------------------------------------------------- bad input

def test_bad_frames_are_refused_one_by_one_and_the_stream_goes_on(service, http, clips, sources):
    big = jpeg(np.zeros((1200, 2000, 3), np.uint8), quality=50)
    bad = {2: protocol.pack_frame({"seq": 25}, b"not an image at all"),
           4: protocol.pack_frame({"seq": 45}, big),
           6: protocol.pack_frame({"seq": 1}, clips["square"][0]),  # after seq 60: out of order
           7: b"\x00\x01"}
    run = Run()
    with open_socket(service, http) as ws:
        ws.send(json.dumps({"type": "start", "source_id": sources["obama"]}))
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        for index, frame in enumerate(clips["square"][:10]):
            ws.send(protocol.pack_frame({"seq": index * 10, "ts": index * 40}, frame))
            run.sent.append(index * 10)
            if index in bad:
                ws.send(bad[index])
            time.sleep(1 / FPS)
        ws.send(json.dumps({"type": "stop"}))
        for message in ws:
            if isinstance(message, bytes):
                run.answers.append(protocol.unpack_frame(message))
            elif json.loads(message)["type"] == "end":
                run.end = json.loads(message)
            else:
                run.errors.append(json.loads(message))
    details = {error["seq"]: error["detail"] for error in run.errors}
    assert "not a JPEG or WEBP image" in details[25]
    assert "2000x1200" in details[45] and "pixels" in details[45]
    assert "sequence number 1 is not after 60" in details[1]
    assert "4-byte header length" in details[None]
    answered = [h["seq"] for h, _ in run.answers]
    assert sorted(answered + run.dropped) == run.sent  # the good frames: all answered or dropped
    assert answered[-1] == run.sent[-1]


def test_limits_close_the_socket_with_a_code_and_a_reason(service, http, sources):
    cases = []
    with open_socket(service, http) as ws:  # a frame before start
        ws.send(protocol.pack_frame({"seq": 0}, jpeg(np.zeros((8, 8, 3), np.uint8))))
        cases.append((closed_with(ws), protocol.CLOSE_BAD_START, "before start"))
    with open_socket(service, http) as ws:  # a start whose photo has no face
        grey = base64.b64encode(jpeg(np.full((240, 320, 3), 128, np.uint8))).decode()
        ws.send(json.dumps({"type": "start", "source_image": grey}))
        cases.append((closed_with(ws), protocol.CLOSE_NO_FACE, "no face found"))
    with open_socket(service, http) as ws:
        ws.send(json.dumps({"type": "start", "source_id": "0" * 32}))
        cases.append((closed_with(ws), protocol.CLOSE_UNKNOWN_SOURCE, "POST /v1/sources"))
    with open_socket(service, http) as ws:  # an oversized frame
        ws.send(json.dumps({"type": "start", "source_id": sources["obama"]}))
        ws.recv(timeout=30)
        ws.send(b"\x00" * (4 * 1024 * 1024 + 1))
        cases.append((closed_with(ws), protocol.CLOSE_TOO_BIG, "byte limit"))
    with open_socket(service, http) as ws:  # idle (the service's idle timeout is 2 s)
        ws.send(json.dumps({"type": "start", "source_id": sources["obama"]}))
        ws.recv(timeout=30)
        cases.append((closed_with(ws), protocol.CLOSE_IDLE, "no frame for 2 s"))
    with open_socket(service, http, ticket="made-up") as ws:
        cases.append((closed_with(ws), protocol.CLOSE_POLICY, "unknown or already used ticket"))
    with open_socket(service, http, ticket=None) as ws:
        cases.append((closed_with(ws), protocol.CLOSE_POLICY, "POST /v1/live/tickets"))
    ticket = http.post("/v1/live/tickets").json()["ticket"]
    with open_socket(service, http, ticket=ticket) as ws:
        ws.send(json.dumps({"type": "stop"}))  # a stop as the first message is not a start
        cases.append((closed_with(ws), protocol.CLOSE_BAD_START, "first message must be"))
    with open_socket(service, http, ticket=ticket) as ws:  # single use
        cases.append((closed_with(ws), protocol.CLOSE_POLICY, "already used"))
    for (code, reason), expected_code, words in cases:
        assert (code, words in reason) == (expected_code, True), (code, reason, words)
    assert http.get("/readyz").json()["ready"]  # Triton, the store and the job workers still fine


def test_too_many_streams_are_refused_and_the_open_ones_go_on(service, http, sources, clips):
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(open_socket(service, http)) for _ in range(2)]
        for ws in sockets:
            ws.send(json.dumps({"type": "start", "source_id": sources["obama"]}))
            assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        with open_socket(service, http) as third:
            code, reason = closed_with(third)
        assert code == protocol.CLOSE_TRY_LATER and "too many live streams (2 open)" in reason
        sockets[0].send(protocol.pack_frame({"seq": 0, "ts": 0}, clips["square"][0]))
        header, _ = protocol.unpack_frame(sockets[0].recv(timeout=60))
        assert header["seq"] == 0 and header["faces"] == 1


def test_a_client_that_never_reads_gets_frames_dropped_not_buffered(service, http, sources):
    # Noise: no face, so the server answers fast, and each answer is megabytes, so the socket buffers fill at once.
    noise = [jpeg(np.random.default_rng(i).integers(0, 256, (720, 1280, 3), np.uint8), 100) for i in range(4)]
    frames = [noise[i % len(noise)] for i in range(int(FPS * SECONDS))]
    run = stream(service, http, frames, {"source_id": sources["obama"], "quality": 100}, read=False)
    answered = [h["seq"] for h, _ in run.answers]
    assert sorted(answered + run.dropped) == run.sent
    slow = metric_values(http)['swapstream_live_frames_dropped_total{reason="slow_client"}']
    assert slow > 0, "the server buffered every answer for a client that did not read"


def test_a_token_instance_refuses_other_sites_and_rebound_names_too(service, http, sources):
    """Issue 18, item 1: the token does not replace the Origin and Host checks (a page could hold a ticket)."""
    ticket = http.post("/v1/live/tickets").json()["ticket"]
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(service), subprotocols=[protocol.SUBPROTOCOL, protocol.TICKET_PREFIX + ticket],
                origin="http://evil.example", open_timeout=10)
    assert refused.value.response.status_code == 403
    assert http.post("/v1/live/tickets", headers={"Origin": "http://evil.example"}).status_code == 403
    rebound = http.get(f"/v1/sources/{sources['obama']}", headers={"Host": f"evil.example:{service.port}"})
    assert rebound.status_code == 403 and "Host" in rebound.json()["detail"]
    assert http.get(f"/v1/sources/{sources['obama']}", headers={"Origin": service.url}).status_code == 200
    with connect(ws_url(service), subprotocols=[protocol.SUBPROTOCOL, protocol.TICKET_PREFIX + ticket],
                 origin=service.url, open_timeout=10) as ws:  # the page's own origin, with the same ticket
        ws.send(json.dumps({"type": "start", "source_id": sources["obama"]}))
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
