"""The gallery's API (issue 21 items 4-5): display names (never paths), the output duration, a thumbnail of a swapped
frame, run again with the same files and options, paging past 50, and start/end/fps/max_height on a job, checked at
submission. A real ``swapstream serve`` on the session's Triton; the store tests on SQLite and a real PostgreSQL."""
from __future__ import annotations

import sqlite3

import av
import cv2
import numpy as np
import pytest

from swapstream.services.jobs.process import ServiceProcess, wait_for
from swapstream.services.jobs.store import JobStore
from swapstream.services.jobs.uploads import display_name
from tests.helpers.media import MEDIA
from tests.helpers.postgres_server import free_port, postgres_database_url, postgres_url  # noqa: F401 (fixtures)
from tests.helpers.service import OBAMA

VID03 = MEDIA / "vid03_square_480_expressions.mp4"  # 480x480, 30 fps, 7.2 s, with sound
GROUP = MEDIA / "img07_group6_t1.jpg"
CLIENT_NAME = "C:\\Users\\me\\..\\Holiday <b>clip<b> & beach.mp4"  # a (Windows) path and markup
LONG_NAME = "x" * 300 + ".jpg"


@pytest.fixture(scope="module")
def service(tmp_path_factory, triton):
    data = tmp_path_factory.mktemp("gallery") / "data"
    with ServiceProcess(data, "--triton", triton.grpc_url, "--max-queued", "100") as running:
        yield running


@pytest.fixture
def http(service):
    with service.client() as client:
        yield client


def _submit(http, target=VID03, name=None, source_name=None, **form):
    files = [("target", (name or target.name, target.read_bytes(), "application/octet-stream")),
             ("source", (source_name or OBAMA.name, OBAMA.read_bytes(), "image/jpeg"))]
    return http.post("/v1/jobs", files=files, data={"preset": "ultrafast", **{k: str(v) for k, v in form.items()}})


def _streams(data: bytes, tmp_path) -> dict:
    path = tmp_path / "result.mp4"
    path.write_bytes(data)
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        return {"frames": sum(1 for p in container.demux(video) if p.size), "fps": float(video.average_rate),
                "size": (video.width, video.height), "video_seconds": float(video.duration * video.time_base),
                "audio_seconds": float(audio.duration * audio.time_base)}


@pytest.fixture(scope="module")
def trimmed(service):
    """A done job of 1-3 s of vid03 at 15 fps, at most 240 high, submitted under a hostile file name."""
    with service.client() as http:
        answer = _submit(http, name=CLIENT_NAME, source_name=LONG_NAME, start=1, end=3, fps=15, max_height=240)
        assert answer.status_code == 201, answer.text
        return wait_for(http, answer.json()["id"], {"done", "failed"})


def test_a_trimmed_job_writes_only_its_part_with_its_sound(trimmed, http, tmp_path):
    assert trimmed["state"] == "done", trimmed["error"]
    assert trimmed["frames_total"] == 30 and trimmed["duration"] == 2.0
    assert trimmed["options"]["start"] == 1 and trimmed["options"]["end"] == 3
    written = _streams(http.get(trimmed["result_url"]).content, tmp_path)
    assert written["frames"] == 30 and written["fps"] == pytest.approx(15) and written["size"] == (240, 240)
    assert written["video_seconds"] == pytest.approx(2.0, abs=0.01)
    assert written["audio_seconds"] == pytest.approx(2.0, abs=0.05)


def test_display_names_are_shown_as_chosen_and_never_a_path(trimmed, service):
    names = trimmed["names"]
    assert names["target"] == "Holiday <b>clip<b> & beach.mp4"  # the last part of the path; the page shows it as text
    assert len(names["sources"][0]) == 120 and names["sources"][0].endswith("….jpg")
    stored = {p.name for folder in (service.data / "uploads").iterdir() for p in folder.iterdir()}
    assert stored <= {"target.mp4", "source-0.jpg", ".owner"}, stored


@pytest.mark.parametrize("given, shown", [("../../etc/passwd", "passwd"), ("a\x00b\x1b[31mc.mp4", "ab[31mc.mp4"),
                                          ("  my   holiday.mov ", "my holiday.mov"), (None, "")])
def test_a_display_name_is_the_last_part_without_control_characters(given, shown):
    assert display_name(given) == shown


def test_the_thumbnail_is_a_small_swapped_frame_made_once(trimmed, http, service, tmp_path):
    answer = http.get(f"/v1/jobs/{trimmed['id']}/thumbnail")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
    thumb = cv2.cvtColor(cv2.imdecode(np.frombuffer(answer.content, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert thumb.shape == (240, 240, 3)  # the result's own size: under the 320 px bound
    path = tmp_path / "result.mp4"
    path.write_bytes(http.get(trimmed["result_url"]).content)
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24").astype(int) for f in container.decode(video=0)]
    nearest = min(range(len(frames)), key=lambda i: np.abs(frames[i] - thumb).mean())
    assert np.abs(frames[nearest] - thumb).mean() < 4 and 10 <= nearest <= 20  # the middle of the result
    made = list((service.data / "results").glob(f"{trimmed['id']}-*.thumb.jpg"))
    assert len(made) == 1 and http.get(f"/v1/jobs/{trimmed['id']}/thumbnail").content == made[0].read_bytes()


def test_a_photo_jobs_thumbnail_fits_320_pixels(http):
    files = [("target", ("group.jpg", GROUP.read_bytes(), "image/jpeg")),
             ("source", ("me.jpg", OBAMA.read_bytes(), "image/jpeg"))]
    job = wait_for(http, http.post("/v1/jobs", files=files).json()["id"], {"done"})
    assert job["duration"] is None and job["names"] == {"target": "group.jpg", "sources": ["me.jpg"]}
    thumb = cv2.imdecode(np.frombuffer(http.get(job["thumbnail_url"]).content, np.uint8), cv2.IMREAD_COLOR)
    height, width = cv2.imread(str(GROUP)).shape[:2]
    assert max(thumb.shape[:2]) == 320 and abs(thumb.shape[1] / thumb.shape[0] - width / height) < 0.02


def test_run_again_queues_the_same_files_and_options_and_outlives_the_original(trimmed, http):
    answer = http.post(f"/v1/jobs/{trimmed['id']}/again")
    assert answer.status_code == 201, answer.text
    again = answer.json()
    assert again["id"] != trimmed["id"] and answer.headers["location"] == f"/v1/jobs/{again['id']}"
    assert again["options"] == trimmed["options"] and again["names"] == trimmed["names"]
    assert again["state"] in ("queued", "running") and again["duration"] == 2.0 and again["frames_total"] == 30
    # the original deleted with its files: the new job has its own (hard links), so it still runs
    original_target = http.get(f"/v1/jobs/{trimmed['id']}/target").content
    assert http.delete(f"/v1/jobs/{trimmed['id']}").status_code == 204
    done = wait_for(http, again["id"], {"done", "failed"})
    assert done["state"] == "done" and done["frames_done"] == 30, done["error"]
    assert http.get(f"/v1/jobs/{again['id']}/target").content == original_target


def test_run_again_and_thumbnail_refusals(http):
    assert http.post("/v1/jobs/" + "0" * 32 + "/again").json()["code"] == "not_found"
    job = _submit(http).json()
    answer = http.get(f"/v1/jobs/{job['id']}/thumbnail")
    if answer.status_code != 200:  # it may have finished meanwhile on a quiet machine
        assert answer.status_code == 409 and answer.json()["code"] == "not_ready"
    http.delete(f"/v1/jobs/{job['id']}")  # cancelled: its files go
    wait_for(http, job["id"], {"cancelled"})
    gone = http.post(f"/v1/jobs/{job['id']}/again")
    assert gone.status_code == 410 and gone.json()["code"] == "gone" and "submit the files again" in gone.json()["detail"]


def test_a_reference_photo_is_checked_named_and_kept_by_run_again(http, service):
    before = {p.name for p in (service.data / "uploads").iterdir()}
    missing = _submit(http, target=GROUP, faces="reference")
    assert missing.status_code == 422 and missing.json()["code"] == "missing_reference", missing.text
    assert {p.name for p in (service.data / "uploads").iterdir()} == before
    files = [("target", (GROUP.name, GROUP.read_bytes(), "image/jpeg")),
             ("source", (OBAMA.name, OBAMA.read_bytes(), "image/jpeg")),
             ("reference", ("her.jpg", GROUP.read_bytes(), "image/jpeg"))]
    job = http.post("/v1/jobs", files=files, data={"faces": "reference"})
    assert job.status_code == 201 and job.json()["names"]["reference"] == "her.jpg", job.text
    again = http.post(f"/v1/jobs/{job.json()['id']}/again").json()
    assert again["names"] == job.json()["names"] and again["options"]["faces"] == "reference"
    for made in (job.json(), again):
        assert wait_for(http, made["id"], {"done", "failed"})["state"] == "done"


@pytest.mark.parametrize("form, message", [
    ({"start": 7.5}, "start 7.5 s is not inside the video, which lasts 7.2 s"),
    ({"start": 4, "end": 2}, "start 4 s must come before end 2 s"),
    ({"end": 9}, "end 9 s is past the end of the video, which lasts 7.2 s"),
])
def test_a_bad_part_is_refused_at_submission_and_nothing_is_kept(http, service, form, message):
    before = {p.name for p in (service.data / "uploads").iterdir()}
    answer = _submit(http, **form)
    assert answer.status_code == 422 and answer.json()["code"] == "bad_option", answer.text
    assert message in answer.json()["detail"]
    assert {p.name for p in (service.data / "uploads").iterdir()} == before


@pytest.mark.parametrize("form", [{"fps": 0}, {"max_height": 8}, {"start": -1}, {"fps": "fast"}])
def test_out_of_bounds_output_options_are_refused(http, form):
    answer = _submit(http, **form)
    assert answer.status_code == 422 and answer.json()["code"] == "bad_option", answer.text
    assert next(iter(form)) in answer.json()["detail"]


def test_video_options_on_a_photo_are_refused(http):
    files = [("target", ("group.jpg", GROUP.read_bytes(), "image/jpeg")),
             ("source", ("me.jpg", OBAMA.read_bytes(), "image/jpeg"))]
    answer = http.post("/v1/jobs", files=files, data={"start": "1", "max_height": "240"})
    assert answer.status_code == 422 and answer.json()["code"] == "bad_option"
    assert "start, max_height only apply to a video" in answer.json()["detail"]


def test_paging_past_50(service, http):
    store = JobStore.in_folder(service.data)  # the service's own SQLite store, written as a submission writes it
    try:
        made = [store.create({"faces": "all"}, {"folder": "uploads/none", "target": "uploads/none/target.mp4",
                                                     "sources": [], "frames": 1, "result_suffix": ".mp4"},
                             names={"target": f"clip-{i}.mp4", "sources": ["me.jpg"]}).id for i in range(55)]
    finally:
        store.close()
    first = http.get("/v1/jobs", params={"limit": 50}).json()
    second = http.get("/v1/jobs", params={"limit": 50, "offset": 50}).json()
    total = first["total"]
    assert total >= 55 and len(first["jobs"]) == 50 and len(second["jobs"]) == min(50, total - 50)
    assert [j["id"] for j in first["jobs"][:50]] == made[::-1][:50]  # newest first
    assert not {j["id"] for j in first["jobs"]} & {j["id"] for j in second["jobs"]}
    assert second["jobs"][0]["names"]["target"] == "clip-4.mp4"
    for job_id in made:
        http.delete(f"/v1/jobs/{job_id}")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'jobs.db'}" if request.param == "sqlite" else \
        request.getfixturevalue("postgres_database_url")
    opened = JobStore(url)
    yield opened
    opened.close()


def test_the_store_keeps_display_names(store):
    names = {"target": "Ferien im Süden.mp4", "sources": ["a.jpg", "b.jpg"], "reference": "them.png"}
    job = store.create({}, {"folder": "f"}, names=names)
    assert store.get(job.id).names == names and store.list()[0][0].names == names
    assert store.create({}, {"folder": "g"}).names == {}


def test_an_older_sqlite_store_gets_the_names_column(tmp_path):
    path = tmp_path / "jobs.db"
    JobStore(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as old:
        old.execute("ALTER TABLE jobs DROP COLUMN names")
        old.execute("INSERT INTO jobs (id, state, created_at, updated_at, options, inputs, max_attempts) "
                    "VALUES ('old', 'done', 0, 0, '{}', '{}', 3)")
    store = JobStore(f"sqlite:///{path}")
    try:
        assert store.get("old").names == {} and store.create({}, {}, names={"target": "t.mp4"}).names
    finally:
        store.close()
