"""The live scheduler: one thread that batches the ready frames of all streams.

Each round takes the newest waiting frame of up to ``max_batch`` streams (round robin, so every stream gets its turn),
waiting up to ``window_ms`` for streams that have no frame yet, only when there are such streams. The frames are grouped
by their stream's swapper (an identity drives only the swapper that made it), then by size (``size_groups``: padding a
group to one size may at most double its pixels, so a batch never costs much more memory than its frames' own pixels),
and each group goes through: one Triton ``detect`` call (padded to one size, their own sizes in ``IMAGE_SIZES``) ->
causal tracking per stream -> one batched DALI alignment -> the swapper's one batched call (Triton ``swap`` or
``facemesh``) with each face's own identity -> one batched DALI blend -> JPEG/WebP encode -> each stream's answer, in order.

A failure of one stream's frame fails that frame only: its own steps (tracking, encoding) are caught one by one,
and a shared step that fails for another reason than the inference server is retried frame by frame.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

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


def size_groups(sizes: list[tuple[int, int]], waste: float = 2.0) -> list[list[int]]:
    """Positions of frames of the given (h, w), grouped (largest first) so that padding a group to its largest
    height and width costs at most ``waste`` times the group's own pixels."""
    groups: list[list] = []  # [positions, height, width, own pixels]
    for position in sorted(range(len(sizes)), key=lambda i: -sizes[i][0] * sizes[i][1]):
        h, w = sizes[position]
        for group in groups:
            height, width = max(group[1], h), max(group[2], w)
            if height * width * (len(group[0]) + 1) <= waste * (group[3] + h * w):
                group[0].append(position)
                group[1:] = [height, width, group[3] + h * w]
                break
        else:
            groups.append([[position], h, w, h * w])
    return [sorted(group[0]) for group in groups]


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
    def __init__(self, swappers: Callable[[str], FaceSwapper], limits: LiveLimits, metrics: LiveMetrics):
        """``swappers``: a swapper's name -> the FaceSwapper this thread uses for it (kept by the caller)."""
        super().__init__(name="live-scheduler", daemon=True)
        self.swappers = swappers
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
            self.metrics.batch_frames.observe(len(batch))
            for name in dict.fromkeys(stream.options.swapper for stream, _ in batch):
                same = [item for item in batch if item[0].options.swapper == name]
                for group in size_groups([frame.rgb.shape[:2] for _, frame in same]):
                    self._process_apart([same[i] for i in group], len(batch))

    def _process_apart(self, batch: list, batch_size: int) -> None:
        """``_process``; when a shared step fails (not the inference server), again frame by frame, so that only
        the frame that fails gets an error."""
        try:
            self._process(batch, batch_size)
        except TritonCallError as error:  # the server's failure, not a frame's: every frame of the batch
            log.error("live batch of %d frames: the inference server failed: %s", len(batch), error)
            for stream, frame in batch:
                stream.answer(frame.seq, {"type": "error", "seq": frame.seq, "detail": f"the inference server "
                                          f"failed: {error}; the stream goes on, retry"}, None)
        except Exception as error:  # noqa: BLE001 - one frame must not fail the others, nor stop the streams
            if len(batch) == 1:
                self._failed(*batch[0], error)
                return
            for item in batch:
                self._process_apart([item], batch_size)

    def _failed(self, stream: LiveStream, frame, error: Exception) -> None:
        """One frame failed: its stream gets an error for it (and starts tracking afresh); one log line."""
        log.error("live stream %s: frame %d failed: %s: %s", stream.id, frame.seq, type(error).__name__, error)
        log.debug("live stream %s: frame %d", stream.id, frame.seq, exc_info=error)
        stream.restart_tracking()
        stream.answer(frame.seq, {"type": "error", "seq": frame.seq,
                                  "detail": "this frame failed on the server; the stream goes on"}, None)

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

    def _process(self, batch: list, batch_size: int) -> None:
        """One group of frames (``batch_size``: the frames of the whole batch, as the answers report it)."""
        started = time.perf_counter()
        swapper = self.swappers(batch[0][0].options.swapper)  # one swapper per group (``run``)
        clock = StageClock()
        frames, sizes = pad_to_one_size([frame.rgb for _, frame in batch])
        found = swapper.detect(frames, image_sizes=sizes, clock=clock)
        chosen, identities, failed = [], [], set()
        counts = [0] * len(batch)
        with clock("track"):
            for position, (stream, frame) in enumerate(batch):
                mine = found.frame_index == position
                try:
                    faces = stream.track(frame, found.boxes[mine], found.landmarks[mine], found.scores[mine])
                except Exception as error:  # noqa: BLE001 - this stream's frame only; the others go on
                    self._failed(stream, frame, error)
                    failed.add(position)
                    continue
                chosen += [(position, face) for face in faces]
                identities += [stream.identity] * len(faces)
                counts[position] = len(faces)
        out = swapper.swap_frames(frames, chosen, identities, clock)
        shared = {stage: _ms(clock.seconds[stage]) for stage in ("detect", "track", "align", "swap", "blend")}
        for position, (stream, frame) in enumerate(batch):
            if position in failed:
                continue
            encode_started = time.perf_counter()
            height, width = frame.rgb.shape[:2]
            try:
                image = encode_frame(out[position, :height, :width], frame.kind, stream.options.quality)
            except Exception as error:  # noqa: BLE001 - this stream's frame only
                self._failed(stream, frame, error)
                continue
            done = time.perf_counter()
            timings = {"queue": _ms(started - frame.arrived), **shared, "encode": _ms(done - encode_started),
                       "total": _ms(done - frame.arrived)}
            self.metrics.latency.observe(done - frame.arrived)
            stream.answer(frame.seq, {"seq": frame.seq, "ts": frame.ts, "faces": counts[position],
                                      "batch": batch_size, "timings": timings}, image)
