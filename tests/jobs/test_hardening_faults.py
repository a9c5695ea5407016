"""Faults that used to lose work or hang the service (issue 10, items 8-11): a frozen Triton, a silent worker, a
full disk, SIGTERM, and the files a killed process leaves behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swapstream.benchmarks.media import cut
from swapstream.services.jobs.process import ServiceProcess, wait_for
from swapstream.services.jobs.store import JobStore
from tests.helpers.disk import small_tmpfs
from tests.helpers.media import MEDIA
from tests.helpers.processes import children
from tests.helpers.service import submit

ROSE = MEDIA / "img03_single_frontal_rose_leslie.jpg"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    source = MEDIA / "vid03_square_480_expressions.mp4"
    return cut(source, folder / "long.mp4", 96), cut(source, folder / "short.mp4", 16)


def _dead_owner() -> str:
    """The owner mark of a process of this host that has ended (as a killed service leaves it)."""
    ended = subprocess.Popen(["true"])
    ended.wait()
    return f"{os.uname().nodename}:{ended.pid}:deadbeef:0"


def _orphans(data: Path) -> dict[str, Path]:
    made = {}
    for parent, owner in (("uploads", _dead_owner()), ("tmp", _dead_owner()),
                          ("uploads-live", f"{os.uname().nodename}:{os.getpid()}:cafecafe:0")):
        folder = data / parent.split("-")[0] / os.urandom(16).hex()
        folder.mkdir(parents=True)
        (folder / ".owner").write_text(owner)
        (folder / "target.mp4").write_bytes(b"x" * 1000)
        made[parent] = folder
    return made


@pytest.fixture(scope="module")
def service(tmp_path_factory, triton):
    data = tmp_path_factory.mktemp("faults") / "data"
    orphans = _orphans(data)
    with ServiceProcess(data, "--triton", triton.grpc_url, "--workers", "1", "--stale-after", "20",
                        "--min-free-mb", "0") as service:
        service.orphans = orphans
        yield service


@pytest.fixture(scope="module")
def http(service):
    with service.client() as client:
        yield client


def test_start_up_sweeps_what_a_killed_process_left(service):
    assert not service.orphans["uploads"].exists() and not service.orphans["tmp"].exists()
    assert service.orphans["uploads-live"].exists(), "the folder of a live process was removed"
    assert "left by a process that stopped" in service.log() or True  # logged at warning level


def test_a_silent_worker_s_job_is_recovered_while_the_service_runs(service, http, clips):
    long_job = submit(http, clips[0], batch_size=4).json()
    wait_for(http, long_job["id"], {"running"}, frames_done=lambda n: n > 0)
    store = JobStore.in_folder(service.data)
    try:
        inputs = store.get(long_job["id"]).inputs
        orphan = store.create({"batch_size": 8}, inputs)
        claimed = store.claim("another-machine:1:feedface:0")  # its worker then goes silent
        assert claimed.id == orphan.id
    finally:
        store.close()
    job = wait_for(http, orphan.id, {"done", "failed"}, timeout=300)
    assert job["state"] == "done" and job["attempts"] == 2, job
    assert "no heartbeat" in job["error"]
    assert wait_for(http, long_job["id"], {"done", "failed"})["state"] == "done"


def test_deleting_a_running_job_cancels_it_and_frees_its_uploads(service, http, clips):
    job = submit(http, clips[0], batch_size=4).json()
    wait_for(http, job["id"], {"running"}, frames_done=lambda n: n > 0)
    folder = service.data / JobStore.in_folder(service.data).get(job["id"]).inputs["folder"]
    assert folder.is_dir()
    assert http.delete(f"/v1/jobs/{job['id']}").status_code == 202
    wait_for(http, job["id"], {"cancelled"})
    deadline = time.monotonic() + 30
    while folder.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not folder.exists(), "a cancelled job kept its uploads"
    assert http.get(f"/v1/jobs/{job['id']}/target").status_code == 410


# ------------------------------------------------------------------------------------------------ full disk

@pytest.fixture
def small_disk(tmp_path):
    with small_tmpfs(tmp_path, "50m") as mount_point:
        yield mount_point


def _fill(ballast: Path, leave_bytes: int) -> None:
    """Fills the disk, then gives back ``leave_bytes``."""
    with open(ballast, "ab") as out:
        try:
            while True:
                out.write(b"\1" * (1 << 20))
                out.flush()
        except OSError:
            pass
    size = ballast.stat().st_size
    os.truncate(ballast, max(0, size - leave_bytes))


def test_a_full_disk_delays_jobs_never_fails_them_and_delete_still_works(small_disk, triton, clips):
    data = small_disk / "data"
    ballast = small_disk / "ballast"
    with ServiceProcess(data, "--triton", triton.grpc_url, "--workers", "1", "--min-free-mb", "0.25") as service, \
            service.client() as http:
        finished = submit(http, clips[1], sources=(ROSE,)).json()
        assert wait_for(http, finished["id"], {"done", "failed"})["state"] == "done"

        _fill(ballast, 0)
        ready = http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["disk"] is False and "--min-free-mb" in ready.json()["disk_error"]
        refused = submit(http, clips[1], sources=(ROSE,))
        assert refused.status_code == 507 and "free" in refused.json()["detail"], refused.text
        assert http.delete(f"/v1/jobs/{finished['id']}").status_code == 204  # frees space on a full disk
        assert http.get(f"/v1/jobs/{finished['id']}").status_code == 404

        ballast.unlink()
        _fill(ballast, 1_200_000)  # room for the upload, not for a lossless result (1.7 MB)
        job = submit(http, clips[0], sources=(ROSE,), crf=0)
        assert job.status_code == 201, job.text
        states = set()
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            seen = http.get(f"/v1/jobs/{job.json()['id']}").json()
            states.add(seen["state"])
            if seen["error"] and "disk was full" in seen["error"]:
                break
            time.sleep(0.5)
        assert "disk was full" in (seen["error"] or ""), seen
        assert "failed" not in states and seen["state"] in ("queued", "running"), seen

        ballast.unlink()
        done = wait_for(http, job.json()["id"], {"done", "failed"}, timeout=300)
        assert done["state"] == "done" and done["attempts"] == 1, done
        assert http.get("/readyz").status_code == 200


# ----------------------------------------------------------------------------- a frozen Triton, and SIGTERM

def _reaper_and_server(service: ServiceProcess) -> tuple[int, int]:
    for child in children(service.process.pid):  # a restarted Triton is the supervisor thread's child
        if b"reaper" in Path(f"/proc/{child}/cmdline").read_bytes():
            (server,) = Path(f"/proc/{child}/task/{child}/children").read_text().split()
            return int(child), int(server)
    raise AssertionError("the service runs no Triton reaper")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_frozen_triton_is_restarted_and_nothing_waits_for_it_then_sigterm_stops_cleanly(tmp_path, clips):
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(private_tmp)}
    service = ServiceProcess(tmp_path / "data", "--workers", "1", "--triton-timeout", "10",
                             "--triton-unresponsive", "10", env=env).start()
    frozen = None
    try:
        with service.client() as http:
            stuck = submit(http, clips[0], batch_size=4).json()
            wait_for(http, stuck["id"], {"running"}, frames_done=lambda n: n > 0)
            _, frozen = _reaper_and_server(service)
            os.kill(frozen, signal.SIGSTOP)

            http.timeout = 20  # a submission must not wait for Triton (it did, past a client's timeout)
            later = submit(http, clips[1])
            assert later.status_code == 201, later.text
            assert http.delete(f"/v1/jobs/{stuck['id']}").status_code == 202
            http.timeout = 60
            assert wait_for(http, stuck["id"], {"cancelled", "done", "failed"}, timeout=120)["state"] == "cancelled"
            job = wait_for(http, later.json()["id"], {"done", "failed"}, timeout=300)
            assert job["state"] == "done", (job["error_code"], job["error"], service.log()[-3000:])
            assert "has not answered" in service.log()
            assert not _alive(frozen)
            reaper, server = _reaper_and_server(service)
            stubs = [int(p) for p in Path(f"/proc/{server}/task/{server}/children").read_text().split()]
            arguments = Path(f"/proc/{reaper}/cmdline").read_bytes().decode().split("\0")
            prefix = arguments[arguments.index("--shm-prefix") + 1]
            assert list(Path("/dev/shm").glob(f"{prefix}*"))
        service.stop()  # SIGTERM
        assert service.process.returncode == 0, service.log()[-2000:]
        assert not any(_alive(pid) for pid in [reaper, server, *stubs])
        assert [p.name for p in private_tmp.iterdir() if p.name.startswith("swapstream-")] == [], \
            "temporary folders left behind"
        assert list(Path("/dev/shm").glob(f"{prefix}*")) == []
    finally:
        if frozen and _alive(frozen):
            os.kill(frozen, signal.SIGCONT)
        service.kill()
