"""A real headless Chromium (Debian's, never a downloaded one) for the page tests, through Playwright.

``chromium()`` launches it (a fake camera that approves itself; optionally fed from a .y4m file);
``open_page()`` opens a page in a fresh context (its own sessionStorage) at a viewport, records console errors,
page errors and failed requests, and on a clean exit asserts there were none; ``WatchedPage.screenshot()`` saves
a PNG under ``ARTIFACTS`` (``tests/artifacts/``, git-ignored; ``SWAPSTREAM_ARTIFACTS`` moves it). ``wait_until()``
stands for Playwright's ``wait_for_function``, which the pages' Content-Security-Policy blocks (it compiles the
expression with ``new Function`` inside the page).
"""
from __future__ import annotations

import base64
import json
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]
FAKE_CAMERA = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
PLAY = ["--autoplay-policy=no-user-gesture-required"]  # a test starts <video> playback without a click
ARTIFACTS = Path(os.environ.get("SWAPSTREAM_ARTIFACTS", Path(__file__).resolve().parents[1] / "artifacts"))
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
# Chromium logs every 4xx/5xx answer as a console error; a test that provokes one on purpose allows its status.
_HTTP_ERROR = re.compile(r"the server responded with a status of (\d{3})")


@contextmanager
def chromium(fake_video: Path | None = None) -> Iterator[Browser]:
    """Headless Chromium with a fake camera (``fake_video``: a .y4m file it plays instead of the test pattern)."""
    args = FLAGS + FAKE_CAMERA + PLAY
    if fake_video is not None:
        args.append(f"--use-file-for-fake-video-capture={fake_video}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            yield browser
        finally:
            browser.close()


class WatchedPage:
    def __init__(self, page: Page, allow_http: tuple[int, ...] = ()):
        self.page = page
        self.allowed_http = set(allow_http)
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        page.on("requestfailed", self._request_failed)

    def allow_http(self, *statuses: int) -> None:
        """Answers with these statuses are expected from now on (the test provokes them)."""
        self.allowed_http.update(statuses)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        status = _HTTP_ERROR.search(message.text)
        if status and int(status.group(1)) in self.allowed_http:
            return
        self.errors.append(f"console error: {message.text} ({message.location.get('url')})")

    def _request_failed(self, request) -> None:
        failure = request.failure or ""
        # A stream the page ends itself (leaving, reloading) or a media range the player abandons is not an error.
        if "ERR_ABORTED" in failure:
            return
        self.errors.append(f"request failed: {request.method} {request.url}: {failure}")

    def assert_no_errors(self) -> None:
        assert not self.errors, "the browser reported errors:\n" + "\n".join(self.errors)

    def screenshot(self, name: str, full_page: bool = True) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path


@contextmanager
def open_page(browser: Browser, url: str | None = None, viewport: dict = DESKTOP,
              allow_http: tuple[int, ...] = ()) -> Iterator[WatchedPage]:
    """A page in a fresh context; fails the test on any console error, page error or failed request."""
    context = browser.new_context(viewport=viewport, is_mobile=viewport["width"] < 600,
                                  has_touch=viewport["width"] < 600)
    try:
        watched = WatchedPage(context.new_page(), allow_http)
        if url:
            watched.page.goto(url)
        yield watched
        watched.assert_no_errors()
    finally:
        context.close()


def wait_until(page: Page, expression: str, timeout: float = 30_000, interval: float = 0.05) -> None:
    """Polls a JavaScript expression until it is true, from outside the page (``page.evaluate``), for at most
    ``timeout`` ms."""
    deadline = time.monotonic() + timeout / 1000
    while not page.evaluate(f"() => Boolean({expression})"):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout / 1000:.0f} s: {expression}")
        time.sleep(interval)


def figures(**values) -> None:
    """Measured numbers for the README, kept beside the screenshots in ``web-figures.json`` (never asserted)."""
    path = ARTIFACTS / "web-figures.json"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    known = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**known, **values}, indent=2))
    print(values)


_IMAGE_PIXELS = """(id) => {
  const image = document.getElementById(id);
  const canvas = document.createElement("canvas");
  canvas.width = image.naturalWidth;
  canvas.height = image.naturalHeight;
  canvas.getContext("2d").drawImage(image, 0, 0);
  return canvas.toDataURL("image/png");
}"""


def rgb_from_data_url(url: str) -> np.ndarray:
    """A ``data:image/png;base64,...`` URL's pixels, [H,W,3] uint8 RGB."""
    png = np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8)
    return cv2.cvtColor(cv2.imdecode(png, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def image_rgb(page: Page, image_id: str) -> np.ndarray:
    """The pixels of the page's ``<img id=image_id>`` at its natural size, [H,W,3] uint8 RGB."""
    return rgb_from_data_url(page.evaluate(_IMAGE_PIXELS, image_id))


def swap_photo(page: Page, source: Path, target: Path) -> None:
    """On /swap-photo: chooses the photos, swaps, and waits until both pictures are shown."""
    page.set_input_files("input[name=source]", str(source))
    page.set_input_files("input[name=target]", str(target))
    page.click("#swap")
    page.wait_for_selector("#swapped:not([hidden])", timeout=60_000)
    wait_until(page, "document.getElementById('swapped-photo').complete && "
                     "document.getElementById('swapped-photo').naturalWidth > 0 && "
                     "document.getElementById('target-photo').naturalWidth > 0")
