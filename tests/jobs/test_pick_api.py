"""Picking faces over the API (pick_time, pick_points, pick_sources) against a real ``swapstream serve`` on the
session's Triton: only the picked faces change; options that do not fit, a point on no face and a time past the end
are refused with their code before anything runs."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from swapstream.benchmarks.media import cut
from swapstream.services.jobs.process import ServiceProcess, wait_for
from tests.helpers.media import MEDIA
from tests.helpers.service import OBAMA, submit

ROSE = MEDIA / "img03_single_frontal_rose_leslie.jpg"
GROUP = MEDIA / "img07_group6_t1.jpg"


@pytest.fixture(scope="module")
def service(tmp_path_factory, triton):
    data = tmp_path_factory.mktemp("pick") / "data"
    with ServiceProcess(data, "--triton", triton.grpc_url) as running:
        yield running


@pytest.fixture
def http(service):
    with service.client() as client:
        yield client


@pytest.fixture(scope="module")
def group_faces(service):
    with service.client() as http:
        answer = http.post("/v1/analyze", files={"photo": (GROUP.name, GROUP.read_bytes(), "image/jpeg")})
    boxes = np.array([face["box"] for face in answer.json()["faces"]])
    assert len(boxes) == 6
    return boxes


def centre(box) -> list[float]:
    return [round(float(box[0] + box[2]) / 2, 1), round(float(box[1] + box[3]) / 2, 1)]


def swap_image(http, target=GROUP, sources=(OBAMA,), **form):
    files = [("target", (target.name, target.read_bytes(), "image/jpeg"))]
    files += [("source", (s.name, s.read_bytes(), "image/jpeg")) for s in sources]
    return http.post("/v1/swap-image", files=files, data={k: str(v) for k, v in form.items()})


def decoded(body: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(int)


def face_changes(before: np.ndarray, after: np.ndarray, boxes: np.ndarray) -> list[float]:
    """Mean change in the middle half of each box."""
    changes = []
    for x1, y1, x2, y2 in boxes.astype(int):
        w, h = x2 - x1, y2 - y1
        region = (slice(y1 + h // 4, y2 - h // 4), slice(x1 + w // 4, x2 - w // 4))
        changes.append(float(np.abs(after[region] - before[region]).mean()))
    return changes


def test_two_picked_faces_of_six_change_and_nothing_else(http, group_faces):
    picked = [0, 3]
    answer = swap_image(http, swapper="simswap", pick_points=json.dumps([centre(group_faces[i]) for i in picked]))
    assert answer.status_code == 200, answer.text
    assert answer.headers["X-Faces-Swapped"] == "2"
    before, after = decoded(GROUP.read_bytes()), decoded(answer.content)
    changes = face_changes(before, after, group_faces)
    assert all((change > 8) == (i in picked) for i, change in enumerate(changes)), changes
    untouched = [c for i, c in enumerate(changes) if i not in picked]
    assert max(untouched) < 2, changes  # JPEG noise only
    outside = np.ones(before.shape[:2], bool)
    for x1, y1, x2, y2 in group_faces[picked].astype(int):
        outside[max(y1 - 40, 0):y2 + 40, max(x1 - 40, 0):x2 + 40] = False
    assert np.abs(after[outside] - before[outside]).mean() < 1.5


def test_a_point_on_no_face_is_refused_with_its_code(http):
    answer = swap_image(http, pick_points="[[3, 3]]")
    assert answer.status_code == 422
    body = answer.json()
    assert body["code"] == "pick_on_no_face"
    assert body["detail"].startswith("pick_points: point 1 (3, 3) is on no face in the photo: the faces there are at")


@pytest.mark.parametrize("form, words", [
    ({"pick_points": "[[1, 2, 3]]"}, "pick_points: expected X,Y or a JSON list"),
    ({"pick_points": "[[1, 2]]", "faces": "largest"}, "leave faces at all"),
    ({"pick_sources": "[0]"}, "give pick_points too"),
    ({"pick_points": "[[1, 2], [3, 4]]", "pick_sources": "[0]"}, "1 photo numbers for 2 pick_points"),
    ({"pick_points": "[[600, 300]]", "pick_sources": "[1]"}, "photo 1 does not exist; there are 1 source photos"),
    ({"pick_time": "-1", "pick_points": "[[1, 2]]"}, "pick_time"),
])
def test_pick_options_that_do_not_fit_are_refused(http, form, words):
    answer = swap_image(http, **form)
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "bad_option" and words in answer.json()["detail"], answer.json()


def test_a_job_picks_one_face_of_a_photo_and_a_video_job_checks_its_time(http, group_faces, tmp_path):
    answer = submit(http, GROUP, swapper="simswap", pick_points=json.dumps([centre(group_faces[2])]))
    assert answer.status_code == 201, answer.text
    job = wait_for(http, answer.json()["id"], {"done", "failed"})
    assert job["state"] == "done" and job["faces_swapped"] == 1, job
    result = decoded(http.get(job["result_url"]).content)
    changes = face_changes(decoded(GROUP.read_bytes()), result, group_faces)
    assert [c > 8 for c in changes] == [i == 2 for i in range(6)], changes

    clip = cut(MEDIA / "vid03_square_480_expressions.mp4", tmp_path / "clip.mp4", 12)  # 0.4 s
    late = submit(http, clip, pick_time=5, pick_points="[[240, 200]]")
    assert late.status_code == 422 and late.json()["code"] == "bad_option"
    assert "pick_time: 5 s is past the end of the video (0.40 s)" in late.json()["detail"]
    # A point on no face in a video is found by the job's first pass, before any frame is swapped.
    nowhere = submit(http, clip, pick_time=0.2, pick_points="[[5, 5]]")
    assert nowhere.status_code == 201, nowhere.text
    failed = wait_for(http, nowhere.json()["id"], {"done", "failed"})
    assert failed["state"] == "failed" and failed["error_code"] == "pick_on_no_face", failed
    assert "point 1 (5, 5) is on no face in the frame at 0.20 s" in failed["error"]
    assert failed["frames_done"] == 0


def test_the_pick_fields_are_in_the_openapi_forms(http):
    schemas = http.get("/openapi.json").json()["components"]["schemas"]
    for route in ("Body_swap_image_v1_swap_image_post", "Body_submit_job_v1_jobs_post"):
        assert {"pick_time", "pick_points", "pick_sources"} <= set(schemas[route]["properties"]), route
    assert "pick_on_no_face" in json.dumps(schemas)
