"""The pages in their own words and at phone width, in a real headless Chromium against a real ``swapstream serve``
(the session's Triton): errors worded from the service's codes (a faceless source at submission, a job the worker
failed), the sensitivity control, the empty state of the analyse page, a photo job's progress and summary, fields
that line up, source before target, and every page at phone width. Any console error fails a test."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from swapstream.benchmarks.media import cut
from swapstream.services.jobs.process import ServiceProcess
from tests.helpers.browser import DESKTOP, PHONE, open_page, wait_until
from tests.helpers.media import MEDIA
from tests.helpers.service import OBAMA

ROSE = MEDIA / "img03_single_frontal_rose_leslie.jpg"
GROUP = MEDIA / "img07_group6_t1.jpg"
PROFILE = MEDIA / "img05_profile_left.jpeg"  # a face the detector finds and the mesh swapper refuses (profile)
NO_FACE_WORDS = "No face found in the source photo — try a photo where the face is larger and frontal."
API_WORDS = ("curl", "--", "score_threshold", "source_id", "POST", "/v1/", "detail", "mesh swapper")


@pytest.fixture(scope="module")
def service(tmp_path_factory, triton):
    with ServiceProcess(tmp_path_factory.mktemp("words") / "data", "--triton", triton.grpc_url) as running:
        yield running


@pytest.fixture(scope="module")
def faceless(tmp_path_factory):
    path = tmp_path_factory.mktemp("wall") / "wall.jpg"
    wall = np.tile(np.linspace(60, 200, 320, dtype=np.uint8)[None, :, None], (240, 1, 3))
    cv2.imwrite(str(path), wall)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return cut(MEDIA / "vid03_square_480_expressions.mp4", tmp_path_factory.mktemp("clip") / "clip.mp4", 8)


def plain(text: str) -> None:
    assert not any(word in text for word in API_WORDS), text


def test_a_faceless_source_is_said_in_plain_words(service, browser, faceless, clip):
    with open_page(browser, service.url + "/", allow_http=(422,)) as watched:
        page = watched.page
        page.wait_for_selector("text=live: the service pushes every change")
        page.set_input_files("input[name=source]", str(faceless))
        page.set_input_files("input[name=target]", str(clip))
        page.click("#submit")
        page.wait_for_selector("#error:not([hidden])", timeout=60_000)
        shown = page.inner_text("#error .message")
        watched.screenshot("words-jobs-no-face")
    assert shown == NO_FACE_WORDS, shown


def test_a_job_the_worker_failed_is_said_in_plain_words(service, browser, clip):
    # the jobs page's preview of the chosen files meets the same refusal (422) before the job is submitted
    with open_page(browser, service.url + "/", allow_http=(422,)) as watched:
        page = watched.page
        page.wait_for_selector("text=live: the service pushes every change")
        page.set_input_files("input[name=source]", str(PROFILE))
        page.set_input_files("input[name=target]", str(clip))
        page.select_option("select[name=swapper]", "mesh")
        page.click("#submit")
        page.wait_for_selector("#jobs li[data-state=failed]", timeout=180_000)
        shown = page.inner_text("#jobs li[data-state=failed] .job-error")
        watched.screenshot("words-jobs-failed")
    assert shown == NO_FACE_WORDS, shown


def test_the_sensitivity_explains_itself_and_sends_the_threshold(service, browser):
    with open_page(browser, service.url + "/analyze") as watched:
        page = watched.page
        slider = page.locator("input[name=score_threshold]")
        wait_until(page, "document.querySelector('.sensitivity-words')?.textContent.length > 0")
        assert slider.get_attribute("type") == "range"
        assert page.inner_text(".sensitivity-words").startswith("Normal (recommended)")
        labels = page.inner_text("#analyze-form")
        assert "Sensitivity" in labels and "threshold" not in labels.lower()
        page.evaluate(RECORD_THRESHOLDS)
        slider.focus()
        page.keyboard.press("End")  # the most sensitive
        assert page.inner_text(".sensitivity-words").startswith("Very high")
        page.set_input_files("input[name=photo]", str(GROUP))
        page.click("#analyze")
        page.wait_for_selector("#found:not([hidden])", timeout=60_000)
        page.keyboard.press("Tab")
        slider.focus()
        page.keyboard.press("Home")  # the least sensitive
        assert page.inner_text(".sensitivity-words").startswith("Very low")
        page.click("#analyze")
        wait_until(page, "window.sentThresholds.length === 2 && "
                         "document.querySelector('#status').textContent.includes('found')")
        thresholds = page.evaluate("window.sentThresholds")
    assert thresholds == ["0.1", "0.95"], thresholds  # the options table's bounds, as the API takes them


# The form the page sends to /v1/analyze, read where it leaves the page (fetch wrapped).
RECORD_THRESHOLDS = """() => {
  window.sentThresholds = [];
  const send = window.fetch;
  window.fetch = (path, options = {}) => {
    if (String(path).endsWith("/v1/analyze")) window.sentThresholds.push(options.body.get("score_threshold"));
    return send(path, options);
  };
}"""


def test_no_face_shows_a_clear_empty_state(service, browser, faceless):
    with open_page(browser, service.url + "/analyze") as watched:
        page = watched.page
        page.set_input_files("input[name=photo]", str(faceless))
        page.click("#analyze")
        page.wait_for_selector("#none-found:not([hidden])", timeout=60_000)
        assert page.locator("#found").is_hidden()  # no empty canvas, no table header
        assert page.inner_text("#status").startswith("no faces found")
        assert "No face found in this photo" in page.inner_text("#none-found")
        watched.screenshot("words-analyze-empty")
        page.set_input_files("input[name=photo]", str(ROSE))
        page.click("#analyze")
        page.wait_for_selector("#found:not([hidden])", timeout=60_000)
        assert page.locator("#none-found").is_hidden()


def test_a_photo_job_reads_as_a_photo(service, browser):
    with open_page(browser, service.url + "/") as watched:
        page = watched.page
        page.wait_for_selector("text=live: the service pushes every change")
        page.set_input_files("input[name=source]", str(OBAMA))
        page.set_input_files("input[name=target]", str(ROSE))
        page.select_option("select[name=swapper]", "simswap")
        page.click("#submit")
        page.wait_for_selector("#jobs li[data-state=done]", timeout=120_000)
        numbers = page.inner_text("#jobs li[data-state=done] .numbers")
        page.click("#jobs li[data-state=done] >> text=Show the result")
        page.wait_for_selector("#result:not([hidden])")
        summary = page.inner_text("#summary")
        watched.screenshot("words-photo-job")
    assert "photo" in numbers and "1 face swapped" in numbers and "frames" not in numbers, numbers
    assert "faces swapped" in summary and "frame" not in summary.replace("frames", "frame").split("note")[0], summary


def test_fields_line_up_and_source_comes_first(service, browser):
    with open_page(browser, service.url + "/", viewport=DESKTOP) as watched:
        page = watched.page
        page.wait_for_selector("text=live: the service pushes every change")
        tops = page.evaluate("""[...document.querySelectorAll('#submit-form .fields')[0].querySelectorAll(
            ':scope > .field:not([hidden])')].map((f) => [f.getBoundingClientRect().top,
            f.querySelector('input, select').getBoundingClientRect().top])""")
        rows = {}
        for label_top, control_top in tops:
            rows.setdefault(round(label_top), set()).add(round(control_top))
        assert all(len(controls) == 1 for controls in rows.values()), tops  # one line of controls per row
        source, target = (page.locator(f"input[name={name}]").bounding_box() for name in ("source", "target"))
        assert source["x"] < target["x"] or source["y"] < target["y"]
        page.select_option("select[name=faces]", "reference")
        reference = page.locator("#reference-field").bounding_box()
        fields = page.locator("#submit-form .fields").first.bounding_box()
        assert reference["width"] > 0.95 * fields["width"]  # the reference row has the whole width
        watched.screenshot("words-jobs-reference")
    with open_page(browser, service.url + "/swap-photo") as watched:
        source, target = (watched.page.locator(f"input[name={name}]").bounding_box() for name in ("source", "target"))
        assert source["x"] < target["x"] or source["y"] < target["y"]


@pytest.mark.parametrize("path, name", [("/", "jobs"), ("/analyze", "analyze"), ("/swap-photo", "swap-photo"),
                                        ("/live", "live")])
def test_each_page_at_phone_width(service, browser, path, name):
    with open_page(browser, service.url + path, viewport=PHONE) as watched:
        page = watched.page
        wait_until(page, "document.querySelector('[data-control=sensitivity], #quality')?.max")
        if path == "/analyze":
            page.set_input_files("input[name=photo]", str(GROUP))
            page.click("#analyze")
            page.wait_for_selector("#found:not([hidden])", timeout=60_000)
            assert page.evaluate("getComputedStyle(document.querySelector('#faces thead')).display") == "none"
            wrap = page.locator("#found .table-wrap")
            assert wrap.evaluate("(w) => w.scrollWidth <= w.clientWidth + 1")  # readable without sideways scrolling
            labels = page.evaluate("getComputedStyle(document.querySelector('#faces td'), '::before').content")
            assert labels == '"face"', labels
        if path == "/live":
            swapped, camera = (page.locator(s).bounding_box() for s in ("#swapped-view", "#camera"))
            assert swapped["y"] < camera["y"]  # on phones the swapped view comes first
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        plain(page.inner_text("main"))
        watched.screenshot(f"words-{name}-phone")


PROGRESS = """async ([id, updates]) => {
  const { progressText } = await import("/static/progress.js");
  const base = { id, state: "running", frames_total: 216, faces_swapped: 0, attempts: 1, max_attempts: 3,
                 progress: 0, result: null, duration: 7.2, started_at: 0 };
  return updates.map(([at, frames]) => progressText({ ...base, updated_at: at, frames_done: frames,
                                                      faces_swapped: frames, progress: frames / 216 }));
}"""


def test_the_time_left_shows_only_once_it_is_stable(service, browser):
    with open_page(browser, service.url + "/analyze") as watched:
        steady = watched.page.evaluate(PROGRESS, ["a", [[20, 16], [22, 32], [24, 48], [26, 64], [28, 80]]])
        erratic = watched.page.evaluate(PROGRESS, ["b", [[20, 16], [21, 32], [29, 48], [30, 64], [40, 80]]])
    assert steady[0] == "7 % · 16 / 216 frames · 16 faces swapped · attempt 1 of 3", steady  # one face a frame
    assert "8.0 fps" in steady[1] and not any("left" in text for text in steady[:3]), steady
    assert "about 19 s left" in steady[3] and "about 17 s left" in steady[4], steady  # 136 frames at 8 fps
    assert not any("left" in text for text in erratic), erratic

