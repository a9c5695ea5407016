"""The live scheduler: one thread that batches the ready frames of all streams.

Each round takes the newest waiting frame of up to ``max_batch`` streams (round robin, so every stream gets its
turn), waiting up to ``window_ms`` for streams that have no frame yet, only when there are such streams. Then:
one Triton ``detect`` call for all frames (padded to one size, their own sizes in ``IMAGE_SIZES``) -> causal
tracking per stream -> one batched DALI alignment -> one Triton ``swap`` call with each face's own identity ->
one batched DALI blend -> JPEG/WebP encode -> each stream's answer, in order.
"""
from __future__ import annotations

import logging
import threading
import time

import numpy as np

from swapstream.services.live.frames import encode_frame
from swapstream.services.live.limits import LiveLimits
from swapstream.services.live.metrics import LiveMetrics
from swapstream.services.live.stream import LiveStream
from swapstream.services.engine.clock import StageClock
from swapstream.services.engine.swapper import FaceSwapper
from swapstream.services.triton.client import TritonCallError

log = logging.getLogger("swapstream.live")


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)


def pad_to_one_size(frames: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """[N,H,W,3] of the largest size with each frame top-left, and the frames' (h, w) (None: all one size)."""
    sizes = np.array([f.shape[:2] for f in frames], np.int32)
    if (sizes == sizes[0]).all():
        return np.stack(frames), None
    height, width = sizes.max(axis=0)
    padded = np.zeros((len(frames), height, width, 3), np.uint8)
    for out, frame in zip(padded, frames):
        out[:frame.shape[0], :frame.shape[1]] = frame
    return padded, sizes


class Scheduler(threading.Thread):
    def __init__(self, swapper: FaceSwapper, limits: LiveLimits, metrics: LiveMetrics):
        super().__init__(name="live-scheduler", daemon=True)
        self.swapper = swapper
        self.limits = limits
        self.metrics = metrics
        self._streams: list[LiveStream] = []
        self._turn = 0
        self._wake = threading.Condition()
        self._stopping = False

    # ---------------------------------------------------------------------------------- streams

    def add(self, stream: LiveStream) -> bool:
        """False when ``max_streams`` are open already."""
        with self._wake:
            if len(self._streams) >= self.limits.max_streams:
                return False
            self._streams.append(stream)
        return True

    def remove(self, stream: LiveStream) -> None:
        with self._wake:
            if stream in self._streams:
                self._streams.remove(stream)

    def count(self) -> int:
        with self._wake:
            return len(self._streams)

    def wake(self) -> None:
        with self._wake:
            self._wake.notify()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self.is_alive():
            self.join(timeout=30)

    # ------------------------------------------------------------------------------------- loop

    def run(self) -> None:
        while True:
            batch = self._gather()
            if batch is None:
                return
            try:
                self._process(batch)
            except Exception as error:  # noqa: BLE001 - one failed batch must not stop the streams
                log.exception("live batch of %d frames failed", len(batch))
                detail = (f"the inference server failed: {error}; the stream goes on, retry"
                          if isinstance(error, TritonCallError) else f"this frame failed on the server: {error}")
                for stream, frame in batch:
                    stream.answer(frame.seq, {"type": "error", "seq": frame.seq, "detail": detail}, None)

    def _gather(self):
        with self._wake:
            while not self._stopping and not any(s.ready() for s in self._streams):
                self._wake.wait(timeout=1.0)
            if self._stopping:
                return None
            waiting_for_others = any(not s.ready() for s in self._streams)
        if self.limits.max_batch > 1 and self.limits.window_ms > 0 and waiting_for_others:
            time.sleep(self.limits.window_ms / 1000.0)  # let the other streams' frames arrive
        with self._wake:
            streams = self._streams[self._turn:] + self._streams[:self._turn]
            self._turn = (self._turn + 1) % max(len(self._streams), 1)
            batch = []
            for stream in streams:
                if len(batch) == self.limits.max_batch:
                    break
                frame = stream.take()
                if frame is not None:
                    batch.append((stream, frame))
        return batch

    def _process(self, batch: list) -> None:
        started = time.perf_counter()
        swapper = self.swapper
        clock = StageClock()
        self.metrics.batch_frames.observe(len(batch))
        frames, sizes = pad_to_one_size([frame.rgb for _, frame in batch])
        found = swapper.detect(frames, image_sizes=sizes, clock=clock)
        chosen, identities, counts = [], [], []
        with clock("track"):
            for position, (stream, frame) in enumerate(batch):
                mine = found.frame_index == position
                faces = stream.track(frame, found.boxes[mine], found.landmarks[mine], found.scores[mine])
                chosen += [(position, face) for face in faces]
                identities += [stream.identity] * len(faces)
                counts.append(len(faces))
        out = swapper.swap_frames(frames, chosen, identities, clock)
        shared = {stage: _ms(clock.seconds[stage]) for stage in ("detect", "track", "align", "swap", "blend")}
        for position, (stream, frame) in enumerate(batch):
            encode_started = time.perf_counter()
            height, width = frame.rgb.shape[:2]
            image = encode_frame(out[position, :height, :width], frame.kind, stream.options.quality)
            done = time.perf_counter()
            timings = {"queue": _ms(started - frame.arrived), **shared, "encode": _ms(done - encode_started),
                       "total": _ms(done - frame.arrived)}
            self.metrics.latency.observe(done - frame.arrived)
            stream.answer(frame.seq, {"seq": frame.seq, "ts": frame.ts, "faces": counts[position],
                                      "batch": len(batch), "timings": timings}, image)
