"""The service survives what kills jobs: its own process killed with SIGKILL mid-job, tritonserver killed
mid-job; and two service processes share one PostgreSQL queue."""
from __future__ import annotations

import os
import signal
import subprocess

import httpx
import pytest

from swapstream.benchmarks.media import cut
from swapstream.services.jobs.process import ServiceProcess, wait_for
from swapstream.services.engine.encoder import probe
from tests.helpers.disk import small_tmpfs
from tests.helpers.media import MEDIA
from tests.helpers.postgres_server import postgres_database_url, postgres_url  # noqa: F401 - fixtures
from tests.helpers.service import metric_values, submit

LONG_FRAMES = 96
SHORT_FRAMES = 16


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    source = MEDIA / "vid03_square_480_expressions.mp4"
    return cut(source, folder / "long.mp4", LONG_FRAMES), cut(source, folder / "short.mp4", SHORT_FRAMES)


def _kill_when_running(service: ServiceProcess, http: httpx.Client, job_id: str) -> None:
    wait_for(http, job_id, {"running"}, frames_done=lambda n: n > 0)
    service.kill()


def test_service_killed_mid_job_finishes_it_after_restart(tmp_path, triton, clips):
    long_clip, short_clip = clips
    data = tmp_path / "data"
    first = ServiceProcess(data, "--triton", triton.grpc_url, "--workers", "1").start()
    with first.client() as http:
        interrupted = submit(http, long_clip, batch_size=8).json()["id"]
        waiting = submit(http, short_clip).json()["id"]
        _kill_when_running(first, http, interrupted)
    assert not list((data / "results").glob(f"{interrupted}*")), "a partial result was published"

    with ServiceProcess(data, "--triton", triton.grpc_url, "--workers", "1") as second, second.client() as http:
        for job_id, frames in ((interrupted, LONG_FRAMES), (waiting, SHORT_FRAMES)):
            job = wait_for(http, job_id, {"done", "failed"})
            assert job["state"] == "done", job
            result = tmp_path / f"{job_id}.mp4"
            result.write_bytes(http.get(job["result_url"]).content)
            assert probe(result)["frames"] == frames
        assert http.get(f"/v1/jobs/{interrupted}").json()["attempts"] == 2
        assert http.get(f"/v1/jobs/{waiting}").json()["attempts"] == 1
        assert not list((data / "results").glob(".*partial*"))


def test_job_fails_with_the_reason_after_its_last_attempt(tmp_path, triton, clips):
    data = tmp_path / "data"
    args = ("--triton", triton.grpc_url, "--workers", "1", "--max-attempts", "1")
    first = ServiceProcess(data, *args).start()
    with first.client() as http:
        job_id = submit(http, clips[0], batch_size=8).json()["id"]
        _kill_when_running(first, http, job_id)
    with ServiceProcess(data, *args) as second, second.client() as http:
        job = http.get(f"/v1/jobs/{job_id}").json()
        assert job["state"] == "failed" and job["attempts"] == 1
        assert "stopped" in job["error"] and "1 attempt" in job["error"], job["error"]
        assert http.get(f"/v1/jobs/{job_id}/result").status_code == 409


def _tritonserver_of(service: ServiceProcess) -> int:
    reapers = subprocess.run(["pgrep", "-P", str(service.process.pid)], capture_output=True, text=True).stdout.split()
    pids = subprocess.run(["pgrep", "-P", ",".join(reapers), "tritonserver"], capture_output=True,
                          text=True).stdout.split()  # tritonserver runs under its reaper
    assert len(pids) == 1, pids
    return int(pids[0])


def test_triton_killed_mid_job_is_restarted_and_the_job_retried(tmp_path, clips):
    with ServiceProcess(tmp_path / "data", "--workers", "1") as service, service.client() as http:
        job_id = submit(http, clips[0], batch_size=8).json()["id"]
        wait_for(http, job_id, {"running"}, frames_done=lambda n: n > 0)
        os.kill(_tritonserver_of(service), signal.SIGKILL)
        job = wait_for(http, job_id, {"done", "failed"}, timeout=300)
        assert http.get("/healthz").status_code == 200
        assert job["state"] == "done" and job["attempts"] == 2, job
        assert "Triton model" in job["error"]  # the last attempt's failure stays on record
        errors = metric_values(http)
        assert sum(v for k, v in errors.items() if k.startswith("swapstream_triton_errors_total{")) >= 1
        assert http.get("/readyz").json()["triton"] is True


def test_two_services_share_a_postgresql_queue(tmp_path, triton, clips, postgres_database_url):  # noqa: F811
    """Two machines in miniature: one PostgreSQL store and one data folder (a shared volume), two services."""
    args = ("--triton", triton.grpc_url, "--workers", "1", "--store", postgres_database_url)
    data = tmp_path / "shared"
    with ServiceProcess(data, *args) as a, ServiceProcess(data, *args) as b, a.client() as http_a, \
            b.client() as http_b:
        ids = [submit(http_a, clips[1]).json()["id"] for _ in range(4)]
        assert http_b.get("/v1/jobs", params={"limit": 10}).json()["total"] == 4
        states = [wait_for(http_b, job_id, {"done", "failed"})["state"] for job_id in ids]
        assert states == ["done"] * 4
        done = [metric_values(client)['swapstream_jobs_finished_total{state="done"}'] for client in (http_a, http_b)]
        assert sum(done) == 4 and min(done) >= 1, done  # each service's worker claimed some of the jobs


@pytest.fixture
def small_disk(tmp_path):
    """A 600 KB filesystem (tmpfs): the data folder of a service whose disk fills up."""
    with small_tmpfs(tmp_path, "600k") as mount_point:
        yield mount_point


def test_full_disk_refuses_the_upload_and_keeps_serving(small_disk, triton, clips):
    big = MEDIA / "vid01_talking_head_1280x720_audio.mp4"  # 649 KB: more than the disk holds
    with ServiceProcess(small_disk / "data", "--triton", triton.grpc_url, "--workers", "1", "--min-free-mb", "0") \
            as service, \
            service.client() as http:
        refused = submit(http, big, sources=(MEDIA / "img03_single_frontal_rose_leslie.jpg",))
        assert refused.status_code == 507, refused.text
        assert "disk is full" in refused.json()["detail"]
        assert list((small_disk / "data" / "uploads").iterdir()) == []
        job = submit(http, clips[1], sources=(MEDIA / "img03_single_frontal_rose_leslie.jpg",)).json()
        assert wait_for(http, job["id"], {"done", "failed"})["state"] == "done"
