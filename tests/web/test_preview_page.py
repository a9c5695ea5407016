"""The jobs page's preview in a real headless Chromium against a real ``swapstream serve`` (the session's Triton):
thumbnails at once, the swapped frame at a chosen time, faces picked by keyboard and mouse and sent with the job.
Any console error, page error or failed request fails a test (``open_page``)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from swapstream.services.jobs.process import ServiceProcess, wait_for
from tests.helpers.browser import DESKTOP, PHONE, figures, open_page, wait_until
from tests.helpers.media import MEDIA
from tests.helpers.service import OBAMA

CLIP = MEDIA / "vid03_square_480_expressions.mp4"  # 216 frames at 30 fps, 480x480
GROUP = MEDIA / "img07_group6_t1.jpg"              # six faces
DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def service(tmp_path_factory, triton):
    data = tmp_path_factory.mktemp("preview-page") / "data"
    with ServiceProcess(data, "--triton", triton.grpc_url) as running:
        yield running


@pytest.fixture
def http(service):
    with service.client() as client:
        yield client


def move_slider(page, seconds: float) -> None:
    page.evaluate("""(t) => { const s = document.getElementById("preview-time"); s.value = t;
                              s.dispatchEvent(new Event("input", { bubbles: true })); }""", seconds)


def test_thumbnails_at_once_and_the_swapped_frame_at_a_chosen_time(service, browser):
    for viewport, name in ((DESKTOP, "web-jobs-preview"), (PHONE, "web-jobs-preview-phone")):
        with open_page(browser, service.url + "/", viewport=viewport) as watched:
            page = watched.page
            page.wait_for_selector("select[name=faces] option", state="attached")
            page.set_input_files("input[name=source]", str(OBAMA))
            page.set_input_files("input[name=target]", str(CLIP))
            # the thumbnails are there before anything is sent
            assert page.locator(".thumbs img.thumb").count() == 1 and page.locator(".thumbs video.thumb").count() == 1
            wait_until(page, "document.getElementById('preview').dataset.frame === '0'", timeout=120_000)
            first = int(page.get_attribute("#preview", "data-first-frame-ms"))
            move_slider(page, 3.5)
            wait_until(page, "document.getElementById('preview').dataset.frame === '105'", timeout=120_000)
            moved = int(page.get_attribute("#preview", "data-slider-frame-ms") or -1)
            # the original beside it is the browser's own frame at that time, the swapped one the service's
            assert abs(page.evaluate("document.querySelector('.preview-frame video').currentTime") - 3.5) < 0.05
            size = page.evaluate("[document.querySelector('.preview-frame.swapped img').naturalWidth, "
                                 "document.querySelector('.preview-frame.swapped img').naturalHeight]")
            assert size == [480, 480]
            assert page.locator(".face-box").count() == 1
            assert "1 face found at 3.50 s, 1 swapped" in page.inner_text("#preview")
            # keyboard: the slider moves by the arrow keys
            page.focus("#preview-time")
            page.keyboard.press("Home")
            wait_until(page, "document.getElementById('preview').dataset.frame === '0'", timeout=120_000)
            if viewport is PHONE:  # the page fits the phone's width
                assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            shot = watched.screenshot(name)
        # the desktop run is the service's first preview (its swapper built then), the phone run a later one
        figures(**{f"preview_{'desktop_first' if viewport is DESKTOP else 'phone_later'}_frame_ms": first,
                   f"preview_{'desktop' if viewport is DESKTOP else 'phone'}_slider_frame_ms": moved})
        shutil.copy(shot, DOCS / f"{name}.png")
    assert first > 0 and moved > 0


def test_faces_picked_on_the_preview_go_with_the_job(service, browser, http):
    expected = http.post("/v1/analyze", files={"photo": (GROUP.name, GROUP.read_bytes(), "image/jpeg")}).json()
    boxes = sorted((face["box"] for face in expected["faces"]), key=lambda box: box[0])  # numbered left to right
    with open_page(browser, service.url + "/") as watched:
        page = watched.page
        page.wait_for_selector("select[name=faces] option", state="attached")
        page.set_input_files("input[name=target]", str(GROUP))
        page.set_input_files("input[name=source]", str(OBAMA))
        page.wait_for_selector(".face-box >> nth=5", timeout=120_000)
        assert page.locator(".face-box.swapped").count() == 6  # faces: all
        page.focus(".face-box[data-number='3']")  # by keyboard
        page.keyboard.press("Enter")
        wait_until(page, "document.querySelectorAll('.face-box.swapped').length === 1", timeout=120_000)
        page.click(".face-box[data-number='5']")  # by mouse
        wait_until(page, "document.querySelectorAll('.face-box.swapped').length === 2", timeout=120_000)
        numbers = "[...document.querySelectorAll('.face-box%s')].map(b => b.dataset.number)"
        assert page.evaluate(numbers % "[aria-pressed=true]") == ["3", "5"]  # picked
        assert page.evaluate(numbers % ".swapped") == ["3", "5"]  # and the only ones the service swapped
        shutil.copy(watched.screenshot("web-jobs-preview-picked"), DOCS / "web-jobs-preview-picked.png")
        page.click("#submit")
        page.wait_for_selector("#jobs li[data-id]")
        job_id = page.get_attribute("#jobs li[data-id]", "data-id")
    job = http.get(f"/v1/jobs/{job_id}").json()  # the options the page sent, as the job keeps them
    assert float(job["options"]["pick_time"]) == 0
    points = json.loads(job["options"]["pick_points"])
    assert len(points) == 2
    for (x, y), (x1, y1, x2, y2) in zip(points, (boxes[2], boxes[4])):
        assert x1 < x < x2 and y1 < y < y2, (points, boxes)
    job = wait_for(http, job_id, {"done", "failed"})
    assert job["state"] == "done" and job["faces_swapped"] == 2, job
    result = cv2.imdecode(np.frombuffer(http.get(job["result_url"]).content, np.uint8), cv2.IMREAD_COLOR)
    original = cv2.imread(str(GROUP))
    changed = []
    for x1, y1, x2, y2 in boxes:
        w, h = x2 - x1, y2 - y1
        middle = np.s_[int(y1 + h / 4): int(y2 - h / 4), int(x1 + w / 4): int(x2 - w / 4)]
        changed.append(np.abs(result[middle].astype(int) - original[middle].astype(int)).mean())
    assert min(changed[2], changed[4]) > 8 and max(changed[:2] + changed[3:4] + changed[5:]) < 3, changed
