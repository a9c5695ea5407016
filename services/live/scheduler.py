"""The live scheduler: rounds of the ready frames of all streams, with two rounds in flight.

Three kinds of threads share the work of a round:

- the scheduler thread (this one) gathers a round: the newest waiting frame of up to ``max_batch`` streams (round
  robin, so every stream gets its turn), and decodes them (a frame waits encoded: one dropped for a newer one is
  never decoded; one whose pixels cannot be decoded is refused alone). The frames are grouped by their stream's
  swapper (an identity drives only the swapper that made it), then by size (``size_groups``: padding a group to one
  size may at most double its pixels), and each group gets one Triton ``detect`` call (padded to one size, their own
  sizes in ``IMAGE_SIZES``);
- the swap thread takes the detected rounds in order: causal tracking per stream, one batched alignment, the
  swapper's one batched call (Triton ``swap`` or ``facemesh``) with each face's own identity, one batched blend;
- encoder threads encode each answer (JPEG/WebP) and hand it to its stream. A stream always has the same encoder,
  so its answers stay in order.

So the detect of round N+1 runs while round N is swapped and blended: ``LiveLimits.pipeline`` rounds are alive at
once, from their gathering to their last answer (1: one round at a time). Round N+1 is gathered just in time: when
the swap thread should be done with round N less the time a detect takes (both measured), so that its frames are the
newest and other streams' frames can join. Tracking runs in the swap thread because it must see each stream's frames
in order, after the frame before has been swapped.

When some streams have no frame yet, a round waits up to ``window_ms`` for them, but not past the moment when its
oldest frame, with the time a round takes (measured), would pass the latency budget ``latency_ms``. Nor does a round
take more frames than that budget allows: round times are measured by size (``round_times``), and where a bigger
round costs as much more as its frames (the mesh swapper's image work on a CPU), the frames left wait for the next
round, just behind. Why each round's gathering ended is counted (``swapstream_live_rounds_total{end}``: ``budget``
also when it cut the round's size).

A failure of one stream's frame fails that frame only: its own steps (tracking, encoding) are caught one by one,
and a shared step that fails for another reason than the inference server is retried frame by frame (from the step
that failed: a frame is tracked once).
"""
from __future__ import annotations

import copy
import logging
import queue
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from swapstream.services.live.frames import FrameRejected, decode_frame, encode_frame, refusal
from swapstream.services.live.limits import LiveLimits
from swapstream.services.live.metrics import LiveMetrics
from swapstream.services.live.protocol import error_message
from swapstream.services.live.round_times import RoundTimes, smoothed
from swapstream.services.live.stream import Frame, LiveStream
from swapstream.services.engine.clock import StageClock
from swapstream.services.engine.errors import ErrorCode
from swapstream.services.engine.mesh_tracking import locate
from swapstream.services.engine.swapper import FaceSwapper
from swapstream.services.engine.tracking import TrackedFace
from swapstream.services.triton.client import Detections, TritonCallError

log = logging.getLogger("swapstream.live")

ENCODERS = 2            # encoder threads (JPEG/WebP encoding releases the GIL)
SHARED_STAGES = ("detect", "track", "align", "swap", "blend")


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


@dataclass
class Round:
    """The frames gathered together, until each has its answer or its error."""
    size: int                    # frames in the round (the answers' ``batch``)
    taken: float                 # time.perf_counter() when they were taken from their streams
    left: int = 0                # frames without their answer yet

    def __post_init__(self):
        self.left = self.size


@dataclass
class Group:
    """Frames of one round with one swapper and about one size, from detect to the encoders."""
    items: list[tuple[LiveStream, Frame]]
    round: Round
    frames: np.ndarray | None = None        # padded to one size
    found: Detections | None = None
    clock: StageClock = field(default_factory=StageClock)

    @property
    def swapper(self) -> str:
        return self.items[0][0].options.swapper


class Scheduler(threading.Thread):
    def __init__(self, swappers: Callable[[str, str], FaceSwapper], limits: LiveLimits, metrics: LiveMetrics):
        """``swappers``: (stage ``detect`` or ``swap``, a swapper's name) -> the FaceSwapper that stage's thread uses
        for it (kept by the caller; a FaceSwapper's DALI pipelines serve one thread)."""
        super().__init__(name="live-scheduler", daemon=True)
        self.swappers = swappers
        self.limits = limits
        self.metrics = metrics
        self._streams: list[LiveStream] = []
        self._turn = 0
        self._wake = threading.Condition()
        self._stopping = False
        self._rounds = 0               # rounds alive (under ``_wake``)
        self._round_times = RoundTimes()  # measured by a round's size: from its gathering to its last answer
        self._detect_seconds = 0.0     # measured: a round's detect
        self._swap_seconds = 0.0       # measured: a frame's share of its round's track, align, swap and blend
        self._swap_free_at = 0.0       # when the swap thread should be done with its round (0: idle)
        self._detected: queue.Queue = queue.Queue()  # rounds for the swap thread: at most ``pipeline``
        self._swap_thread = threading.Thread(target=self._swap_loop, name="live-swap", daemon=True)
        self._encoders = [queue.Queue() for _ in range(ENCODERS)]
        self._encoder_threads = [threading.Thread(target=self._encode_loop, args=(jobs,), name=f"live-encode-{i}",
                                                  daemon=True) for i, jobs in enumerate(self._encoders)]

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

    def start(self) -> None:
        for thread in (self._swap_thread, *self._encoder_threads):
            thread.start()
        super().start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self.is_alive():
            self.join(timeout=30)

    # ----------------------------------------------------------------------- gathering, detect

    def run(self) -> None:
        try:
            while True:
                batch = self._gather()
                if batch is None:
                    return
                self.metrics.batch_frames.observe(len(batch))
                rnd = Round(len(batch), time.perf_counter())
                batch = [(stream, frame) for stream, frame in batch if self._decoded(rnd, stream, frame)]
                groups = []
                for name in dict.fromkeys(stream.options.swapper for stream, _ in batch):
                    same = [item for item in batch if item[0].options.swapper == name]
                    for positions in size_groups([frame.rgb.shape[:2] for _, frame in same]):
                        groups += self._detect_apart(Group([same[i] for i in positions], rnd))
                with self._wake:
                    self._detect_seconds = smoothed(self._detect_seconds, time.perf_counter() - rnd.taken)
                self._detected.put(groups)
        finally:  # the rounds gathered are finished, then the swap thread and the encoders end
            self._detected.put(None)
            self._swap_thread.join(timeout=30)

    def _gather(self) -> list[tuple[LiveStream, Frame]] | None:
        """The next round's frames, once fewer than ``pipeline`` rounds are alive (None: stopping)."""
        batch: list[tuple[LiveStream, Frame]] = []
        with self._wake:
            while not batch:  # empty when the streams that had a frame closed while the round waited
                while not self._stopping and (self._rounds >= self.limits.pipeline or
                                              not any(s.ready() for s in self._streams)):
                    self._wake.wait(timeout=1.0)
                if self._stopping:
                    return None
                self._wait_for_the_swap_thread()
                end = self._wait_for_others()
                most = self._most_frames()
                if most < min(sum(s.ready() for s in self._streams), self.limits.max_batch):
                    end = "budget"
                streams = self._streams[self._turn:] + self._streams[:self._turn]
                self._turn = (self._turn + 1) % max(len(self._streams), 1)
                for stream in streams:
                    if len(batch) == most:
                        break
                    frame = stream.take()
                    if frame is not None:
                        batch.append((stream, frame))
            overlapped = self._rounds > 0
            self._rounds += 1
        self.metrics.rounds.labels(end).inc()
        if overlapped:
            self.metrics.rounds_overlapped.inc()
        return batch

    def _wait_for_the_swap_thread(self) -> None:
        """While a round is being swapped, the next one is detected just in time for the swap thread (``_wake``
        held): taken earlier, its frames would only wait for it, older, while newer frames replace the ones not yet
        taken and other streams' frames join."""
        while not self._stopping and self._rounds > 0:
            left = self._swap_free_at - self._detect_seconds - time.perf_counter()
            if left <= 0:
                return
            self._wake.wait(left)

    def _full(self) -> bool:
        ready = sum(s.ready() for s in self._streams)
        return ready == len(self._streams) or ready >= self.limits.max_batch

    def _wait_for_others(self) -> str:
        """Waits (``_wake`` held) for the streams without a frame: up to the window, and not past the latency
        budget. Why the gathering ended: ``full`` (nothing to wait for), ``window`` or ``budget``."""
        limits = self.limits
        if limits.max_batch == 1 or limits.window_ms <= 0:
            return "full"
        until, end = time.perf_counter() + limits.window_ms / 1000.0, "window"
        budget_end = self._budget_end() if limits.latency_ms > 0 else None
        if budget_end is not None:
            rounds = self._round_times.predict(min(len(self._streams), limits.max_batch)) or 0.0
            if budget_end - rounds < until:
                until, end = budget_end - rounds, "budget"
        while not self._stopping and not self._full():
            left = until - time.perf_counter()
            if left <= 0:
                return end
            self._wake.wait(left)
        return "full"

    def _most_frames(self) -> int:
        """The most frames the round may take (``_wake`` held): ``max_batch``, fewer when a round that big is predicted
        to take its oldest frame past the latency budget (at least one)."""
        limits = self.limits
        if limits.latency_ms <= 0 or limits.max_batch == 1:
            return limits.max_batch
        end = self._budget_end()
        if end is None:  # the streams that had a frame closed while the round waited
            return limits.max_batch
        return self._round_times.most_frames(end - time.perf_counter(), limits.max_batch)

    def _budget_end(self) -> float | None:
        """When the oldest waiting frame's latency budget runs out (``_wake`` held); None when no frame waits."""
        waiting = [s.waiting_since() for s in self._streams if s.ready()]
        return min(waiting) + self.limits.latency_ms / 1000.0 if waiting else None

    def _decoded(self, rnd: Round, stream: LiveStream, frame: Frame) -> bool:
        """Decodes the taken frame's pixels (``frame.rgb``); False when they cannot be: the frame is refused alone,
        as it would have been on arrival."""
        self.metrics.frames_decoded.inc()
        try:
            frame.rgb = decode_frame(frame.data, frame.kind)
            return True
        except FrameRejected as error:
            self.metrics.frames_refused.inc()
            stream.answer(frame.seq, refusal(error, frame.seq), None)
            self._finished(rnd)
        except Exception as error:  # noqa: BLE001 - this stream's frame only
            self._failed(rnd, stream, frame, error)
        return False

    def _detect_apart(self, group: Group) -> list[Group]:
        """The group with its faces found (one ``detect`` call); when that fails (not the inference server), again
        frame by frame, so that only the frame that fails gets an error. Each frame is located once: the retry starts
        from its stream's follower as it was before the failed call (which may have advanced some of them)."""
        followers = [stream.detect_follower() for stream, _ in group.items]
        before = [copy.deepcopy(f) for f in followers] if len(followers) > 1 else None  # small: meshes, a thumbnail
        try:
            detector = self.swappers("detect", group.swapper)
            group.frames, sizes = pad_to_one_size([frame.rgb for _, frame in group.items])
            group.found = locate(detector, group.frames, sizes, followers,
                                 clock=group.clock)  # faces followed by their mesh; the detector when due
            return [group]
        except TritonCallError as error:  # the server's failure, not a frame's: every frame of the group
            self._server_failed(group, range(len(group.items)), error)
        except Exception as error:  # noqa: BLE001 - one frame must not fail the others, nor stop the streams
            if before is None:
                self._failed(group.round, *group.items[0], error)
                return []
            for (stream, _), follower in zip(group.items, before):
                stream.follower = follower
            return [done for item in group.items for done in self._detect_apart(Group([item], group.round))]
        return []

    # ----------------------------------------------------------------------- track, swap, blend

    def _swap_loop(self) -> None:
        try:
            while (groups := self._detected.get()) is not None:
                started, frames = time.perf_counter(), sum(len(group.items) for group in groups)
                with self._wake:
                    self._swap_free_at = started + self._swap_seconds * frames
                for group in groups:
                    self._swap_group(group)
                with self._wake:
                    if frames:
                        self._swap_seconds = smoothed(self._swap_seconds, (time.perf_counter() - started) / frames)
                    self._swap_free_at = 0.0
                    self._wake.notify()
        finally:
            for jobs in self._encoders:
                jobs.put(None)
            for thread in self._encoder_threads:
                thread.join(timeout=30)

    def _swap_group(self, group: Group) -> None:
        faces: dict[int, list[TrackedFace]] = {}
        found = group.found
        with group.clock("track"):
            for position, (stream, frame) in enumerate(group.items):
                mine = found.frame_index == position
                try:
                    faces[position] = stream.track(frame, found.boxes[mine], found.landmarks[mine],
                                                   found.scores[mine], found.meshes[mine])
                except Exception as error:  # noqa: BLE001 - this stream's frame only; the others go on
                    self._failed(group.round, stream, frame, error, restart=True)
        if faces:
            self._swap_apart(group, faces)

    def _swap_apart(self, group: Group, faces: dict[int, list[TrackedFace]]) -> None:
        """The tracked frames (position in the group -> its faces) swapped and blended in one batch; when that fails
        (not the inference server), again frame by frame, so that only the frame that fails gets an error."""
        positions = list(faces)
        frames = group.frames if len(positions) == len(group.items) else group.frames[positions]
        chosen = [(i, face) for i, position in enumerate(positions) for face in faces[position]]
        identities = []  # each frame's identity read once: a source switch mid-round must not split a frame's faces
        for position in positions:
            identities += [group.items[position][0].identity] * len(faces[position])
        try:
            out = self.swappers("swap", group.swapper).swap_frames(frames, chosen, identities, group.clock)
        except TritonCallError as error:
            self._server_failed(group, positions, error)
            return
        except Exception as error:  # noqa: BLE001 - one frame must not fail the others, nor stop the streams
            if len(positions) == 1:
                self._failed(group.round, *group.items[positions[0]], error, restart=True)
                return
            for position in positions:
                self._swap_apart(group, {position: faces[position]})
            return
        shared = {stage: _ms(group.clock.seconds[stage]) for stage in SHARED_STAGES}
        for i, position in enumerate(positions):
            stream, frame = group.items[position]
            header = {"seq": frame.seq, "ts": frame.ts, "faces": len(faces[position]), "batch": group.round.size,
                      "timings": dict(shared)}
            self._encoder_of(stream).put((group.round, stream, frame, out[i], header))

    # ------------------------------------------------------------------------------- encode

    def _encoder_of(self, stream: LiveStream) -> queue.Queue:
        return self._encoders[zlib.crc32(stream.id.encode()) % len(self._encoders)]

    def _encode_loop(self, jobs: queue.Queue) -> None:
        while (job := jobs.get()) is not None:
            self._encode(*job)

    def _encode(self, rnd: Round, stream: LiveStream, frame: Frame, rgb: np.ndarray, header: dict) -> None:
        started = time.perf_counter()
        height, width = frame.rgb.shape[:2]
        try:
            image = encode_frame(rgb[:height, :width], frame.kind, stream.options.quality)
        except Exception as error:  # noqa: BLE001 - this stream's frame only
            self._failed(rnd, stream, frame, error)
            return
        done = time.perf_counter()
        header["timings"].update(queue=_ms(rnd.taken - frame.arrived), encode=_ms(done - started),
                                 total=_ms(done - frame.arrived))
        self.metrics.latency.observe(done - frame.arrived)
        self._finished(rnd)  # before the answer goes: the round's time is known when its last answer is read
        stream.answer(frame.seq, header, image)

    # ------------------------------------------------------------------------------- endings

    def _finished(self, rnd: Round, frames: int = 1) -> None:
        """Frames of ``rnd`` answered or failed; its last one frees its place in the pipeline and times it."""
        with self._wake:
            rnd.left -= frames
            if rnd.left > 0:
                return
            self._rounds -= 1
            self._round_times.add(rnd.size, time.perf_counter() - rnd.taken)
            self._wake.notify()

    def _server_failed(self, group: Group, positions, error: TritonCallError) -> None:
        positions = list(positions)
        log.error("live batch of %d frames: the inference server failed: %s", len(positions), error)
        for position in positions:
            stream, frame = group.items[position]
            stream.answer(frame.seq, error_message(ErrorCode.INFERENCE_UNAVAILABLE, f"the inference server failed: "
                                                   f"{error}; the stream goes on, retry", frame.seq), None)
        self._finished(group.round, len(positions))

    def _failed(self, rnd: Round, stream: LiveStream, frame: Frame, error: Exception, restart: bool = False) -> None:
        """One frame failed: its stream gets an error for it; one log line. ``restart``: in the swap thread, where
        the stream's tracking may be what failed, it starts afresh."""
        log.error("live stream %s: frame %d failed: %s: %s", stream.id, frame.seq, type(error).__name__, error)
        log.debug("live stream %s: frame %d", stream.id, frame.seq, exc_info=error)
        if restart:
            stream.restart_tracking()
        stream.answer(frame.seq, error_message(ErrorCode.INTERNAL_ERROR,
                                               "this frame failed on the server; the stream goes on", frame.seq), None)
        self._finished(rnd)
