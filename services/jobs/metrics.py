"""The ingestion service's Prometheus series (served at ``/metrics``; Triton serves its own on its port).

Job counts by state and the queue depth are read from the job store at scrape time, so they are right
after a restart and across several service machines sharing one PostgreSQL store.
"""
from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from swapstream.services.live.metrics import LiveMetrics
from swapstream.services.engine.clock import STAGES

JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
FPS_BUCKETS = (0.5, 1, 2, 4, 8, 16, 32, 64, 128)
JOB_SECONDS_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)


class _StoreCollector(Collector):
    def __init__(self, counts: Callable[[], dict[str, int]], workers_busy: Callable[[], int]):
        self.counts = counts
        self.workers_busy = workers_busy

    def collect(self):
        counts = self.counts()
        jobs = GaugeMetricFamily("swapstream_jobs", "Jobs in the store by state", labels=["state"])
        for state in JOB_STATES:
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        yield GaugeMetricFamily("swapstream_queue_depth", "Jobs waiting for a worker", value=counts.get("queued", 0))
        yield GaugeMetricFamily("swapstream_workers_busy", "Workers of this process running a job",
                                value=self.workers_busy())


class ServiceMetrics:
    """One registry per service instance (tests run several in one process)."""

    def __init__(self, counts: Callable[[], dict[str, int]], workers_busy: Callable[[], int]):
        self.registry = CollectorRegistry()
        self.registry.register(_StoreCollector(counts, workers_busy))
        self.jobs_finished = Counter("swapstream_jobs_finished", "Jobs that reached a final state",
                                     ["state"], registry=self.registry)
        self.frames = Counter("swapstream_frames_processed", "Frames written by finished and running jobs",
                              registry=self.registry)
        self.faces = Counter("swapstream_faces_swapped", "Faces swapped by finished and running jobs", registry=self.registry)
        self.job_fps = Histogram("swapstream_job_fps", "End-to-end frames per second of each finished job",
                                 buckets=FPS_BUCKETS, registry=self.registry)
        self.job_seconds = Histogram("swapstream_job_seconds", "Wall time of each finished job",
                                     buckets=JOB_SECONDS_BUCKETS, registry=self.registry)
        self.stage_seconds = Histogram("swapstream_stage_seconds", "Time of one call of a pipeline stage: a batch of frames (track: one frame)",
                                       ["stage"], buckets=STAGE_BUCKETS, registry=self.registry)
        self.triton_errors = Counter("swapstream_triton_errors", "Failed Triton calls by model",
                                     ["model"], registry=self.registry)
        self.live = LiveMetrics(self.registry)
        for state in JOB_STATES[2:]:
            self.jobs_finished.labels(state)
        for stage in STAGES:
            self.stage_seconds.labels(stage)
