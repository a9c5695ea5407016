"""Live streams' Prometheus series, registered in the service's registry (served at ``/metrics``)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2.5, 5)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
DROP_REASONS = ("newer_frame", "slow_client")
ROUND_ENDS = ("full", "window", "budget")


class LiveMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.streams = Gauge("swapstream_live_streams", "Live streams open", registry=registry)
        self.frames_received = Counter("swapstream_live_frames_received", "Live frames received",
                                       registry=registry)
        self.frames_answered = Counter("swapstream_live_frames_answered", "Live frames swapped and sent back",
                                       registry=registry)
        self.frames_dropped = Counter("swapstream_live_frames_dropped", "Live frames dropped: a newer frame of the "
                                      "stream arrived first, or the client was not reading", ["reason"],
                                      registry=registry)
        self.frames_refused = Counter("swapstream_live_frames_refused", "Live frames refused (not an image, too "
                                      "large, out of order)", registry=registry)
        self.frames_decoded = Counter("swapstream_live_frames_decoded", "Live frames decoded: only those the "
                                      "scheduler takes (a frame dropped for a newer one is never decoded)",
                                      registry=registry)
        self.latency = Histogram("swapstream_live_frame_seconds", "Server time of one live frame, from its arrival "
                                 "to its answer being queued", buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_frames = Histogram("swapstream_live_batch_frames", "Frames per batch the live scheduler formed "
                                      "(one detect and one swap call each)", buckets=BATCH_BUCKETS, registry=registry)
        self.rounds = Counter("swapstream_live_rounds", "Batches the live scheduler gathered, by why the gathering "
                              "ended: full (every stream had a frame, or the batch was full), window (the wait for "
                              "other streams' frames passed) or budget (waiting longer would take the oldest frame "
                              "past the latency budget)", ["end"], registry=registry)
        self.rounds_overlapped = Counter("swapstream_live_rounds_overlapped", "Live batches gathered and detected "
                                         "while an earlier batch was still being swapped or encoded",
                                         registry=registry)
        for end in ROUND_ENDS:
            self.rounds.labels(end)
        for reason in DROP_REASONS:
            self.frames_dropped.labels(reason)
