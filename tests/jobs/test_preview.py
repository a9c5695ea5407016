"""``POST /v1/preview`` against a real ``swapstream serve`` (the session's Triton): one swapped frame at a time of a
real clip or photo, the faces numbered, sessions that keep the files, and every refusal with its code."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from swapstream.benchmarks.media import ffmpeg
from swapstream.services.jobs.process import ServiceProcess
from tests.helpers.media import MEDIA, frames_of
from tests.helpers.service import OBAMA

CLIP = MEDIA / "vid03_square_480_expressions.mp4"  # 216 frames, 30 fps, 480x480, one face
GROUP = MEDIA / "img07_group6_t1.jpg"


@pytest.fixture(scope="module")
def service(tmp_path_factory, triton):
    data = tmp_path_factory.mktemp("preview") / "data"
    with ServiceProcess(data, "--triton", triton.grpc_url) as running:
        yield running


@pytest.fixture(scope="module")
def http(service):
    with service.client() as client:
        yield client


@pytest.fixture(scope="module")
def no_face(tmp_path_factory):
    """A real encoded clip and a still of FFmpeg's test pattern: no face anywhere."""
    folder = tmp_path_factory.mktemp("noface")
    clip, still = folder / "pattern.mp4", folder / "pattern.png"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=1", "-pix_fmt", "yuv420p", str(clip))
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=1:duration=1", "-frames:v", "1", str(still))
    return clip, still


def preview(http, target=None, sources=(OBAMA,), **form):
    files = []
    if target is not None:
        files.append(("target", (target.name, target.read_bytes(), "application/octet-stream")))
        files += [("source", (s.name, s.read_bytes(), "image/jpeg")) for s in sources]
    return http.post("/v1/preview", files=files or None, data={k: str(v) for k, v in form.items()})


def image(answer) -> np.ndarray:
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/jpeg"
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(answer.content, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def face_and_rest(a: np.ndarray, b: np.ndarray, box) -> tuple[float, float]:
    """Mean difference inside the face's middle and away from the face."""
    difference = np.abs(a.astype(int) - b.astype(int)).mean(axis=2)
    x1, y1, x2, y2 = (int(v) for v in box)
    w, h = x2 - x1, y2 - y1
    inside = difference[y1 + h // 4: y2 - h // 4, x1 + w // 4: x2 - w // 4].mean()
    away = np.ones_like(difference, bool)
    away[max(y1 - h // 2, 0): y2 + h // 2, max(x1 - w // 2, 0): x2 + w // 2] = False
    return inside, difference[away].mean()


def test_a_video_at_a_time_is_that_frame_swapped(http):
    frames = frames_of(CLIP)
    answer = preview(http, CLIP, time=3.5)
    swapped = image(answer)
    header = json.loads(answer.headers["X-Preview"])
    assert header["frame"] == 105 and header["time"] == pytest.approx(3.5)  # 3.5 s at 30 fps
    assert (header["width"], header["height"], header["frames"]) == (480, 480, 216)
    assert header["duration"] == pytest.approx(7.2) and header["swapper"] == "mesh" == answer.headers["X-Swapper"]
    assert [face["number"] for face in header["faces"]] == [1] and header["faces"][0]["swapped"]
    assert header["faces_swapped"] == 1 and not header["identity_cached"]
    box = header["faces"][0]["box"]
    inside, away = face_and_rest(swapped, frames[105], box)
    assert inside > 12 and away < 3, (inside, away)
    # the frame asked for, not a neighbour: away from the face it matches frame 105 better than frames near it
    elsewhere = [face_and_rest(swapped, frames[i], box)[1] for i in (100, 110)]
    assert away < min(elsewhere), (away, elsewhere)


def test_the_session_keeps_the_files_and_the_identity(http):
    first = preview(http, CLIP, time=0)
    session = json.loads(first.headers["X-Preview"])["session"]
    again = preview(http, session=session, time=7.2)  # the end itself: the last frame
    image(again)
    header = json.loads(again.headers["X-Preview"])
    assert header["session"] == session and header["identity_cached"] and header["frame"] == 215


def test_a_photo_gives_its_faces_numbered_left_to_right(http):
    answer = preview(http, GROUP, time=12)  # a photo's time is ignored
    swapped = image(answer)
    header = json.loads(answer.headers["X-Preview"])
    faces = header["faces"]
    assert [f["number"] for f in faces] == [1, 2, 3, 4, 5, 6] and header["faces_swapped"] == 6
    lefts = [f["box"][0] for f in faces]
    assert lefts == sorted(lefts)
    original = cv2.cvtColor(cv2.imread(str(GROUP)), cv2.COLOR_BGR2RGB)
    assert swapped.shape == original.shape and (header["frame"], header["duration"]) == (0, 0.0)


def test_faces_largest_swaps_one(http):
    header = json.loads(preview(http, GROUP, faces="largest").headers["X-Preview"])
    swapped = [f for f in header["faces"] if f["swapped"]]
    areas = [(f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]) for f in header["faces"]]
    assert len(swapped) == 1 and swapped[0]["number"] == 1 + int(np.argmax(areas))


def test_a_time_past_the_end_is_refused_before_any_work(http, service):
    before = sorted(p.name for p in (service.data / "tmp").iterdir())
    answer = preview(http, CLIP, time=7.5)
    assert answer.status_code == 422 and answer.json()["code"] == "bad_option", answer.text
    assert "7.200" in answer.json()["detail"] and "time" in answer.json()["detail"]
    negative = preview(http, CLIP, time=-1)
    assert negative.status_code == 422 and negative.json()["code"] == "bad_option"
    assert sorted(p.name for p in (service.data / "tmp").iterdir()) == before  # nothing kept


def test_no_face_in_the_frame_is_a_clear_answer(http, no_face):
    clip, _ = no_face
    answer = preview(http, clip, time=0.5)
    frame = image(answer)
    header = json.loads(answer.headers["X-Preview"])
    assert header["faces"] == [] and header["faces_swapped"] == 0 and header["frame"] == 12
    differences = [np.abs(frame.astype(int) - original.astype(int)).mean() for original in frames_of(clip)]
    assert int(np.argmin(differences)) == 12, differences  # the original frame (JPEG's noise on sharp edges)


def test_refusals_carry_a_code(http, service, no_face, tmp_path):
    _, still = no_face
    faceless = preview(http, CLIP, sources=(still,), time=1)
    assert faceless.status_code == 422 and faceless.json()["code"] == "no_face_in_source", faceless.text
    fake = tmp_path / "holiday.mp4"
    fake.write_bytes(b"not a video\n" * 100)
    bad = preview(http, fake, time=1)
    assert bad.status_code == 422 and bad.json()["code"] == "not_a_video", bad.text
    assert str(service.data) not in bad.json()["detail"]
    session = json.loads(preview(http, GROUP).headers["X-Preview"])["session"]
    no_reference = preview(http, session=session, faces="reference")
    assert no_reference.status_code == 422 and no_reference.json()["code"] == "missing_reference", no_reference.text
    gone = preview(http, session="0" * 32, time=1)
    assert gone.status_code == 404 and gone.json()["code"] == "not_found"
    nothing = preview(http, time=1)
    assert nothing.status_code == 422 and "target and source" in nothing.json()["detail"]
    other_site = http.post("/v1/preview", headers={"Origin": "https://evil.example"}, data={"time": "1"})
    assert other_site.status_code == 403 and other_site.json()["code"] == "forbidden_origin"


def test_the_openapi_entry(http):
    entry = http.get("/openapi.json").json()["paths"]["/v1/preview"]["post"]
    answer = entry["responses"]["200"]
    assert "image/jpeg" in answer["content"] and "X-Preview" in answer["headers"]
    form = entry["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]
    fields = http.get("/openapi.json").json()["components"]["schemas"][form]["properties"]
    assert {"time", "session", "target", "source", "faces", "swapper", "score_threshold"} <= set(fields)


def test_a_picked_face_is_the_only_one_swapped(http):
    first = preview(http, GROUP)
    faces = json.loads(first.headers["X-Preview"])["faces"]
    x1, y1, x2, y2 = faces[2]["box"]
    answer = preview(http, GROUP, pick_time=0, pick_points=json.dumps([[(x1 + x2) / 2, (y1 + y2) / 2]]))
    swapped = image(answer)
    header = json.loads(answer.headers["X-Preview"])
    assert [f["number"] for f in header["faces"] if f["swapped"]] == [3] and header["faces_swapped"] == 1
    original = cv2.cvtColor(cv2.imread(str(GROUP)), cv2.COLOR_BGR2RGB)
    changed = [face_and_rest(swapped, original, f["box"])[0] for f in header["faces"]]
    assert changed[2] > 8 and max(changed[:2] + changed[3:]) < 3, changed
    off = preview(http, GROUP, pick_points=json.dumps([[1, 1]]))
    assert off.status_code == 422 and off.json()["code"] == "pick_on_no_face", off.text


def test_sessions_and_identities_are_bounded(tmp_path):
    from swapstream.services.engine.preview import IdentityCache
    from swapstream.services.http.preview import Session, Sessions

    sessions = Sessions(limit=3, idle=60)
    kept = []
    for number in range(5):
        folder = tmp_path / f"{number:032x}"
        folder.mkdir()
        session = Session(folder.name, folder, folder / "target.mp4", None, [], "digest")
        sessions.add(session)
        sessions.release(session)
        kept.append(session)
    assert [s.folder.exists() for s in kept] == [False, False, True, True, True]  # the oldest went, with their files
    in_use = sessions.take(kept[2].id)
    sessions.idle = 0
    with pytest.raises(Exception) as gone:
        sessions.take(kept[3].id)  # expired: removed with the other idle one, never the one in use
    assert gone.value.status == 404 and gone.value.code == "not_found"
    assert [s.folder.exists() for s in kept[2:]] == [True, False, False]
    sessions.release(in_use)

    made = []
    cache = IdentityCache(size=2)
    for key in ("a", "b", "a", "c", "b"):
        cache.get(key, lambda key=key: made.append(key) or {"id": key})
    assert made == ["a", "b", "c", "b"] and len(cache) == 2  # "a" came from the cache; "b" had gone


def test_a_pick_is_followed_to_other_times_of_the_clip(http):
    first = preview(http, CLIP, time=1)
    header = json.loads(first.headers["X-Preview"])
    x1, y1, x2, y2 = header["faces"][0]["box"]
    pick = {"pick_time": header["time"], "pick_points": json.dumps([[(x1 + x2) / 2, (y1 + y2) / 2]])}
    later = preview(http, session=header["session"], time=5, **pick)
    image(later)
    followed = json.loads(later.headers["X-Preview"])
    assert followed["frame"] == 150 and [f["swapped"] for f in followed["faces"]] == [True]  # re-found by its look
    past = preview(http, session=header["session"], time=1, pick_time=9, pick_points=pick["pick_points"])
    assert past.status_code == 422 and past.json()["code"] == "bad_option" and "pick_time" in past.json()["detail"]


def test_a_preview_may_send_a_jobs_files_and_no_more():
    from swapstream.services.jobs.uploads import UploadLimits

    limits = UploadLimits(max_video_bytes=50 << 20, max_photo_bytes=2 << 20)
    assert limits.request_limit("/v1/preview") == limits.request_limit("/v1/jobs") == limits.max_request_bytes
    assert limits.request_limit("/v1/swap-image") < limits.max_request_bytes
