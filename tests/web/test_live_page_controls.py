"""The /live page's controls in a real headless Chromium whose fake camera plays a real clip, against a real
``swapstream serve`` (the session's Triton, the stand-in swap asked for by name): switching the face while
streaming (the ``source`` message, no reconnect), the mirror, full screen, recording the swapped view to a file,
drops said as "skipped to stay live", the figures standing still after Stop, and plain words for a faceless source."""
from __future__ import annotations

import base64
import io
import subprocess

import av
import cv2
import imageio_ffmpeg
import numpy as np
import pytest

from swapstream.services.jobs.process import ServiceProcess
from swapstream.services.triton import standins
from tests.helpers.browser import chromium, open_page, wait_until
from tests.helpers.engine import simswap_face_swapper, source_embedding
from tests.helpers.media import MEDIA, frames_of
from tests.helpers.service import OBAMA

ROSE = MEDIA / "img03_single_frontal_rose_leslie.jpg"
ANSWERED = "Number(document.querySelector('#counts').textContent.split(' / ')[1])"


@pytest.fixture(scope="module")
def service(tmp_path_factory, triton):
    with ServiceProcess(tmp_path_factory.mktemp("live-controls") / "data", "--triton", triton.grpc_url) as running:
        yield running


@pytest.fixture(scope="module")
def camera_clip(tmp_path_factory):
    """2 s of the real clip at 10 frames/s as the fake camera's .y4m (it loops)."""
    y4m = tmp_path_factory.mktemp("camera") / "camera.y4m"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(MEDIA / "vid03_square_480_expressions.mp4"),
                    "-vf", "fps=10", "-frames:v", "20", "-pix_fmt", "yuv420p", "-y", str(y4m)], check=True)
    return y4m


@pytest.fixture(scope="module")
def browser(camera_clip):
    with chromium(fake_video=camera_clip) as running:
        yield running


COUNT_SOCKETS = """() => {
  window.socketsOpened = 0;
  window.WebSocket = class extends window.WebSocket {
    constructor(...args) { super(...args); window.socketsOpened += 1; }
  };
}"""


def canvas_rgb(page) -> np.ndarray:
    data_url = page.evaluate("document.querySelector('#swapped').toDataURL('image/png')")
    png = np.frombuffer(base64.b64decode(data_url.split(",", 1)[1]), np.uint8)
    return cv2.cvtColor(cv2.imdecode(png, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def wait_answers(page, more: int) -> None:
    count = page.evaluate(ANSWERED)
    wait_until(page, f"{ANSWERED} >= {count + more}", timeout=180_000)


def face_shift(client, swapped: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
    """(the mean colour change on the cheeks, the camera frame it came from, the cheeks) of a swapped picture."""
    (x1, y1, x2, y2), = client.detect(swapped[None]).boxes.astype(int)
    far = np.ones(swapped.shape[:2], bool)
    far[max(0, y1 - 60):y2 + 60, max(0, x1 - 60):x2 + 60] = False
    after = swapped.astype(np.float32)
    before = min(frames, key=lambda frame: np.abs(after[far] - frame[far]).mean())
    cheeks = (slice(y1 + (y2 - y1) // 4, y1 + (y2 - y1) // 2), slice(x1 + (x2 - x1) // 4, x2 - (x2 - x1) // 4))
    return (after[cheeks] - before[cheeks]).mean(axis=(0, 1)), before, cheeks


def expected(client, photo, before: np.ndarray, cheeks) -> np.ndarray:
    shift = standins.swap_shift(source_embedding(simswap_face_swapper(client), [photo])) * 255
    return (np.clip(before[cheeks] + shift, 0, 255) - before[cheeks]).mean(axis=(0, 1))


def test_switch_mirror_full_screen_record_and_stop(service, browser, camera_clip, client):
    with open_page(browser, f"{service.url}/live") as watched:
        page = watched.page
        assert page.is_disabled("#switch-source") and page.is_disabled("#record")
        page.set_input_files("#source", str(OBAMA))
        page.select_option("#swapper", "simswap")  # the stand-ins' known colour shift tells the two people apart
        page.evaluate(COUNT_SOCKETS)
        page.click("#start")
        wait_until(page, f"{ANSWERED} >= 3", timeout=240_000)  # the first answers wait for the shapes' first runs
        as_obama = canvas_rgb(page)

        # the face switched while streaming: one socket all along
        page.set_input_files("#switch-source", str(ROSE))
        wait_until(page, "document.querySelector('#status').textContent.includes('now wearing the new face')",
                   timeout=90_000)
        wait_answers(page, 3)
        as_rose = canvas_rgb(page)
        assert page.text_content("#counts").split(" / ")[2] == "0"
        assert page.evaluate("window.socketsOpened") == 1  # switched on the same stream, no reconnect

        # the mirror flips the swapped view (its drawing: a recording is what was seen) and the camera view
        page.check("#mirror")
        wait_answers(page, 2)
        mirrored = canvas_rgb(page).astype(np.float32)
        assert "mirrored" in page.get_attribute("#camera", "class")
        page.uncheck("#mirror")

        # full screen for the swapped view; a double click leaves it
        page.click("#fullscreen")
        wait_until(page, "document.fullscreenElement?.id === 'swapped-view'")
        assert page.text_content("#fullscreen") == "Leave full screen"
        page.dblclick("#swapped")
        wait_until(page, "document.fullscreenElement === null")

        # record the swapped view to a file in the browser
        page.click("#record")
        assert page.text_content("#record") == "Stop recording"
        wait_answers(page, 3)
        page.click("#record")
        page.wait_for_selector("#recording:not([hidden])", timeout=30_000)
        name = page.get_attribute("#recording", "download")
        with page.expect_download() as download:
            page.click("#recording")  # what a person does: the file is saved
        recorded = download.value.path().read_bytes()
        skipped = page.text_content("#skipped")
        watched.screenshot("live-controls")

        page.click("#stop")
        wait_until(page, "document.querySelector('#status').textContent === 'Stopped.'", timeout=30_000)
        figures = page.text_content("#counts"), page.text_content("#fps"), page.text_content("#latency")
        page.wait_for_timeout(1500)
        assert (page.text_content("#counts"), page.text_content("#fps"), page.text_content("#latency")) == figures
        assert figures[1] == "–"
        assert page.is_disabled("#switch-source") and page.is_disabled("#record")

    assert name.startswith("swapped-") and name.endswith(".webm"), name
    assert len(recorded) > 1000 and recorded[:4] == b"\x1a\x45\xdf\xa3", recorded[:16]  # a WebM (EBML) file
    with av.open(io.BytesIO(recorded)) as container:  # and it plays: the swapped view's pictures, at its size
        pictures = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert pictures and pictures[-1].shape == as_obama.shape, (len(pictures), pictures[-1].shape if pictures else None)
    assert "skipped to stay live" not in skipped and ("only the newest is swapped" in skipped or skipped == "none")

    frames = frames_of(camera_clip).astype(np.float32)
    obama_shift, before, cheeks = face_shift(client, as_obama, frames)
    rose_shift, rose_before, rose_cheeks = face_shift(client, as_rose, frames)
    np.testing.assert_allclose(obama_shift, expected(client, OBAMA, before, cheeks), atol=8)
    np.testing.assert_allclose(rose_shift, expected(client, ROSE, rose_before, rose_cheeks), atol=8)
    assert np.abs(expected(client, OBAMA, before, cheeks) - expected(client, ROSE, before, cheeks)).max() > 10
    # mirrored: the nearest camera frame, flipped, matches far better than unflipped
    flipped = min(np.abs(mirrored - frame[:, ::-1]).mean() for frame in frames)
    unflipped = min(np.abs(mirrored - frame).mean() for frame in frames)
    assert flipped < 0.5 * unflipped, (flipped, unflipped)


def test_a_faceless_source_is_said_in_plain_words(service, browser, tmp_path):
    wall = tmp_path / "wall.jpg"
    cv2.imwrite(str(wall), np.tile(np.linspace(60, 200, 320, dtype=np.uint8)[None, :, None], (240, 1, 3)))
    with open_page(browser, f"{service.url}/live", allow_http=(422,)) as watched:
        page = watched.page
        page.set_input_files("#source", str(wall))
        page.click("#start")
        page.wait_for_selector("#error:not([hidden])", timeout=60_000)
        shown = page.inner_text("#error .message")
        assert page.text_content("#status") == "Not streaming."
    assert shown == "No face found in the source photo — try a photo where the face is larger and frontal.", shown
