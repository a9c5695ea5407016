"""Worker threads: claim a job from the store, run the swap, record the outcome.

Each worker owns its ``FaceSwapper`` (its DALI pipelines and gRPC client) and runs one job at a time.
The result file is written under a temporary name and renamed when complete (``swapstream.services.swap.encoder``),
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
from swapstream.services.swap.encoder import EncodeError
from swapstream.services.jobs.store import FINAL, JobStore, worker_id
from swapstream.services.jobs.metrics import ServiceMetrics
from swapstream.services.swap.job import FaceSwapper, SwapInputError, SwapOptions, run_swap
from swapstream.services.triton.client import SwapstreamClient, TritonCallError

log = logging.getLogger("swapstream.workers")

HEARTBEAT_SECONDS = 1.0
TRITON_WAIT_SECONDS = 120.0
INPUT_ERRORS = (SwapInputError, VideoDecodeError, EncodeError)


class JobCancelled(Exception):
    pass


def job_options(base: SwapOptions, options: dict, data_dir: Path, inputs: dict) -> SwapOptions:
    reference = inputs.get("reference")
    return replace(base, **options, reference=data_dir / reference if reference else None)


class Worker(threading.Thread):
    def __init__(self, index: int, store: JobStore, data_dir: Path, triton_url: str, base_options: SwapOptions,
                 metrics: ServiceMetrics, wake: threading.Event, stop: threading.Event):
        super().__init__(name=f"swapstream-worker-{index}", daemon=True)
        self.id = worker_id(index)
        self.store = store
        self.data_dir = data_dir
        self.client = SwapstreamClient(triton_url)
        self.swapper = FaceSwapper(self.client, base_options)
        self.base_options = base_options
        self.metrics = metrics
        self.wake = wake
        self.stop_event = stop
        self.busy = False

    def run(self) -> None:
        while not self.stop_event.is_set():
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
            self.swapper.options = job_options(self.base_options, job.options, self.data_dir, inputs)
            summary = run_swap(self.swapper, [self.data_dir / s for s in inputs["sources"]],
                               self.data_dir / inputs["target"], output, progress=progress,
                               stage_observer=self._observe_stage)
        except JobCancelled:
            output.unlink(missing_ok=True)
            self.store.mark_cancelled(job.id, self.id)
            self.metrics.jobs_finished.labels("cancelled").inc()
            return
        except TritonCallError as error:
            self.metrics.triton_errors.labels(error.model).inc()
            state = self.store.fail(job.id, self.id, f"{error} (attempt {job.attempts} of {job.max_attempts})",
                                    retry=True)
            self._count_if_final(state)
            self._wait_for_triton()
            return
        except INPUT_ERRORS as error:
            self._count_if_final(self.store.fail(job.id, self.id, str(error)))
            return
        except Exception as error:  # noqa: BLE001 - recorded on the job; the worker goes on
            log.exception("job %s failed", job.id)
            self._count_if_final(self.store.fail(job.id, self.id, f"internal error: {error!r}; "
                                                 "see the service log"))
            return
        stats = {"stage_seconds": summary.stage_seconds, "notes": summary.notes,
                 "frames_without_face": summary.frames_without_face}
        relative = str(output.relative_to(self.data_dir))
        if self.store.complete(job.id, self.id, relative, frames=summary.frames,
                               faces_swapped=summary.faces_swapped, fps=summary.fps, stats=stats):
            self.metrics.job_fps.observe(summary.fps)
            self.metrics.job_seconds.observe(time.monotonic() - started)
            self.metrics.jobs_finished.labels("done").inc()
        else:  # re-queued after a stale heartbeat and claimed elsewhere: the result is not this worker's to publish
            output.unlink(missing_ok=True)

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
                 metrics: ServiceMetrics):
        self.wake = threading.Event()
        self.stop_event = threading.Event()
        self.workers = [Worker(i, store, data_dir, triton_url, base_options, metrics, self.wake, self.stop_event)
                        for i in range(count)]

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
