"""One live stream's state, shared by its WebSocket handler (the event loop) and the scheduler's threads.

Memory is bounded per stream: one frame waiting, still encoded (a newer one replaces it and the older is dropped, so
a stream that falls behind keeps its newest frame), one in each of the scheduler's rounds in flight
(``LiveLimits.pipeline``), and at most ``send_queue`` answers waiting for the client (more are dropped, not
buffered).
"""
from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass

import numpy as np

from swapstream.services.live.metrics import LiveMetrics
from swapstream.services.live.protocol import pack_frame
from swapstream.services.engine.mesh_tracking import MeshFollower
from swapstream.services.engine.selection import FaceSelector
from swapstream.services.engine.tracking import CausalFaceTracker, TrackedFace

HOLD_FRAMES = 5  # a face the detector misses is held at its last position this many frames
TEXT_BACKLOG = 32  # error messages waiting for a client that does not read


@dataclass
class StreamOptions:
    faces: str = "all"      # all | largest
    smoothing: bool = True
    quality: int = 80       # of the returned JPEG / WebP frames
    swapper: str | None = None  # the swapper's name (set at start: the one asked for, the source's or the service's)


@dataclass
class Frame:
    seq: int
    ts: float               # the client's capture time, ms (echoed)
    data: bytes             # the image as it came: its header checked, its pixels decoded only when it is taken
    kind: str               # JPEG | WEBP: the answer uses the same
    arrived: float          # time.perf_counter() when it was received
    rgb: np.ndarray | None = None  # set by the scheduler when it takes the frame


class LiveStream:
    def __init__(self, stream_id: str, identity: dict[str, np.ndarray], options: StreamOptions, send_queue: int,
                 metrics: LiveMetrics, loop: asyncio.AbstractEventLoop):
        self.id = stream_id
        self.identity = identity         # the swapper's identity of the source face
        self.options = options
        self.metrics = metrics
        self.loop = loop
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.send_queue = send_queue
        self.answers_queued = 0          # answers in ``outbox`` (event loop only)
        self.answered = 0
        self.answered_at = 0.0           # loop time of the last answer or error from the scheduler
        self.idle = asyncio.Event()      # nothing waiting and nothing in the scheduler
        self.idle.set()
        self._lock = threading.Lock()
        self._waiting: Frame | None = None
        self._in_flight = 0              # frames taken by the scheduler and not yet delivered
        self._dropped: list[int] = []    # reported in the next answer
        self.follower = MeshFollower()   # the scheduler's detect thread only: faces followed by their mesh
        self._fresh_follower = False     # set by the swap thread, applied by the detect thread (``detect_follower``)
        # the scheduler's swap thread only:
        self._tracker = CausalFaceTracker(max_gap=HOLD_FRAMES)
        self._selector = FaceSelector(options.faces, options.smoothing)
        self._frames = 0
        self._last_time = -1.0

    # ------------------------------------------------------------------------------ event loop side

    def offer(self, frame: Frame) -> None:
        """The newest frame waits; the one it replaces is dropped."""
        with self._lock:
            if self._waiting is not None:
                self._dropped.append(self._waiting.seq)
                self.metrics.frames_dropped.labels("newer_frame").inc()
            self._waiting = frame
        self.idle.clear()

    def send_text(self, message: dict) -> None:
        """A text message for the client; past ``TEXT_BACKLOG`` unsent ones (a client that sends bad frames and
        does not read) they are dropped too, so memory stays bounded."""
        if self.outbox.qsize() - self.answers_queued < TEXT_BACKLOG:
            self.outbox.put_nowait(("text", json.dumps(message)))

    def deliver(self, seq: int, header: dict, image: bytes | None) -> None:
        """An answer from the scheduler (``image`` None: the frame failed, ``header`` is the error)."""
        self.answered_at = self.loop.time()
        if image is None:
            self.send_text(header)
        elif self.answers_queued >= self.send_queue:  # the client is not reading: drop, never buffer
            with self._lock:
                self._dropped.append(seq)
            self.metrics.frames_dropped.labels("slow_client").inc()
        else:
            with self._lock:
                header["dropped"], self._dropped = self._dropped, []
            self.answers_queued += 1
            self.answered += 1
            self.outbox.put_nowait(("answer", pack_frame(header, image)))
            self.metrics.frames_answered.inc()
        with self._lock:
            self._in_flight -= 1
            idle = self._waiting is None and self._in_flight == 0
        if idle:
            self.idle.set()

    def take_dropped(self) -> list[int]:
        with self._lock:
            dropped, self._dropped = self._dropped, []
        return dropped

    # ------------------------------------------------------------------------------- scheduler side

    def ready(self) -> bool:
        return self._waiting is not None

    def waiting_since(self) -> float | None:
        """When the waiting frame arrived (time.perf_counter()), None when none waits."""
        frame = self._waiting
        return None if frame is None else frame.arrived

    def take(self) -> Frame | None:
        with self._lock:
            frame, self._waiting = self._waiting, None
            self._in_flight += frame is not None
        return frame

    def restart_tracking(self) -> None:
        """Tracking afresh after a frame failed (its state may be what failed), called from the swap thread: a fresh
        tracker now; the detect thread uses the follower concurrently, so it gets a fresh one before its next locate."""
        self._tracker = CausalFaceTracker(max_gap=HOLD_FRAMES)
        self._fresh_follower = True

    def detect_follower(self) -> MeshFollower:
        """The follower for the next locate (detect thread only): a fresh one after ``restart_tracking``."""
        if self._fresh_follower:
            self._fresh_follower = False
            self.follower = MeshFollower()  # its faces followed by their mesh (engine/mesh_tracking.py)
        return self.follower

    def track(self, frame: Frame, boxes, landmarks, scores, meshes=None) -> list[TrackedFace]:
        """The faces to swap in this frame: tracked causally, smoothed (unless turned off), selected."""
        seconds = max(frame.ts / 1000.0, self._last_time + 1e-3)  # the tracker needs increasing times
        self._last_time = seconds
        (tracked,) = self._tracker.push(self._frames, boxes, landmarks, scores, timestamp=seconds, meshes=meshes)
        self._frames += 1
        return self._selector.pick(tracked.faces)

    def answer(self, seq: int, header: dict, image: bytes | None) -> None:
        """Hands an answer to the event loop, in order (called from the scheduler's threads)."""
        try:
            self.loop.call_soon_threadsafe(self.deliver, seq, header, image)
        except RuntimeError:
            pass  # the event loop is gone: the service is stopping

