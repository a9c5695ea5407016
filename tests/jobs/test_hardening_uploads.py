"""Hostile requests to a token-protected service (issue 10, items 1-6 and 13): bodies refused before they are read,
decompression bombs, unbounded options, frame-rate and frame-count bypasses, concat scripts, size-changing streams,
and every error as JSON. One service process for the module."""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from swapstream.benchmarks.media import cut
from swapstream.services.jobs.process import ServiceProcess, wait_for
from swapstream.services.options import SWAP_OPTION_BOUNDS
from tests.helpers.hostile import ffconcat_script, high_rate_video, png_bomb, size_changing_ts
from tests.helpers.media import MEDIA
from tests.helpers.service import OBAMA, submit

TOKEN = "hardening-token"
VIDEO_MB = 1


@pytest.fixture(scope="module")
def service(tmp_path_factory, triton):
    data = tmp_path_factory.mktemp("hardening") / "data"
    with ServiceProcess(data, "--triton", triton.grpc_url, "--token", TOKEN, "--max-video-mb", str(VIDEO_MB),
                        "--max-photo-mb", "2", "--max-frames", "5000", "--min-free-mb", "0") as service:
        yield service


@pytest.fixture(scope="module")
def http(service):
    with service.client(TOKEN) as client:
        yield client


def _peak_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))


def _stored(service) -> list[str]:
    return sorted(str(p.relative_to(service.data)) for folder in ("uploads", "tmp")
                  for p in (service.data / folder).rglob("*") if p.is_file())


def _raw_post(service, path: str, headers: dict[str, str], chunks, read_timeout: float = 60.0):
    """Sends a chunked POST chunk by chunk over a plain socket until the server answers; (status, body, bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", service.port))
    sock.settimeout(read_timeout)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock.sendall(head.encode())
    sent = 0
    answer = b""
    sock.setblocking(False)
    try:
        for chunk in chunks:
            try:
                answer += sock.recv(65536)
            except BlockingIOError:
                pass
            if answer:
                break
            try:
                sock.setblocking(True)
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            finally:
                sock.setblocking(False)
        sock.setblocking(True)
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    finally:
        sock.close()
    status = int(answer.split(b" ", 2)[1])
    return status, answer.split(b"\r\n\r\n", 1)[1], sent


def _megabytes(count: int):
    """A multipart body of one endless file part."""
    yield (b'--x\r\nContent-Disposition: form-data; name="target"; filename="t.mp4"\r\n'
           b"Content-Type: video/mp4\r\n\r\n")
    for _ in range(count):
        yield b"\0" * (1 << 20)


# ----------------------------------------------------------------------------------------- 1. before the body

def test_no_token_is_refused_before_the_body_is_read(service):
    status, body, sent = _raw_post(service, "/v1/jobs", {"Content-Type": "multipart/form-data; boundary=x"},
                                   _megabytes(400))
    assert status == 401, body
    assert "bearer token" in json.loads(body.split(b"\r\n", 1)[-1] if not body.startswith(b"{") else body)["detail"]
    assert sent < 64 << 20, f"{sent} bytes were taken from a client without the token"
    assert _stored(service) == []


def test_a_chunked_body_is_cut_off_at_the_limit(service):
    status, body, sent = _raw_post(service, "/v1/jobs", {"Authorization": f"Bearer {TOKEN}",
                                                         "Content-Type": "multipart/form-data; boundary=x"},
                                   _megabytes(400))
    assert status == 413, body
    limit_mb = VIDEO_MB + 9 * 2 + 1  # the video, 8 sources and a reference of 2 MB, the form
    assert sent < (limit_mb + 32) << 20, f"{sent} bytes read past a {limit_mb} MB limit"
    assert _stored(service) == []


def test_open_routes_need_no_token(service):
    with service.client() as anonymous:
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/metrics").status_code == 200
        refused = anonymous.get("/v1/jobs")
        assert refused.status_code == 401 and "bearer" in refused.json()["detail"]


# ------------------------------------------------------------------------------------------------ 2. bombs

@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    return png_bomb(tmp_path_factory.mktemp("bomb") / "bomb.png")


@pytest.mark.parametrize("endpoint", ["analyze", "swap-image target", "jobs source"])
def test_a_decompression_bomb_is_refused_by_its_header(service, http, bomb, endpoint):
    before = _peak_kb(service.process.pid)
    payload = ("bomb.png", bomb.read_bytes(), "image/png")
    if endpoint == "analyze":
        answer = http.post("/v1/analyze", files={"photo": payload})
    elif endpoint == "swap-image target":
        answer = http.post("/v1/swap-image", files=[("target", payload), ("source", (OBAMA.name, OBAMA.read_bytes(),
                                                                                      "image/jpeg"))])
    else:
        answer = http.post("/v1/jobs", files=[("target", (OBAMA.name, OBAMA.read_bytes(), "image/jpeg")),
                                              ("source", payload)])
    assert answer.status_code == 422, answer.text
    assert "900000000 pixels is larger than" in answer.json()["detail"]
    grown_mb = (_peak_kb(service.process.pid) - before) / 1024
    assert grown_mb < 300, f"the service's peak memory grew by {grown_mb:.0f} MB on an {bomb.stat().st_size} B file"


def test_a_bmp_bomb_is_refused_too(service, http, tmp_path):
    import struct
    header = b"BM" + struct.pack("<IHHI", 54 + 64, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, 30000, 30000, 1, 24, 0,
                                                                            0, 2835, 2835, 0, 0)
    answer = http.post("/v1/analyze", files={"photo": ("bomb.bmp", header + b"\0" * 64, "image/bmp")})
    assert answer.status_code == 422 and "900000000 pixels is larger than" in answer.json()["detail"], answer.text


# --------------------------------------------------------------------------------------------- 3. bounds

def test_option_bounds_are_enforced_and_published(service, http):
    answer = http.post("/v1/analyze", files={"photo": (OBAMA.name, OBAMA.read_bytes(), "image/jpeg")},
                       data={"score_threshold": "0.000001"})
    assert answer.status_code == 422 and "score_threshold" in answer.json()["detail"], answer.text
    answer = submit(http, OBAMA, batch_size=0)
    assert answer.status_code == 422 and "batch_size" in answer.json()["detail"], answer.text
    schema = http.get("/openapi.json").json()["components"]["schemas"]
    form = next(v for k, v in schema.items() if k.startswith("Body_submit_job"))["properties"]
    for name, bound in SWAP_OPTION_BOUNDS.items():
        low = form[name].get("exclusiveMinimum" if bound.low_open else "minimum")
        high = form[name].get("exclusiveMaximum" if bound.high_open else "maximum")
        assert (low, high) == (bound.low, bound.high), (name, form[name])


# ------------------------------------------------------------------------------------ 4-6. video containers

@pytest.fixture(scope="module")
def hostile_videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    return {"rate": high_rate_video(folder / "rate.mp4", fps=10000, seconds=0.4),
            "frames": high_rate_video(folder / "frames.mp4", fps=100, seconds=60),
            "concat": ffconcat_script(folder / "target.mp4"),
            "size": size_changing_ts(folder / "size.ts", small=160, large=4096)}


def test_a_high_frame_rate_is_refused(service, http, hostile_videos):
    answer = submit(http, hostile_videos["rate"])
    assert answer.status_code == 422 and "frames per second" in answer.json()["detail"], answer.text


def test_too_many_frames_are_refused(service, http, hostile_videos):
    answer = submit(http, hostile_videos["frames"])
    assert answer.status_code == 422 and "6000 frames" in answer.json()["detail"], answer.text
    assert _stored(service) == []


def test_a_concat_script_is_not_opened(service, http, hostile_videos):
    files_before = len(os.listdir(f"/proc/{service.process.pid}/fd"))
    answer = submit(http, hostile_videos["concat"])
    assert answer.status_code == 422, answer.text
    assert "not a video container" in answer.json()["detail"]
    assert len(os.listdir(f"/proc/{service.process.pid}/fd")) < files_before + 20
    assert _stored(service) == []


def test_a_stream_that_changes_size_is_never_processed_past_its_first_size(service, http, hostile_videos):
    answer = submit(http, hostile_videos["size"])
    assert answer.status_code == 201, answer.text
    job = wait_for(http, answer.json()["id"], {"done", "failed"})
    assert job["state"] == "failed", job
    assert "frame size changes at frame 10 from 160x160 to 4096x4096" in job["error"]
    assert str(service.data) not in job["error"]


# ------------------------------------------------------------------------------------------ 13. small ones

def test_every_error_is_json_without_server_paths(service, http, tmp_path):
    huge = http.get("/v1/jobs", params={"offset": 9223372036854775808})
    assert huge.status_code == 422 and "offset" in huge.json()["detail"]
    echoed = http.post("/v1/analyze", files={"photo": (OBAMA.name, OBAMA.read_bytes(), "image/jpeg")},
                       data={"score_threshold": "x" * 100_000})
    assert echoed.status_code == 422 and isinstance(echoed.json()["detail"], str)
    assert len(echoed.json()["detail"]) < 2000
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4096))
    bad = submit(http, garbage)
    assert bad.status_code == 422 and str(service.data) not in bad.json()["detail"], bad.text
    clip = cut(MEDIA / "vid03_square_480_expressions.mp4", tmp_path / "clip.mp4", 8)
    job = submit(http, clip).json()
    early = http.get(f"/v1/jobs/{job['id']}/result")
    assert early.status_code == 409 and "{id}" not in early.json()["detail"] and job["id"] in early.json()["detail"]
    done = wait_for(http, job["id"], {"done", "failed"})
    assert done["state"] == "done", done
    out_of_range = http.get(done["result_url"], headers={"Range": "bytes=999999999-"})
    assert out_of_range.status_code == 416
    assert out_of_range.headers["content-type"] == "application/json" and out_of_range.json()["detail"]


def test_a_bmp_photo_job_is_processed(service, http, tmp_path):
    import cv2
    target = tmp_path / "target.bmp"
    cv2.imwrite(str(target), cv2.imread(str(MEDIA / "img03_single_frontal_rose_leslie.jpg")))
    job = submit(http, target)
    assert job.status_code == 201, job.text
    done = wait_for(http, job.json()["id"], {"done", "failed"})
    assert done["state"] == "done", done
    result = http.get(done["result_url"])
    assert result.headers["content-type"] == "image/png" and result.content[:4] == b"\x89PNG"


def test_health_answers_while_photo_requests_pile_up(service, http):
    finished: list[tuple[str, int]] = []
    lock = threading.Lock()

    def swap_image():
        with service.client(TOKEN) as client:
            answer = client.post("/v1/swap-image", files=[
                ("target", (OBAMA.name, OBAMA.read_bytes(), "image/jpeg")),
                ("source", ("rose.jpg", (MEDIA / "img03_single_frontal_rose_leslie.jpg").read_bytes(), "image/jpeg"))])
            assert answer.status_code in (200, 429), answer.text
            if answer.status_code == 429:
                assert "retry" in answer.json()["detail"]
            with lock:
                finished.append(("swap", answer.status_code))

    threads = [threading.Thread(target=swap_image) for _ in range(50)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):  # the photo queue is full once refusals come back
        with lock:
            if any(code == 429 for _, code in finished):
                break
        time.sleep(0.05)
    assert any(code == 429 for _, code in finished), "no photo request was refused: they queue without limit"
    with service.client() as anonymous:
        assert anonymous.get("/healthz").status_code == 200
    with lock:
        finished.append(("healthz", 200))
    assert http.get("/readyz").status_code == 200
    for thread in threads:
        thread.join()
    order = [kind for kind, _ in finished]
    swapped_after = [kind for kind, code in finished[order.index("healthz"):] if kind == "swap" and code == 200]
    assert swapped_after, "/healthz waited for every photo request to finish"
    assert sum(code == 200 for _, code in finished if _ == "swap") >= 1


# ------------------------------------------------------------------------------------- error codes (issue 21)

def _faceless_jpeg() -> bytes:
    """A real photo's background: the top-left corner of the group photo, where nobody is."""
    import cv2

    corner = cv2.imread(str(MEDIA / "img07_group6_t1.jpg"))[:150, :200]
    return cv2.imencode(".jpg", corner)[1].tobytes()


def test_errors_carry_a_code_beside_the_detail(service, http, tmp_path):
    obama = ("source", (OBAMA.name, OBAMA.read_bytes(), "image/jpeg"))
    clip = cut(MEDIA / "vid03_square_480_expressions.mp4", tmp_path / "clip.mp4", 8)
    video = ("target", (clip.name, clip.read_bytes(), "video/mp4"))
    before = _stored(service)
    answers = {
        "no_face_in_source": http.post("/v1/jobs", files=[video, ("source", ("wall.jpg", _faceless_jpeg(),
                                                                              "image/jpeg"))]),
        "no_face_in_target": http.post("/v1/swap-image", files=[("target", ("wall.jpg", _faceless_jpeg(),
                                                                             "image/jpeg")), obama]),
        "not_a_video": http.post("/v1/jobs", files=[("target", ("a.mp4", b"not a video\n" * 100, "video/mp4")),
                                                     obama]),
        "not_a_photo": http.post("/v1/swap-image", files=[video, obama]),
        "too_large": http.post("/v1/jobs", files=[("target", ("big.mp4", os.urandom((VIDEO_MB << 20) + 10),
                                                               "video/mp4")), obama]),
        "bad_option": http.post("/v1/jobs", files=[video, obama], data={"batch_size": "0"}),
        "not_found": http.get("/v1/jobs/nope"),
    }
    with service.client() as anonymous:
        answers["unauthorized"] = anonymous.get("/v1/jobs")
        answers["forbidden_origin"] = anonymous.get("/v1/options", headers={"Origin": "https://evil.example"})
    for code, answer in answers.items():
        assert answer.status_code >= 400 and answer.json()["code"] == code, (code, answer.status_code, answer.text)
        assert answer.json()["detail"]
    assert _stored(service) == before
    documented = http.get("/openapi.json").json()["components"]["schemas"]["ErrorCode"]["enum"]
    assert set(answers) <= set(documented)
