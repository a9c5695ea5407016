"""A real headless Chromium (Debian's, never a downloaded one) for the page tests, through Playwright.

``chromium()`` launches it (a fake camera that approves itself; optionally fed from a .y4m file);
``open_page()`` opens a page in a fresh context (its own sessionStorage) at a viewport, records console errors,
page errors and failed requests, and on a clean exit asserts there were none; ``WatchedPage.screenshot()`` saves
a PNG under ``ARTIFACTS`` (``tests/artifacts/``, git-ignored; ``SWAPSTREAM_ARTIFACTS`` moves it). ``wait_until()``
stands for Playwright's ``wait_for_function``, which the pages' Content-Security-Policy blocks (it compiles the
expression with ``new Function`` inside the page).
"""
from __future__ import annotations

import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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
