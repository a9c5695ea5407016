"""/swap-photo in a real headless Chromium against a real ``swapstream serve``: the target's faces are outlined and
numbered, one of the six faces of img07 is picked (by click; keyboard toggles too), and only that face changes.
Any console error, page error or failed request fails the test."""
from __future__ import annotations


import numpy as np
import pytest

from swapstream.services.jobs.process import ServiceProcess
from tests.helpers.browser import PHONE, image_rgb, open_page, wait_until
from tests.helpers.media import MEDIA
from tests.helpers.service import OBAMA

GROUP = MEDIA / "img07_group6_t1.jpg"
ROSE = MEDIA / "img03_single_frontal_rose_leslie.jpg"


@pytest.fixture(scope="module")
def service(tmp_path_factory, triton):
    data = tmp_path_factory.mktemp("pick-page") / "data"
    with ServiceProcess(data, "--triton", triton.grpc_url) as running:
        yield running


def test_one_face_of_six_picked_on_the_photo_is_the_only_one_replaced(service, browser):
    with service.client() as http:
        faces = http.post("/v1/analyze", files={"photo": (GROUP.name, GROUP.read_bytes(), "image/jpeg")}).json()
    boxes = sorted((face["box"] for face in faces["faces"]), key=lambda box: (box[0], box[1]))  # numbered so
    assert len(boxes) == 6
    with open_page(browser, service.url + "/swap-photo") as watched:
        page = watched.page
        page.set_input_files("input[name=source]", str(OBAMA))
        page.set_input_files("input[name=target]", str(GROUP))
        page.wait_for_selector("#target-faces .face-box >> nth=5", timeout=60_000)
        buttons = page.locator("#target-faces .face-box")
        assert buttons.count() == 6
        assert [buttons.nth(i).inner_text() for i in range(6)] == ["1", "2", "3", "4", "5", "6"]
        # The outline of face 3 is where the service found it, at the scale the photo is shown.
        shown = page.locator("#target-faces img").bounding_box()
        outline = buttons.nth(2).bounding_box()
        scale = shown["width"] / faces["width"]
        assert abs(outline["x"] - shown["x"] - boxes[2][0] * scale) < 3
        assert abs(outline["width"] - (boxes[2][2] - boxes[2][0]) * scale) < 3
        # The keyboard picks and unpicks (Enter on a focused outline), a click picks face 3.
        buttons.nth(4).focus()
        page.keyboard.press("Enter")
        assert buttons.nth(4).get_attribute("aria-pressed") == "true"
        page.keyboard.press("Enter")
        assert buttons.nth(4).get_attribute("aria-pressed") == "false"
        buttons.nth(2).click()
        assert buttons.nth(2).get_attribute("aria-pressed") == "true"
        assert page.inner_text("#picker-status").startswith("Face 3 will be replaced")
        page.select_option("select[name=swapper]", "simswap")  # the stand-in's known colour shift
        watched.screenshot("swap-photo-pick-desktop")
        page.click("#swap")
        page.wait_for_selector("#swapped:not([hidden])", timeout=60_000)
        wait_until(page, "document.getElementById('swapped-photo').complete && "
                         "document.getElementById('swapped-photo').naturalWidth > 0 && "
                         "document.getElementById('target-photo').naturalWidth > 0")
        assert page.inner_text("#swapped-caption") == "swapped: 1 face"
        swapped = image_rgb(page, "swapped-photo").astype(int)
        target = image_rgb(page, "target-photo").astype(int)
    changes = []
    for x1, y1, x2, y2 in (np.array(box).astype(int) for box in boxes):
        w, h = x2 - x1, y2 - y1
        middle = (slice(y1 + h // 4, y2 - h // 4), slice(x1 + w // 4, x2 - w // 4))
        changes.append(float(np.abs(swapped[middle] - target[middle]).mean()))
    assert [c > 8 for c in changes] == [i == 2 for i in range(6)], changes
    assert max(c for i, c in enumerate(changes) if i != 2) < 2.5, changes


def test_a_pick_per_source_photo_and_the_phone_width(service, browser):
    with open_page(browser, service.url + "/swap-photo", viewport=PHONE) as watched:
        page = watched.page
        page.set_input_files("input[name=source]", [str(OBAMA), str(ROSE)])
        page.set_input_files("input[name=target]", str(GROUP))
        page.wait_for_selector("#target-faces .face-box >> nth=5", timeout=60_000)
        page.locator("#target-faces .face-box").nth(0).click()
        page.locator("#target-faces .face-box").nth(5).click()
        assert page.locator("#picked-sources select").count() == 2  # two photos: who becomes whom
        page.select_option("select[name=face-1]", "1")
        page.select_option("select[name=face-6]", "0")
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        watched.screenshot("swap-photo-pick-phone")
        page.click("#swap")
        page.wait_for_selector("#swapped:not([hidden])", timeout=60_000)
        assert page.inner_text("#swapped-caption") == "swapped: 2 faces"
