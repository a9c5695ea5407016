"""A job's error carries a machine-readable ``error_code`` beside its ``error``: in the store (also an older store,
opened after the column was added), and through a real ``swapstream serve`` whose worker fails a job."""
from __future__ import annotations

import sqlite3

from swapstream.benchmarks.media import cut
from swapstream.services.engine.errors import ErrorCode
from swapstream.services.jobs.process import ServiceProcess, wait_for
from swapstream.services.jobs.store import JobStore, worker_id
from tests.helpers.media import MEDIA
from tests.helpers.service import submit

PROFILE = MEDIA / "img05_profile_left.jpeg"  # the detector finds its face; the mesh swapper refuses it (profile)


def test_fail_keeps_the_code_and_an_older_store_gets_the_column(tmp_path):
    path = tmp_path / "jobs.db"
    old = sqlite3.connect(path)  # a store made before error_code existed
    old.execute("CREATE TABLE jobs (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, state TEXT NOT NULL, "
                "created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL, started_at DOUBLE "
                "PRECISION, finished_at DOUBLE PRECISION, options TEXT NOT NULL, inputs TEXT NOT NULL, attempts "
                "INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL, worker TEXT, heartbeat_at DOUBLE "
                "PRECISION, frames_done INTEGER NOT NULL DEFAULT 0, frames_total INTEGER, faces_swapped INTEGER NOT "
                "NULL DEFAULT 0, fps DOUBLE PRECISION, result TEXT, error TEXT, cancel_requested BOOLEAN NOT NULL "
                "DEFAULT FALSE, stats TEXT NOT NULL DEFAULT '{}')")
    old.execute("INSERT INTO jobs (id, state, created_at, updated_at, options, inputs, max_attempts) "
                "VALUES ('before', 'queued', 1, 1, '{}', '{}', 3)")
    old.commit()
    old.close()
    store = JobStore(f"sqlite:///{path}")
    try:
        assert store.get("before").error_code is None
        worker = worker_id(0)
        assert store.claim(worker).id == "before"
        assert store.fail("before", worker, "no face", code=ErrorCode.NO_FACE_IN_SOURCE) == "failed"
        failed = store.get("before")
        assert (failed.error, failed.error_code) == ("no face", "no_face_in_source")
        assert failed.to_dict()["error_code"] == "no_face_in_source"
        retried = store.create({}, {}, max_attempts=2)
        store.claim(worker)
        assert store.fail(retried.id, worker, "Triton down", retry=True, code=ErrorCode.INFERENCE_UNAVAILABLE) == "queued"
        assert store.get(retried.id).error_code == "inference_unavailable"
        store.claim(worker)
        assert store.postpone(retried.id, worker, "disk full", ErrorCode.DISK_FULL) == "queued"
        assert store.get(retried.id).error_code == "disk_full"
    finally:
        store.close()
    JobStore(f"sqlite:///{path}").close()  # opened again: the column is there, nothing added twice


def test_a_job_whose_worker_went_silent_says_so(tmp_path):
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    try:
        job = store.create({}, {}, max_attempts=1)
        store.claim("elsewhere:1:token:0")  # another host's worker, silent from now on
        (released,) = store.recover(lambda worker: False, stale_after=0.0)
        assert (released.id, released.state, released.error_code) == (job.id, "failed", "worker_lost"), released
    finally:
        store.close()


def test_a_job_the_worker_fails_answers_its_code(tmp_path, triton):
    clip = cut(MEDIA / "vid03_square_480_expressions.mp4", tmp_path / "clip.mp4", 8)
    with ServiceProcess(tmp_path / "data", "--triton", triton.grpc_url, "--workers", "1") as service, \
            service.client() as http:
        answer = submit(http, clip, sources=(PROFILE,), swapper="mesh")
        assert answer.status_code == 201, answer.text  # the submission's check finds a face
        assert answer.json()["error_code"] is None
        job = wait_for(http, answer.json()["id"], {"done", "failed"})
        assert job["state"] == "failed", job
        assert job["error_code"] == "no_face_in_source" and "no usable face" in job["error"], job["error"]
        listed = http.get("/v1/jobs").json()["jobs"][0]
        assert listed["error_code"] == "no_face_in_source"
