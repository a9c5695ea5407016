"""Worker threads: claim a job from the store, run the swap, record the outcome.

Each worker owns its ``FaceSwapper`` (its DALI pipelines and gRPC client) and runs one job at a time.
The result file is written under a temporary name and renamed when complete (``swapstream.services.engine.encoder``),
and the store points at it only once the job is done, so a killed worker never leaves a partial
result that could be served.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from pathlib import Path

from swapstream.pipelines.decode import VideoDecodeError
from swapstream.services.jobs.disk import DiskSpace, is_disk_full
from swapstream.services.jobs.metrics import ServiceMetrics
from swapstream.services.jobs.store import FINAL, JobStore, worker_id
from swapstream.services.jobs.uploads import hide_paths, remove_folder
from swapstream.services.engine.encoder import EncodeError
from swapstream.services.engine.errors import SwapInputError
from swapstream.services.engine.offline import SwapOptions, run_swap
from swapstream.services.engine.swapper import FaceSwapper
from swapstream.services.engine.swappers import create_swapper
from swapstream.services.triton.client import SwapstreamClient, TritonCallError

log = logging.getLogger("swapstream.workers")

HEARTBEAT_SECONDS = 1.0
TRITON_WAIT_SECONDS = 120.0
DISK_RETRY_SECONDS = 10.0  # after a job found the disk full, before the next claim
INPUT_ERRORS = (SwapInputError, VideoDecodeError, EncodeError)


class JobCancelled(Exception):
    pass


def job_options(base: SwapOptions, options: dict, data_dir: Path, inputs: dict) -> SwapOptions:
    reference = inputs.get("reference")
    return replace(base, **options, reference=data_dir / reference if reference else None)


class Worker(threading.Thread):
    def __init__(self, index: int, store: JobStore, data_dir: Path, triton_url: str, base_options: SwapOptions,
                 metrics: ServiceMetrics, wake: threading.Event, stop: threading.Event, disk: DiskSpace,
                 triton_timeout: float | None = None):
        super().__init__(name=f"swapstream-worker-{index}", daemon=True)
        self.id = worker_id(index)
        self.store = store
        self.data_dir = data_dir
        self.client = SwapstreamClient(triton_url, timeout=triton_timeout)
        self.swapper = FaceSwapper(self.client, create_swapper("simswap", self.client), base_options.device)
        self.base_options = base_options
        self.metrics = metrics
        self.wake = wake
        self.stop_event = stop
        self.disk = disk
        self.busy = False

    def run(self) -> None:
        while not self.stop_event.is_set():
            if self.disk.low():  # a job started now would fail for want of space: wait for it
                self.stop_event.wait(DISK_RETRY_SECONDS)
                continue
            try:
                job = self.store.claim(self.id)
            except Exception:  # noqa: BLE001 - a store outage must not end the worker
                log.exception("could not claim a job; retrying")
                self.stop_event.wait(2.0)
                continue
            if job is None:
                self.wake.wait(0.5)
                self.wake.clear()
                continue
            self.busy = True
            try:
                self._run_job(job)
            finally:
                self.busy = False

    def _run_job(self, job) -> None:
        started = time.monotonic()
        inputs = job.inputs
        # One name per attempt: a worker that lost its job never touches the result of the one that took it over.
        output = self.data_dir / "results" / f"{job.id}-{job.attempts}{inputs['result_suffix']}"
        progress = _Progress(self, job)
        try:
            summary = run_swap(self.swapper, [self.data_dir / s for s in inputs["sources"]],
                               self.data_dir / inputs["target"], output,
                               job_options(self.base_options, job.options, self.data_dir, inputs),
                               progress=progress, stage_observer=self._observe_stage)
        except JobCancelled:
            output.unlink(missing_ok=True)
            if self.store.mark_cancelled(job.id, self.id):  # else taken over elsewhere: its files are in use
                self.metrics.jobs_finished.labels("cancelled").inc()
                remove_folder(self.data_dir / inputs["folder"])  # a cancelled job keeps nothing
            return
        except Exception as error:  # noqa: BLE001 - sorted below: the machine's fault or the job's
            output.unlink(missing_ok=True)
            if is_disk_full(error):
                self._postpone_for_disk(job, error)
                return
            self._record_failure(job, error)
            return
        stats = {"stage_seconds": summary.stage_seconds, "notes": summary.notes,
                 "frames_without_face": summary.frames_without_face}
        relative = str(output.relative_to(self.data_dir))
        try:
            completed = self.store.complete(job.id, self.id, relative, frames=summary.frames,
                                            faces_swapped=summary.faces_swapped, fps=summary.fps, stats=stats)
        except Exception as error:  # noqa: BLE001 - e.g. SQLite on a full disk
            output.unlink(missing_ok=True)
            if is_disk_full(error):
                self._postpone_for_disk(job, error)
                return
            raise
        if completed:
            self.metrics.job_fps.observe(summary.fps)
            self.metrics.job_seconds.observe(time.monotonic() - started)
            self.metrics.jobs_finished.labels("done").inc()
        else:  # re-queued after a stale heartbeat and claimed elsewhere: the result is not this worker's to publish
            output.unlink(missing_ok=True)

    def _postpone_for_disk(self, job, error: BaseException) -> None:
        """A full disk is the machine's fault: the job waits in the queue, its attempt not counted."""
        log.warning("job %s: the disk is full (%s); re-queued until space is free", job.id, error)
        reason = "waiting: the server's disk was full; the job runs again when space is free"
        for _ in range(30):  # the store itself may need a moment of free space to write it
            try:
                state = self.store.postpone(job.id, self.id, reason)
                break
            except Exception:  # noqa: BLE001
                self.stop_event.wait(1.0)
        else:
            return  # left running: the stale-job recovery re-queues it
        if state == "cancelled":
            self.metrics.jobs_finished.labels("cancelled").inc()
            remove_folder(self.data_dir / job.inputs["folder"])
        self.stop_event.wait(DISK_RETRY_SECONDS)

    def _record_failure(self, job, error: BaseException) -> None:
        if isinstance(error, TritonCallError):
            self.metrics.triton_errors.labels(error.model).inc()
            state = self.store.fail(job.id, self.id, f"{error} (attempt {job.attempts} of {job.max_attempts})",
                                    retry=True)
        elif isinstance(error, INPUT_ERRORS):
            state = self.store.fail(job.id, self.id, hide_paths(str(error), self.data_dir))
        else:
            log.error("job %s failed", job.id, exc_info=error)
            state = self.store.fail(job.id, self.id, f"internal error: {error!r}; see the service log")
        self._count_if_final(state)
        if state == "cancelled":  # a cancel was requested while it failed
            remove_folder(self.data_dir / job.inputs["folder"])
        if isinstance(error, TritonCallError):
            self._wait_for_triton()

    def _observe_stage(self, stage: str, seconds: float) -> None:
        self.metrics.stage_seconds.labels(stage).observe(seconds)

    def _count_if_final(self, state: str) -> None:
        if state in FINAL:  # "cancelled" too, when a cancel was requested while the job failed
            self.metrics.jobs_finished.labels(state).inc()

    def _wait_for_triton(self) -> None:
        """After a Triton failure, claim nothing until it answers again (e.g. restarted by the supervisor)."""
        deadline = time.monotonic() + TRITON_WAIT_SECONDS
        while time.monotonic() < deadline and not self.stop_event.is_set():
            if self.client.is_ready():
                return
            self.stop_event.wait(1.0)


class _Progress:
    """The ``progress`` callback: counts frames, heartbeats the store, stops the job when it was cancelled."""

    def __init__(self, worker: Worker, job):
        self.worker = worker
        self.job = job
        self.frames = 0
        self.faces = 0
        self.last_beat = 0.0
        self.total = job.inputs.get("frames")

    def __call__(self, frames: int, summary) -> None:
        self.frames += frames
        self.worker.metrics.frames.inc(frames)
        self.worker.metrics.faces.inc(summary.faces_swapped - self.faces)
        self.faces = summary.faces_swapped
        now = time.monotonic()
        if now - self.last_beat >= HEARTBEAT_SECONDS:
            self.last_beat = now
            if not self.worker.store.heartbeat(self.job.id, self.worker.id, self.frames, self.total,
                                               summary.faces_swapped):
                raise JobCancelled


class WorkerPool:
    def __init__(self, count: int, store: JobStore, data_dir: Path, triton_url: str, base_options: SwapOptions,
                 metrics: ServiceMetrics, disk: DiskSpace, triton_timeout: float | None = None):
        self.wake = threading.Event()
        self.stop_event = threading.Event()
        self.workers = [Worker(i, store, data_dir, triton_url, base_options, metrics, self.wake, self.stop_event,
                               disk, triton_timeout) for i in range(count)]

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def notify(self) -> None:
        """A job was queued: wake an idle worker now rather than at its next poll."""
        self.wake.set()

    def alive(self) -> bool:
        return all(worker.is_alive() for worker in self.workers)

    def busy(self) -> int:
        return sum(worker.busy for worker in self.workers)

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        self.wake.set()
        for worker in self.workers:
            worker.join(timeout)
