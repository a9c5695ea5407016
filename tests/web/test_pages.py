"""The pages in a real headless Chromium against a real ``swapstream serve`` (the session's Triton, stand-in swap).

Every page is opened through ``open_page``: any console error, page error or failed request fails the test.
Screenshots go to ``tests/artifacts/`` (desktop and phone width)."""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from swapstream.benchmarks.media import cut, ffmpeg
from swapstream.services.jobs.process import ServiceProcess
from tests.helpers.browser import (DESKTOP, PHONE, chromium, figures, image_rgb, open_page, rgb_from_data_url,
                                  swap_photo, wait_until)
from tests.helpers.media import MEDIA
from tests.helpers.service import OBAMA

GROUP = MEDIA / "img07_group6_t1.jpg"
ROSE = MEDIA / "img03_single_frontal_rose_leslie.jpg"
CLIP_FRAMES = 60
BOX_COLOUR = (0x00, 0xE5, 0xFF)  # analyze.js BOX_COLOUR


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return cut(MEDIA / "vid03_square_480_expressions.mp4", tmp_path_factory.mktemp("clip") / "clip.mp4", CLIP_FRAMES)


@pytest.fixture(scope="module")
def service(tmp_path_factory, triton):
    data = tmp_path_factory.mktemp("web") / "data"
    with ServiceProcess(data, "--triton", triton.grpc_url) as running:
        yield running


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    camera = tmp_path_factory.mktemp("camera") / "rose.y4m"  # what the fake camera films: a face
    ffmpeg("-loop", "1", "-i", str(ROSE), "-t", "1", "-r", "10", "-vf", "scale=480:-2", "-pix_fmt", "yuv420p",
           str(camera))
    with chromium(fake_video=camera) as running:
        yield running


@pytest.fixture
def http(service):
    with service.client() as client:
        yield client


GRAB = """async ([id, time]) => {
  const video = document.getElementById(id);
  video.pause();
  await new Promise((resolve) => { video.addEventListener("seeked", resolve, { once: true }); video.currentTime = time; });
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  return canvas.toDataURL("image/png");
}"""


# --------------------------------------------------------------------------------------------------- the jobs page

def test_submit_follow_play_and_see_the_swap(service, browser, http, clip):
    with open_page(browser, service.url + "/") as watched:
        page = watched.page
        page.wait_for_selector("text=live: the service pushes every change")
        page.evaluate("window.notReloaded = true")
        page.set_input_files("input[name=target]", str(clip))
        page.set_input_files("input[name=source]", str(OBAMA))
        page.select_option("select[name=preset]", "veryfast")
        assert page.input_value("select[name=swapper]") == "mesh"  # the service's default, from GET /v1/options
        started = time.monotonic()
        page.click("#submit")
        page.wait_for_selector("#jobs li[data-id]")
        listed = time.monotonic() - started
        job_id = page.get_attribute("#jobs li[data-id]", "data-id")
        item = f"#job-{job_id}"
        # the first update with frames done, pushed by the service (the page is never reloaded)
        wait_until(page, f"document.querySelector('{item} progress').value > 0", timeout=120_000, interval=0.01)
        first_progress = time.monotonic() - started
        # how long the store's write took to reach the page (one clock: the same machine)
        pushed = page.evaluate(f"Date.now() / 1000 - document.querySelector('{item}').dataset.updatedAt")
        first_value = float(page.get_attribute(f"{item} progress", "value"))
        watched.screenshot("jobs-running-desktop")
        page.wait_for_selector(f"{item}[data-state=done]", timeout=240_000)
        assert page.evaluate("window.notReloaded") is True
        assert 0 < first_value < 1, f"the first update shown was {first_value}, not a part of the job"
        numbers = page.inner_text(f"{item} .numbers")
        assert numbers.startswith("100 %") and f"{CLIP_FRAMES} / {CLIP_FRAMES} frames" in numbers, numbers
        assert "fps" in numbers and "attempt 1 of" in numbers
        assert not page.locator(f"{item} .job-error").count()
        figures(submit_to_listed_s=round(listed, 2), submit_to_first_progress_s=round(first_progress, 2),
                progress_written_to_shown_s=round(pushed, 2))

        page.click(f"{item} >> text=Show the result")
        page.wait_for_selector("#result:not([hidden])")
        summary = page.inner_text("#summary")
        assert "faces swapped" in summary and "frames without a face" in summary and "swap (stage time)" in summary
        assert "swapper mesh (asked for)" in summary  # the page sends the swapper it shows
        assert page.get_attribute("#download", "href") == f"/v1/jobs/{job_id}/result"
        page.evaluate("document.getElementById('result-video').play()")
        wait_until(page, "document.getElementById('result-video').ended", timeout=60_000)
        watched.screenshot("jobs-result-desktop")

        middle = CLIP_FRAMES / 2 / 30
        swapped = rgb_from_data_url(page.evaluate(GRAB, ["result-video", middle]))
        original = rgb_from_data_url(page.evaluate(GRAB, ["original-video", middle]))

        page.click(f"{item} >> text=Delete")
        page.wait_for_selector(item, state="detached")
        assert page.locator("#result").is_hidden()
    assert http.get(f"/v1/jobs/{job_id}").status_code == 404
    assert swapped.shape == original.shape == (480, 480, 3)
    frame_jpeg = cv2.imencode(".jpg", cv2.cvtColor(original, cv2.COLOR_RGB2BGR))[1].tobytes()
    faces = http.post("/v1/analyze", files={"photo": ("frame.jpg", frame_jpeg, "image/jpeg")}).json()["faces"]
    assert len(faces) == 1
    x1, y1, x2, y2 = (int(v) for v in faces[0]["box"])
    difference = np.abs(swapped.astype(int) - original.astype(int)).mean(axis=2)
    w, h = x2 - x1, y2 - y1
    inside = difference[y1 + h // 4: y2 - h // 4, x1 + w // 4: x2 - w // 4].mean()  # the cheeks, nose, eyes
    outside = np.ones_like(difference, bool)
    outside[max(y1 - h // 2, 0): y2 + h // 2, max(x1 - w // 2, 0): x2 + w // 2] = False
    assert inside > 12 and difference[outside].mean() < 3, (inside, difference[outside].mean())


def test_a_non_video_gets_a_plain_message_on_the_page(service, browser, http, tmp_path):
    fake = tmp_path / "holiday.mp4"
    fake.write_bytes(b"this is a text file, not a video\n" * 100)
    before = http.get("/v1/jobs").json()["total"]
    with open_page(browser, service.url + "/", allow_http=(422,)) as watched:
        page = watched.page
        page.set_input_files("input[name=target]", str(fake))
        page.set_input_files("input[name=source]", str(OBAMA))
        page.click("#submit")
        page.wait_for_selector("#error:not([hidden])")
        shown = page.inner_text("#error .message")
        watched.screenshot("jobs-error-desktop")
    files = [("target", (fake.name, fake.read_bytes(), "video/mp4")), ("source", (OBAMA.name, OBAMA.read_bytes(), "image/jpeg"))]
    answer = http.post("/v1/jobs", files=files)
    assert answer.status_code == 422 and answer.json()["code"] == "not_a_video", answer.text
    # The page's own words for the code, not the API's detail (which names fields and commands).
    assert shown.startswith("That file could not be read as a video") and "Try an MP4 video" in shown, shown
    assert not any(word in shown for word in ("target", "ffmpeg", "curl", "--", "detail")), shown
    assert http.get("/v1/jobs").json()["total"] == before


# ------------------------------------------------------------------------------------------------- analyse, swap

def test_analyse_draws_the_six_faces_of_the_group_photo(service, browser, http):
    expected = http.post("/v1/analyze", files={"photo": (GROUP.name, GROUP.read_bytes(), "image/jpeg")}).json()
    assert len(expected["faces"]) == 6
    with open_page(browser, service.url + "/analyze") as watched:
        page = watched.page
        page.set_input_files("input[name=photo]", str(GROUP))
        page.click("#analyze")
        page.wait_for_selector("#found:not([hidden])", timeout=60_000)
        assert page.locator("#faces tr.face").count() == 6
        size = page.evaluate("[document.getElementById('drawing').width, document.getElementById('drawing').height]")
        drawn = rgb_from_data_url(page.evaluate("document.getElementById('drawing').toDataURL('image/png')"))
        watched.screenshot("analyze-desktop")
    assert size == [expected["width"], expected["height"]]

    def box_colour(x, y) -> bool:
        return np.abs(drawn[int(y), int(x)].astype(int) - BOX_COLOUR).max() <= 40

    boxes = 0
    for face in expected["faces"]:
        x1, y1, x2, y2 = (round(v) for v in face["box"])
        w, h = x2 - x1, y2 - y1
        edges = [(x1 + w / 4, y1), (x2 - w / 4, y2), (x1, y1 + h / 4), (x2, y2 - h / 4)]
        boxes += all(box_colour(x, y) for x, y in edges) and not box_colour(x1 + w / 2, y1 + h / 2)
    assert boxes == 6


def test_a_selfie_from_the_camera_is_analysed(service, browser):
    with open_page(browser, service.url + "/analyze") as watched:
        page = watched.page
        page.click("#camera")
        wait_until(page, "document.getElementById('preview').videoWidth > 0")
        page.click("#snap")
        page.wait_for_selector("#found:not([hidden])", timeout=60_000)
        assert page.inner_text("#status").startswith("1 face found in 480×")
        assert page.locator("#faces tr.face").count() == 1


def test_swap_a_photo_shows_it_beside_the_target(service, browser):
    with open_page(browser, service.url + "/swap-photo") as watched:
        page = watched.page
        swap_photo(page, OBAMA, ROSE)
        assert page.inner_text("#swapped-caption") == "swapped: 1 face"
        swapped = image_rgb(page, "swapped-photo")
        target = image_rgb(page, "target-photo")
        watched.screenshot("swap-photo-desktop")
    assert swapped.shape == target.shape
    changed = np.abs(swapped.astype(int) - target.astype(int)).max(axis=2) > 8
    assert 0.02 < changed.mean() < 0.5  # the face changed, not the whole photo


# ------------------------------------------------------------------------------------------------ every page, phone

@pytest.mark.parametrize("path, name", [("/", "jobs"), ("/analyze", "analyze"), ("/swap-photo", "swap-photo")])
def test_pages_fit_a_phone_and_are_small(service, browser, path, name):
    with open_page(browser, service.url + path, viewport=PHONE) as watched:
        page = watched.page
        page.wait_for_load_state("networkidle") if path != "/" else page.wait_for_selector("text=live:")
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        assert page.locator("header.top nav a[aria-current=page]").inner_text() in {"Jobs", "Analyse", "Swap a photo"}
        watched.screenshot(f"{name}-phone")
        page.keyboard.press("Tab")  # the keyboard reaches the nav first
        assert page.evaluate("document.activeElement.closest('header.top') !== null")
    with open_page(browser, viewport=DESKTOP) as watched:
        loaded = []
        watched.page.on("response", lambda response: loaded.append(response))
        watched.page.goto(service.url + path)
        watched.page.wait_for_load_state("load")
        assets = [r for r in loaded if "/v1/" not in r.url]  # the page, its style and scripts, not the API's answers
        assert assets and all(r.url.startswith(service.url) for r in loaded), [r.url for r in loaded]
        figures(**{f"page_weight_{name}_kb": round(sum(len(r.body()) for r in assets) / 1024, 1)})
