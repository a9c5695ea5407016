"""The limits and knobs of live streams (``swapstream serve --max-streams --live-window-ms --live-max-batch
--live-latency-ms``)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LiveLimits:
    max_streams: int = 8                  # open streams; one more is closed with 1013 (try later)
    window_ms: float = 4.0                # how long the scheduler waits for other streams' frames to join a batch
    max_batch: int = 16                   # frames per batch (1: frame by frame, batch-1 calls)
    latency_ms: float = 200.0             # a batch stops waiting for other streams' frames when its oldest frame,
                                          # with the time a batch takes, would pass this (0: no budget)
    pipeline: int = 2                     # batches in flight: the next one's detect while one is swapped (1: none)
    max_frame_bytes: int = 4 * 1024 * 1024  # a larger binary message closes the stream (1009)
    max_pixels: int = 1920 * 1080         # a larger frame is refused (an error; the stream goes on)
    max_side: int = 1920                  # a frame wider or taller is refused too (the batch pads frames to one size)
    max_source_pixels: int = 4096 * 4096  # a source photo (POST /v1/sources, or a start's source_image)
    max_sources: int = 1000               # stored sources (POST /v1/sources); more get 507 until some are deleted
    source_days: float = 30.0             # a stored source is removed this long after it was made
    idle_timeout: float = 30.0            # seconds without a frame before the stream is closed (4408)
    ticket_seconds: float = 60.0          # how long a ticket from POST /v1/live/tickets is valid (single use)
    send_queue: int = 2                   # answers waiting for a slow client; more are dropped, not buffered

    def as_dict(self) -> dict:
        return {"max_frame_bytes": self.max_frame_bytes, "max_pixels": self.max_pixels, "max_side": self.max_side,
                "idle_timeout_s": self.idle_timeout, "max_streams": self.max_streams}
