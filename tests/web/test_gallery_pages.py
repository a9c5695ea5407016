"""The before/after slider and the gallery in a real headless Chromium against a real ``swapstream serve`` (issue 21
items 3-5): the slider by mouse and keyboard on a swapped photo and on a job's result (what it shows is checked
from the rendered pixels), zoom on photos, the job list's thumbnail, names and duration of a trimmed job, run again,
pages past 50, and the phone width. Any console error, page error or failed request fails a test."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from swapstream.services.jobs.process import ServiceProcess
from swapstream.services.jobs.store import JobStore
from tests.helpers.browser import ARTIFACTS, PHONE, open_page, swap_photo, wait_until
from tests.helpers.media import MEDIA
from tests.helpers.service import OBAMA

ROSE = MEDIA / "img03_single_frontal_rose_leslie.jpg"
VID03 = MEDIA / "vid03_square_480_expressions.mp4"
LINE = "#swapped .compare-line"


@pytest.fixture(scope="module")
def service(tmp_path_factory, triton):
    data = tmp_path_factory.mktemp("gallery-web") / "data"
    with ServiceProcess(data, "--triton", triton.grpc_url, "--max-queued", "100") as running:
        yield running


def stage_pixels(page, selector: str) -> np.ndarray:
    """The compare view as rendered (BGR), from an element screenshot."""
    return cv2.imdecode(np.frombuffer(page.locator(selector).screenshot(), np.uint8), cv2.IMREAD_COLOR).astype(int)


def value(page, line: str) -> int:
    return int(page.get_attribute(line, "aria-valuenow"))


def drag(page, selector: str, start: float, end: float) -> None:
    """Presses the mouse at ``start`` of the element's width and lets go at ``end`` (fractions)."""
    page.locator(selector).scroll_into_view_if_needed()
    box = page.locator(selector).bounding_box()
    y = box["y"] + box["height"] * 0.7
    page.mouse.move(box["x"] + box["width"] * start, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * end, y, steps=8)
    page.mouse.up()


def check_split_shows_each_side(page, stage: str, line: str) -> None:
    """End shows the original alone, Home the swapped alone; at 50 % the left half is the original's and the right
    half the swapped's (the rendered pixels)."""
    page.focus(line)
    page.keyboard.press("Home")
    swapped = stage_pixels(page, stage)
    page.keyboard.press("End")
    original = stage_pixels(page, stage)
    changed = np.abs(swapped - original).max(axis=2) > 24
    assert 0.005 < changed.mean() < 0.5, changed.mean()  # the faces differ, not the whole picture
    page.keyboard.press("Home")
    for _ in range(5):
        page.keyboard.press("Shift+ArrowRight")
    assert value(page, line) == 50
    half = stage_pixels(page, stage)
    width = half.shape[1]
    left, right = slice(0, width // 2 - 6), slice(width // 2 + 6, width)  # the line itself is drawn between
    assert np.abs(half[:, left] - original[:, left]).mean() < 2 and np.abs(half[:, right] - swapped[:, right]).mean() < 2
    if changed[:, left].any() and changed[:, right].any():
        assert np.abs(half[:, left] - swapped[:, left]).mean() > 0.2
        assert np.abs(half[:, right] - original[:, right]).mean() > 0.2


def test_the_photo_slider_by_mouse_and_keyboard_and_zoom(service, browser):
    with open_page(browser, service.url + "/swap-photo") as watched:
        page = watched.page
        swap_photo(page, OBAMA, ROSE)
        assert page.inner_text("#swapped-caption") == "swapped: 1 face"  # the page's own caption is kept
        assert value(page, LINE) == 50 and page.is_visible("#swapped .compare-bar button[aria-label='zoom in']")
        drag(page, "#swapped .compare-stage", 0.5, 0.8)
        assert 78 <= value(page, LINE) <= 82
        drag(page, "#swapped .compare-stage", 0.3, 0.2)  # a press anywhere moves the line there
        assert 18 <= value(page, LINE) <= 22
        page.keyboard.press("ArrowRight")  # the drag left the focus on the line
        assert 20 <= value(page, LINE) <= 24
        check_split_shows_each_side(page, "#swapped .compare-stage", LINE)
        whole = stage_pixels(page, "#swapped .compare-stage")
        page.keyboard.press("+")
        assert page.inner_text("#swapped .compare-zoom") == "1.5×"
        zoomed = stage_pixels(page, "#swapped .compare-stage")
        assert zoomed.shape == whole.shape and np.abs(zoomed - whole).mean() > 5  # the picture is larger
        box = page.locator("#swapped .compare-stage").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.9, box["y"] + box["height"] * 0.5)
        page.mouse.wheel(0, -200)
        wait_until(page, "document.querySelector('#swapped .compare-zoom').textContent !== '1.5×'")
        watched.screenshot("compare-photo-zoomed", full_page=False)
        page.focus(LINE)
        page.keyboard.press("0")
        assert page.inner_text("#swapped .compare-zoom") == "1.0×"
        assert np.abs(stage_pixels(page, "#swapped .compare-stage") - whole).mean() < 2
        page.locator("#swapped").scroll_into_view_if_needed()
        watched.screenshot("compare-photo")


def test_a_trimmed_job_in_the_gallery_and_its_result_compared(service, browser):
    with open_page(browser, service.url + "/") as watched:
        page = watched.page
        page.wait_for_selector("text=live: the service pushes every change")
        page.set_input_files("input[name=target]", {"name": "Holiday at the beach <1>.mp4", "mimeType": "video/mp4",
                                                     "buffer": VID03.read_bytes()})
        page.set_input_files("input[name=source]", str(OBAMA))
        page.fill("input[name=start]", "1")
        page.fill("input[name=end]", "3")
        page.select_option("select[name=preset]", "ultrafast")
        page.click("#submit")
        page.wait_for_selector("#jobs li[data-id]")
        job_id = page.get_attribute("#jobs li[data-id]", "data-id")
        item = f"#job-{job_id}"
        page.wait_for_selector(f"{item}[data-state=done]", timeout=240_000)
        wait_until(page, f"document.querySelector('{item} img.thumb')?.naturalWidth > 0")
        assert page.inner_text(f"{item} .target-name") == "Holiday at the beach <1>.mp4"
        assert page.inner_text(f"{item} .source-names") == f"face from {OBAMA.name}"
        assert page.inner_text(f"{item} .duration") == "2.0 s of video"
        assert page.get_attribute(f"{item} img.thumb", "alt") == "a swapped frame of Holiday at the beach <1>.mp4"
        watched.screenshot("jobs-gallery")

        page.click(f"{item} >> text=Show the result")
        page.wait_for_selector("#result:not([hidden])")
        wait_until(page, "document.getElementById('result-video').readyState >= 2 && "
                         "document.getElementById('original-video').readyState >= 2")
        assert abs(page.evaluate("document.getElementById('result-video').duration") - 2.0) < 0.05  # the part
        assert page.is_visible("#result .compare-play") and page.is_hidden("#result .compare-zoom")
        # the original follows at the part's own time: 1 s ahead
        page.evaluate("document.getElementById('result-video').currentTime = 1.5")
        wait_until(page, "Math.abs(document.getElementById('original-video').currentTime - 2.5) < 0.05")
        line = "#result .compare-line"
        drag(page, "#result .compare-stage", 0.5, 0.75)
        assert 73 <= value(page, line) <= 77
        check_split_shows_each_side(page, "#result .compare-stage", line)
        page.click("#result .compare-play")  # one bar plays both
        wait_until(page, "!document.getElementById('result-video').paused && "
                         "!document.getElementById('original-video').paused")
        wait_until(page, "document.getElementById('result-video').ended", timeout=30_000)
        assert page.inner_text("#result .compare-play") == "Play"
        page.locator("#result").scroll_into_view_if_needed()
        watched.screenshot("compare-video", full_page=False)

        count = page.locator("#jobs li[data-id]").count()
        page.click(f"{item} >> text=Run again")
        wait_until(page, f"document.querySelectorAll('#jobs li[data-id]').length === {count + 1}")
        again = page.get_attribute("#jobs li[data-id]", "data-id")
        assert again != job_id and page.inner_text(f"#job-{again} .target-name") == "Holiday at the beach <1>.mp4"
        page.wait_for_selector(f"#job-{again}[data-state=running]", timeout=120_000)  # its files were found


def test_pages_of_older_jobs_and_the_gallery_at_phone_width(service, browser):
    store = JobStore.in_folder(service.data)
    try:
        for i in range(55):  # the service's own store, written as a submission writes it (no files: they fail)
            store.create({"faces": "all"}, {"folder": "uploads/none", "target": "uploads/none/target.mp4",
                                            "sources": [], "frames": 1, "result_suffix": ".mp4"},
                         names={"target": f"clip-{i:02}.mp4", "sources": ["me.jpg"]})
    finally:
        store.close()
    with open_page(browser, service.url + "/", viewport=PHONE) as watched:
        page = watched.page
        page.wait_for_selector("nav.pager:not([hidden])")
        total = page.evaluate("document.querySelectorAll('#jobs li[data-id]').length")
        assert total == 50 and "jobs 1–50 of" in page.inner_text("nav.pager")
        assert page.inner_text("#jobs li[data-id] .target-name") == "clip-54.mp4"  # newest first
        page.click("nav.pager >> text=Older ›")
        wait_until(page, "document.querySelector('nav.pager').textContent.includes('jobs 51–')")
        names = page.locator("#jobs li[data-id] .target-name").all_inner_texts()
        assert names[:5] == [f"clip-{i:02}.mp4" for i in (4, 3, 2, 1, 0)]
        done = page.locator("#jobs li[data-state=done]").first  # the earlier tests' jobs, older than the 55
        done.scroll_into_view_if_needed()
        wait_until(page, "document.querySelector('#jobs li[data-state=done] img.thumb')?.naturalWidth > 0")
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        watched.screenshot("jobs-gallery-phone", full_page=False)
        page.click("nav.pager >> text=‹ Newer")
        wait_until(page, "document.querySelector('#jobs li[data-id] .target-name')?.textContent === 'clip-54.mp4'")
        assert "jobs 1–50 of" in page.inner_text("nav.pager")
    assert (ARTIFACTS / "jobs-gallery-phone.png").is_file()


def test_the_photo_slider_by_touch_at_phone_width(service, browser):
    with open_page(browser, service.url + "/swap-photo", viewport=PHONE) as watched:  # a touch screen
        page = watched.page
        swap_photo(page, OBAMA, ROSE)
        stage = page.locator("#swapped .compare-stage")
        stage.scroll_into_view_if_needed()
        box = stage.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
        page.touchscreen.tap(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.5)
        assert 23 <= value(page, LINE) <= 27
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        watched.screenshot("compare-photo-phone", full_page=False)
