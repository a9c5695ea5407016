"""The /live page in a real headless Chromium whose fake camera plays a real clip, against a real ``swapstream
serve`` (with a token) and the session's Triton: source photo picked, token asked, frames swapped and drawn."""
from __future__ import annotations

import base64
import re

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
import subprocess

from swapstream.services.jobs.process import ServiceProcess
from swapstream.services.live import protocol
from swapstream.services.triton import standins
from swapstream.services.web.pages import STATIC
from tests.helpers.engine import simswap_face_swapper, source_embedding
from tests.helpers.browser import PHONE, chromium, open_page, wait_until
from tests.helpers.media import MEDIA, frames_of

OBAMA = MEDIA / "img01_single_frontal_obama.jpg"
TOKEN = "live-page-test-token"
ANSWERS = 12  # answers drawn before the canvas is read


@pytest.fixture(scope="module")
def service(tmp_path_factory, triton):
    with ServiceProcess(tmp_path_factory.mktemp("live-page") / "data", "--triton", triton.grpc_url,
                        "--token", TOKEN) as running:
        yield running


@pytest.fixture(scope="module")
def camera_clip(tmp_path_factory):
    """2 s of the real clip at 10 frames/s as the fake camera's .y4m (it loops): far-apart frames, so that the frame
    a swapped answer came from can be told by its background."""
    y4m = tmp_path_factory.mktemp("camera") / "camera.y4m"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(MEDIA / "vid03_square_480_expressions.mp4"),
                    "-vf", "fps=10", "-frames:v", "20", "-pix_fmt", "yuv420p", "-y", str(y4m)], check=True)
    return y4m


def canvas_rgb(page, selector: str) -> np.ndarray:
    data_url = page.evaluate(f"document.querySelector('{selector}').toDataURL('image/png')")
    png = np.frombuffer(base64.b64decode(data_url.split(",", 1)[1]), np.uint8)
    return cv2.cvtColor(cv2.imdecode(png, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_page_speaks_the_protocol_of_protocol_py():
    script = (STATIC / "live.js").read_text()
    for name in ("SUBPROTOCOL", "TICKET_PREFIX", "CLOSE_NORMAL"):
        value = getattr(protocol, name)
        assert re.search(rf"const {name} = {re.escape(repr(value).replace(chr(39), chr(34)))};", script), name


def test_live_page_swaps_the_camera_and_shows_latency(service, camera_clip, client):
    with chromium(fake_video=camera_clip) as browser, open_page(browser, f"{service.url}/live",
                                                                allow_http=(401,)) as watched:
        page = watched.page
        page.set_input_files("#source", str(OBAMA))
        assert page.input_value("#swapper") == "mesh"  # the service's default
        page.select_option("#swapper", "simswap")  # the stand-ins' known colour shift is checked below
        page.click("#start")
        page.fill("#token-dialog input[name=token]", TOKEN)  # the service has a token: the page asks for it
        page.click("#token-dialog button[type=submit]")
        wait_until(page, f"Number(document.querySelector('#counts').textContent.split(' / ')[1]) >= {ANSWERS}",
                               timeout=90_000)
        swapped = canvas_rgb(page, "#swapped")
        latency = page.text_content("#latency")
        fps = page.text_content("#fps")
        watched.screenshot("live-page")
        page.click("#stop")
        wait_until(page, "document.querySelector('#status').textContent === 'Stopped.'", timeout=30_000)
        assert page.is_enabled("#start")

    median_ms = float(re.match(r"(\d+) ms median", latency).group(1))
    assert median_ms > 0 and float(fps) > 0

    # The answer is one of the camera's frames with the face shifted: find that frame by its background.
    frames = frames_of(camera_clip).astype(np.float32)
    assert swapped.shape == frames.shape[1:]
    (x1, y1, x2, y2), = client.detect(swapped[None]).boxes.astype(int)
    far = np.ones(swapped.shape[:2], bool)
    far[max(0, y1 - 60):y2 + 60, max(0, x1 - 60):x2 + 60] = False
    after = swapped.astype(np.float32)
    before = min(frames, key=lambda frame: np.abs(after[far] - frame[far]).mean())
    assert np.abs(after[far] - before[far]).mean() < 4.0  # the background is not changed (JPEG noise only)
    shift = standins.swap_shift(source_embedding(simswap_face_swapper(client), [OBAMA])) * 255
    cheeks = (slice(y1 + (y2 - y1) // 4, y1 + (y2 - y1) // 2), slice(x1 + (x2 - x1) // 4, x2 - (x2 - x1) // 4))
    expected = (np.clip(before[cheeks] + shift, 0, 255) - before[cheeks]).mean(axis=(0, 1))
    np.testing.assert_allclose((after[cheeks] - before[cheeks]).mean(axis=(0, 1)), expected, atol=8)


def test_live_page_at_phone_width_and_by_keyboard(service, camera_clip):
    with chromium(fake_video=camera_clip) as browser, open_page(browser, f"{service.url}/live",
                                                                viewport=PHONE) as watched:
        page = watched.page
        assert page.evaluate("document.scrollingElement.scrollWidth <= window.innerWidth")
        focused = []
        for _ in range(12):
            page.keyboard.press("Tab")
            focused.append(page.evaluate("document.activeElement.id"))
        assert {"source", "faces", "quality", "smoothing", "start"} <= set(focused)
        page.focus("#start")
        page.keyboard.press("Enter")  # no photo picked: the page says so, nothing is sent
        assert "Pick a source photo" in page.text_content("#error")
        watched.screenshot("live-page-phone")
