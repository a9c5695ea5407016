"""SIGTERM with --drain-timeout: the replica drains (readiness 503 at once, no new job claimed, the running job given
its time, then back to the queue without spending an attempt) and exits cleanly; the job then finishes elsewhere."""
from __future__ import annotations

import signal
import time

from swapstream.benchmarks.media import cut
from swapstream.services.jobs.process import ServiceProcess, wait_for
from tests.helpers.media import MEDIA
from tests.helpers.service import submit

# Long enough that the running job outlasts the 1 s drain (64 frames were done within it in 1 run of 6: the
# engine got faster).
FRAMES = 160


def test_a_draining_replica_requeues_its_job_without_spending_an_attempt(tmp_path, triton):
    clip = cut(MEDIA / "vid03_square_480_expressions.mp4", tmp_path / "clip.mp4", FRAMES)
    data = tmp_path / "data"
    leaving = ServiceProcess(data, "--triton", triton.grpc_url, "--workers", "1", "--drain-timeout", "1").start()
    with leaving.client() as http:
        job_id = submit(http, clip, batch_size=8).json()["id"]
        queued_after = submit(http, clip, batch_size=8).json()["id"]
        wait_for(http, job_id, {"running"}, frames_done=lambda n: n > 0)
        leaving.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while (readiness := http.get("/readyz")).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert readiness.status_code == 503 and readiness.json()["draining"] is True, readiness.text
        assert leaving.process.wait(60) == 0, leaving.log()[-2000:]
    # Another replica (same data folder and store) picks the job up where the queue has it.
    with ServiceProcess(data, "--triton", triton.grpc_url, "--workers", "1") as staying, staying.client() as http:
        requeued = http.get(f"/v1/jobs/{job_id}").json()
        assert "stopped before it finished" in requeued["error"], requeued
        for job in (job_id, queued_after):
            done = wait_for(http, job, {"done", "failed"})
            assert done["state"] == "done" and done["attempts"] == 1 and done["frames_done"] == FRAMES, done
        assert "draining" in http.get("/readyz").json() and http.get("/readyz").json()["draining"] is False

