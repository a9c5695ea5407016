"""Worker threads: claim a job from the store, run the swap, record the outcome.

Each worker owns its ``FaceSwapper`` per swapper (its DALI pipelines and gRPC client; built when a job first asks
for that swapper) and runs one job at a time.
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
from typing import Callable

from swapstream.pipelines.decode import VideoDecodeError
from swapstream.services.jobs.disk import DiskSpace, is_disk_full
from swapstream.services.jobs.metrics import ServiceMetrics
from swapstream.services.jobs.store import FINAL, JobStore, worker_id
from swapstream.services.jobs.uploads import hide_paths, remove_folder
from swapstream.services.engine.encoder import EncodeError
from swapstream.services.engine.errors import ErrorCode, SwapInputError
from swapstream.services.engine.offline import SwapOptions, run_swap
from swapstream.services.engine.swapper import FaceSwapper
from swapstream.services.engine.swappers import create_swapper
from swapstream.services.engine.swappers.choice import SwapperChoice, choose_swapper
from swapstream.services.triton.client import SwapstreamClient, TritonCallError

log = logging.getLogger("swapstream.workers")

HEARTBEAT_SECONDS = 1.0
TRITON_WAIT_SECONDS = 120.0
DISK_RETRY_SECONDS = 10.0  # after a job found the disk full, before the next claim
INPUT_ERRORS = (SwapInputError, VideoDecodeError, EncodeError)


class JobCancelled(Exception):
    pass


class JobInterrupted(Exception):
    """The service is draining and the job's time is up: it goes back to the queue for another replica."""


DRAIN_REQUEUE_REASON = ("re-queued: the service replica running it stopped before it finished; another replica "
                        "runs it again (this attempt is not counted)")


def input_code(error: Exception) -> ErrorCode:
    """The code of a job's input error: the engine's own, else by the kind of file that failed."""
    if isinstance(error, SwapInputError):
        return error.code
    return ErrorCode.NOT_A_VIDEO if isinstance(error, VideoDecodeError) else ErrorCode.ENCODE_FAILED


def job_options(base: SwapOptions, options: dict, data_dir: Path, inputs: dict) -> SwapOptions:
    """The job's swap options (its ``swapper`` is chosen apart: ``Worker.face_swapper``)."""
    reference = inputs.get("reference")
    return replace(base, **{k: v for k, v in options.items() if k != "swapper"},
                   reference=data_dir / reference if reference else None)


class Worker(threading.Thread):
    def __init__(self, index: int, store: JobStore, data_dir: Path, triton_url: str, base_options: SwapOptions,
                 metrics: ServiceMetrics, wake: threading.Event, stop: threading.Event, disk: DiskSpace,
                 triton_timeout: float | None = None, draining: threading.Event | None = None,
                 interrupt: threading.Event | None = None,
                 choose: Callable[[str | None], SwapperChoice] | None = None):
        super().__init__(name=f"swapstream-worker-{index}", daemon=True)
        self.id = worker_id(index)
        self.store = store
        self.data_dir = data_dir
        self.client = SwapstreamClient(triton_url, timeout=triton_timeout)
        self.choose = choose or (lambda asked: choose_swapper(asked, ()))  # asked -> the swapper and why
        self.swappers: dict[str, FaceSwapper] = {}
        self.base_options = base_options
        self.metrics = metrics
        self.wake = wake
        self.stop_event = stop
        self.draining = draining or threading.Event()    # set: claim nothing more
        self.interrupt = interrupt or threading.Event()  # set: the running job goes back to the queue now
        self.disk = disk
        self.busy = False
        self.current: _Progress | None = None

    def face_swapper(self, name: str) -> FaceSwapper:
        if name not in self.swappers:
            self.swappers[name] = FaceSwapper(self.client, create_swapper(name, self.client), self.base_options.device)
        return self.swappers[name]

    def _heartbeat(self) -> None:
        """Every HEARTBEAT_SECONDS while a job runs, whether or not a batch finished: the first batch of a job can
        take longer than --stale-after on a loaded machine, and another replica must not take a live job over."""
        while not self.stop_event.wait(HEARTBEAT_SECONDS):
            progress = self.current
            if progress is not None:
                progress.beat()

    def run(self) -> None:
        threading.Thread(target=self._heartbeat, name=f"{self.name}-heartbeat", daemon=True).start()
        while not self.stop_event.is_set() and not self.draining.is_set():
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
                self.current = None
                self.busy = False

    def _run_job(self, job) -> None:
        started = time.monotonic()
        inputs = job.inputs
        # One name per attempt: a worker that lost its job never touches the result of the one that took it over.
        output = self.data_dir / "results" / f"{job.id}-{job.attempts}{inputs['result_suffix']}"
        progress = self.current = _Progress(self, job)
        try:
            choice = self.choose(job.options.get("swapper"))
            summary = run_swap(self.face_swapper(choice.name), [self.data_dir / s for s in inputs["sources"]],
                               self.data_dir / inputs["target"], output,
                               job_options(self.base_options, job.options, self.data_dir, inputs),
                               progress=progress, stage_observer=self._observe_stage)
        except JobInterrupted:
            output.unlink(missing_ok=True)
            self._postpone(job, DRAIN_REQUEUE_REASON, ErrorCode.SERVICE_RESTARTING)
            return
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
        stats = {"swapper": choice.name, "stage_seconds": summary.stage_seconds,
                 "notes": [choice.reason] + summary.notes, "frames_without_face": summary.frames_without_face}
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
        self._postpone(job, "waiting: the server's disk was full; the job runs again when space is free",
                       ErrorCode.DISK_FULL)
        self.stop_event.wait(DISK_RETRY_SECONDS)

    def _postpone(self, job, reason: str, code: ErrorCode) -> None:
        """Back to the queue without spending an attempt: the machine failed, not the job."""
        for _ in range(30):  # the store itself may need a moment (free space, a reconnect) to write it
            try:
                state = self.store.postpone(job.id, self.id, reason, code)
                break
            except Exception:  # noqa: BLE001
                self.stop_event.wait(1.0)
        else:
            return  # left running: the stale-job recovery re-queues it
        if state == "cancelled":
            self.metrics.jobs_finished.labels("cancelled").inc()
            remove_folder(self.data_dir / job.inputs["folder"])

    def _record_failure(self, job, error: BaseException) -> None:
        if isinstance(error, TritonCallError):
            self.metrics.triton_errors.labels(error.model).inc()
            state = self.store.fail(job.id, self.id, f"{error} (attempt {job.attempts} of {job.max_attempts})",
                                    retry=True, code=ErrorCode.INFERENCE_UNAVAILABLE)
        elif isinstance(error, INPUT_ERRORS):
            state = self.store.fail(job.id, self.id, hide_paths(str(error), self.data_dir), code=input_code(error))
        else:
            log.error("job %s failed", job.id, exc_info=error)
            state = self.store.fail(job.id, self.id, f"internal error: {error!r}; see the service log",
                                    code=ErrorCode.INTERNAL_ERROR)
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
    """The ``progress`` callback: counts frames; stops the job when it was cancelled or taken over (``beat`` found
    out) or when the service is draining and the job's time is up."""

    def __init__(self, worker: Worker, job):
        self.worker = worker
        self.job = job
        self.frames = 0
        self.faces = 0
        self.total = job.inputs.get("frames")
        self.lost = threading.Event()

    def beat(self) -> None:
        """Writes the heartbeat with the progress so far (the worker's heartbeat thread calls it)."""
        try:
            if not self.worker.store.heartbeat(self.job.id, self.worker.id, self.frames, self.total, self.faces):
                self.lost.set()
        except Exception:  # noqa: BLE001 - a store outage: the next beat tries again
            log.warning("job %s: heartbeat not written", self.job.id, exc_info=True)

    def __call__(self, frames: int, summary) -> None:
        if self.worker.interrupt.is_set():
            raise JobInterrupted
        if self.lost.is_set():
            raise JobCancelled
        self.frames += frames
        self.worker.metrics.frames.inc(frames)
        self.worker.metrics.faces.inc(summary.faces_swapped - self.faces)
        self.faces = summary.faces_swapped


class WorkerPool:
    def __init__(self, count: int, store: JobStore, data_dir: Path, triton_url: str, base_options: SwapOptions,
                 metrics: ServiceMetrics, disk: DiskSpace, triton_timeout: float | None = None,
                 choose: Callable[[str | None], SwapperChoice] | None = None):
        self.wake = threading.Event()
        self.stop_event = threading.Event()
        self.draining = threading.Event()
        self.interrupt = threading.Event()
        self.workers = [Worker(i, store, data_dir, triton_url, base_options, metrics, self.wake, self.stop_event,
                               disk, triton_timeout, self.draining, self.interrupt, choose) for i in range(count)]

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

    def drain(self, timeout: float, poll: float = 0.2) -> int:
        """Claims nothing more; the running jobs get ``timeout`` seconds to finish, then go back to the queue
        (without spending an attempt) at their next batch. Returns how many were re-queued that way."""
        self.draining.set()
        self.wake.set()
        deadline = time.monotonic() + timeout
        while self.busy() and time.monotonic() < deadline:
            time.sleep(poll)
        interrupted = self.busy()
        if interrupted:
            self.interrupt.set()
            while self.busy() and time.monotonic() < deadline + 30:  # one batch, normally
                time.sleep(poll)
        return interrupted

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        self.wake.set()
        for worker in self.workers:
            worker.join(timeout)
