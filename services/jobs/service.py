"""The job queue of one service process: the store, the worker threads, stale-job recovery, the data folder's
disk, the metrics, and the swapper of the synchronous photo requests. No HTTP here: ``swapstream.services.http``
serves it."""
from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from swapstream.services.engine.offline import SwapOptions
from swapstream.services.engine.swapper import FaceSwapper
from swapstream.services.engine.swappers import create_swapper
from swapstream.services.engine.swappers.choice import SwapperChoice, choose_swapper
from swapstream.services.jobs.disk import MB, DiskSpace
from swapstream.services.jobs.metrics import ServiceMetrics
from swapstream.services.jobs.store import FINAL, JobStore, local_worker_is_dead
from swapstream.services.jobs.uploads import UploadLimits, hide_paths, remove_folder, sweep_orphans
from swapstream.services.jobs.workers import WorkerPool
from swapstream.services.live.limits import LiveLimits
from swapstream.services.options import default
from swapstream.services.triton.client import SwapstreamClient, TritonCallError

log = logging.getLogger("swapstream.api")


def _serve(name: str):
    return default(name, "serve")


@dataclass
class ServiceConfig:
    """What ``swapstream serve`` was given; the defaults are the options table's."""
    data_dir: Path
    triton_url: str
    store_url: str | None = None       # default: SQLite in data_dir
    workers: int = _serve("workers")
    max_queued: int = _serve("max_queued")
    max_attempts: int = _serve("max_attempts")
    stale_after: float = _serve("stale_after")  # seconds without a heartbeat before a job is re-queued
    token: str | None = None
    device: str = _serve("device")
    limits: UploadLimits = field(default_factory=UploadLimits)
    live: LiveLimits = field(default_factory=LiveLimits)
    min_free_bytes: int = int(_serve("min_free_mb") * MB)  # below it: not ready, no job started, 507
    triton_timeout: float = _serve("triton_timeout")       # deadline of one Triton call, seconds
    allowed_hosts: tuple[str, ...] = ()    # Host names the /v1 gate accepts besides addresses and localhost
    allowed_origins: tuple[str, ...] = ()  # page origins the /v1 gate accepts besides the service's own
    photo_workers: int = 1              # photo requests (swap-image, analyze, sources) worked on at once ...
    photo_queue: int = 4                # ... and waiting; more get 429
    swapper: str | None = None          # the service's default swapper (None: the best available)
    real_networks: frozenset[str] = frozenset()  # Triton models served with real weights (repository.real_networks)


class Busy(Exception):
    """More work than the service takes now; the client retries after ``retry_after`` seconds (HTTP 429)."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class PhotoWork:
    """Synchronous photo work (swap-image, analyze) off the event loop, in its own threads: ``workers`` at once
    and ``queue`` waiting; beyond that a request is refused at once (``Busy``) instead of stalling the service."""

    def __init__(self, workers: int, queue: int):
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="swapstream-photo")
        self.capacity = workers + queue
        self.pending = 0

    async def run(self, function, *args):
        if self.pending >= self.capacity:
            raise Busy(f"{self.pending} photo requests are being worked on or waiting; retry in a few seconds", 5)
        self.pending += 1  # only the event loop's thread counts
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)
        finally:
            self.pending -= 1


RECOVERY_SECONDS = 15.0  # how often running jobs are checked for a dead or silent worker
SUBMIT_CHECK_SECONDS = 5.0  # longest a submission waits for Triton to check its photos' faces


class Service:
    """The store, the workers and the photo swapper of one service process."""

    def __init__(self, config: ServiceConfig):
        self.config = config
        self.data_dir = config.data_dir.resolve()
        for folder in ("uploads", "results", "tmp"):
            (self.data_dir / folder).mkdir(parents=True, exist_ok=True)
        # Request bodies are spooled by the multipart parser through ``tempfile``: inside the data folder, on
        # the disk whose free space the service watches, never in the system's /tmp.
        tempfile.tempdir = str(self.data_dir / "tmp")
        self.disk = DiskSpace(self.data_dir, config.min_free_bytes)
        self.store = JobStore(config.store_url) if config.store_url else JobStore.in_folder(self.data_dir)
        self.base_options = SwapOptions(device=config.device)
        self.pool: WorkerPool | None = None
        self.draining = False  # set by the drain on SIGTERM (serve.py): readiness answers 503
        self.metrics = ServiceMetrics(self.store.counts, lambda: self.pool.busy() if self.pool else 0)
        self.client = SwapstreamClient(config.triton_url, timeout=config.triton_timeout)
        self.check_client = SwapstreamClient(config.triton_url, timeout=SUBMIT_CHECK_SECONDS)
        self.swapper = choose_swapper(config.swapper, config.real_networks)  # the default of jobs, photos, streams
        log.info("default %s", self.swapper.reason)
        self._photo_swappers: dict[tuple[str, str], FaceSwapper] = {}  # ("request" | "check", swapper name)
        self._photo_lock = threading.Lock()
        self.photo_work = PhotoWork(config.photo_workers, config.photo_queue)
        self.health_executor = ThreadPoolExecutor(2, thread_name_prefix="swapstream-health")
        self._recovering = threading.Event()

    def start(self) -> None:
        self.recover()
        for partial in (self.data_dir / "results").glob(".*.partial*"):
            partial.unlink(missing_ok=True)  # left by a killed worker; never referenced by a job
        in_use = self.store.input_folders()
        for parent, used in (("uploads", lambda name: f"uploads/{name}" in in_use), ("tmp", lambda _name: False)):
            for name in sweep_orphans(self.data_dir / parent, used, self.config.stale_after):
                log.warning("removed %s/%s, left by a process that stopped during a request", parent, name)
        self.pool = WorkerPool(self.config.workers, self.store, self.data_dir, self.config.triton_url,
                               self.base_options, self.metrics, self.disk, self.config.triton_timeout,
                               self.choose_swapper)
        self.pool.start()
        threading.Thread(target=self._recover_periodically, name="swapstream-recovery", daemon=True).start()

    def recover(self) -> None:
        """Running jobs whose worker died or went silent for ``stale_after`` s: re-queued, failed or cancelled."""
        for job in self.store.recover(local_worker_is_dead, self.config.stale_after):
            log.warning("job %s was running in a worker that stopped or went silent: now %s", job.id, job.state)
            if job.state in FINAL:
                self.metrics.jobs_finished.labels(job.state).inc()
            if job.state == "cancelled":
                remove_folder(self.data_dir / job.inputs["folder"])

    def _recover_periodically(self) -> None:
        while not self._recovering.wait(min(RECOVERY_SECONDS, self.config.stale_after / 2)):
            try:
                self.recover()
            except Exception:  # noqa: BLE001 - a store outage; tried again at the next round
                log.exception("recovering stale jobs failed")

    def stop(self) -> None:
        self._recovering.set()
        if self.pool:
            self.pool.stop()
        self.photo_work.executor.shutdown(wait=False, cancel_futures=True)
        self.health_executor.shutdown(wait=False, cancel_futures=True)
        self.store.close()

    def public(self, message: str) -> str:
        """A message for a client: the server's paths under the data folder reduced to the file's own name."""
        return hide_paths(message, self.data_dir)

    def relative(self, path: Path) -> str:
        """A path under the data folder as the store keeps it."""
        return str(path.relative_to(self.data_dir))

    def choose_swapper(self, asked: str | None) -> SwapperChoice:
        """The swapper a job, photo or stream uses: the one it asked for, else the service's default."""
        if asked is None:
            return self.swapper
        return choose_swapper(asked, self.config.real_networks)

    @contextmanager
    def photo_swapper(self, name: str | None = None, *, check: bool = False, wait: float | None = None):
        """A swapper of the synchronous requests, one request at a time (their DALI pipelines are not shared).

        ``name``: the swapper (default: the service's); ``check``: the one whose Triton client gives up after
        ``SUBMIT_CHECK_SECONDS`` (a submission's face check); ``wait``: seconds to wait for the swapper, after which
        TimeoutError."""
        if not self._photo_lock.acquire(timeout=-1 if wait is None else wait):
            raise TimeoutError("the photo swapper is busy")
        try:
            use = ("check" if check else "request", name or self.swapper.name)
            if use not in self._photo_swappers:  # built when first used: FaceSwapper is immutable, so it is kept
                client = self.check_client if check else self.client
                self._photo_swappers[use] = FaceSwapper(client, create_swapper(use[1], client), self.config.device)
            yield self._photo_swappers[use]
        finally:
            self._photo_lock.release()

    def faces_in(self, rgb: np.ndarray, score_threshold: float, *, unless_triton_down: bool = False):
        """Faces found in a photo. With ``unless_triton_down`` (a submission's check), None when Triton does not
        answer within ``SUBMIT_CHECK_SECONDS``: the job is queued all the same and its worker checks the face."""
        if not unless_triton_down:
            with self.photo_swapper() as swapper:
                return swapper.detect(rgb[None], score_threshold=score_threshold)
        try:
            with self.photo_swapper(check=True, wait=SUBMIT_CHECK_SECONDS) as swapper:
                return swapper.detect(rgb[None], score_threshold=score_threshold)
        except (TritonCallError, TimeoutError) as error:
            log.warning("a submission's face check is left to its worker: %s", error)
            return None
