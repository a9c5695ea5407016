"""A whole swap, offline: source photos + a target video (or photo) -> the output file (``run_swap``).

Four stages overlap through bounded queues, so memory stays bounded for any video length:

    decode (DALI / PyAV) -> detect (DALI downscale, Triton ``detect``) + track & smooth
        -> align + swap + blend (two batches at once) -> encode (ffmpeg)
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from swapstream.pipelines.ahead import made_in_stages
from swapstream.pipelines.device import on_device, to_host
from swapstream.services.engine.clock import STAGES, StageClock
from swapstream.services.engine.encoder import VideoWriter, write_image
from swapstream.services.engine.errors import SwapInputError
from swapstream.services.engine.mesh_tracking import VideoLocator
from swapstream.services.engine.photos import IMAGE_SUFFIXES, MAX_PIXELS, read_photo
from swapstream.services.engine.picking import find_picks, identities, requested
from swapstream.services.engine.selection import FaceSelector
from swapstream.services.engine.swapper import FaceSwapper
from swapstream.services.engine.tracking import FaceTracker, TrackedFrame
from swapstream.services.engine.trim import check_for_photo, open_part
from swapstream.services.options import check_bounds, default

QUEUE_DEPTH = 2
# Batches swapped at once: while one batch's call is in Triton (an ensemble runs its steps one after another), the
# other's is sent, aligned or blended. ``swapstream bench`` (the stand-in SimSwap chain, batch 8, two runs each,
# interleaved): 6.2-6.3 frames/s one at a time, 6.9-7.3 two.
SWAPS_IN_FLIGHT = 2


@dataclass
class SwapOptions:
    """What one run is asked to do (the user-facing ones are in ``swapstream.services.options``)."""
    faces: str = default("faces")                  # all | largest | reference
    reference: Path | None = None                  # with faces="reference": a photo of the face to swap
    reference_distance: float = default("reference_distance")
    score_threshold: float = default("score_threshold")
    batch_size: int = default("batch_size")
    smoothing: bool = default("smoothing")
    max_gap: int = 5
    crf: int = default("crf")
    encoder: str = default("encoder")
    preset: str = default("preset")
    audio: bool = default("audio")
    device: str = default("device")
    tracking: str = default("tracking")            # mesh | detector (engine/mesh_tracking.py)
    pick_time: float | None = default("pick_time")  # the faces under pick_points then (engine/picking.py)
    pick_points: object = default("pick_points")
    pick_sources: object = default("pick_sources")
    start: float | None = default("start")         # the part of a video, seconds (engine/trim.py)
    end: float | None = default("end")
    max_height: int | None = default("max_height")  # output cap (the encoder scales)
    fps: float | None = default("fps")              # output rate, frames chosen evenly (engine/trim.py)

    def __post_init__(self):
        try:
            check_bounds("swap", vars(self))
        except ValueError as error:
            raise SwapInputError(f"option out of bounds: {error}") from None


@dataclass
class SwapSummary:
    frames: int = 0
    faces_swapped: int = 0
    frames_without_face: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    notes: list[str] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        text = (f"{self.frames} frames, {self.faces_swapped} faces swapped, {self.frames_without_face} frames "
                f"without a face, {self.seconds:.1f} s ({self.fps:.1f} frames/s)")
        return "\n".join([text] + self.notes)


def _batches(frames: Iterable[tuple[np.ndarray, TrackedFrame]], size: int) -> Iterator[tuple[np.ndarray, list]]:
    frames_buffer, tracked_buffer = [], []
    for frame, tracked in frames:
        frames_buffer.append(frame)
        tracked_buffer.append(tracked)
        if len(frames_buffer) == size:
            yield np.stack(frames_buffer), tracked_buffer
            frames_buffer, tracked_buffer = [], []
    if frames_buffer:
        yield np.stack(frames_buffer), tracked_buffer


@dataclass
class _Run:
    """One run's per-call state, handed to the stages: the swapper is shared, this is not."""
    swapper: FaceSwapper
    options: SwapOptions
    clock: StageClock
    summary: SwapSummary
    selector: FaceSelector
    identities: list[dict]  # one for every face, or one per source photo (pick_sources)
    # faces swapped per batch, counted into the summary once the batch is written (the swap runs batches ahead)
    faces_ahead: deque = field(default_factory=deque)

    def detect(self, frames: np.ndarray):
        return self.swapper.detect(frames, score_threshold=self.options.score_threshold, clock=self.clock)

    def swap_stage(self, batches: Iterable[tuple[np.ndarray, list[TrackedFrame]]]) -> Iterator[np.ndarray]:
        """The batches swapped, in order, ``SWAPS_IN_FLIGHT`` at once (the faces are chosen in order, here)."""
        with ThreadPoolExecutor(SWAPS_IN_FLIGHT, thread_name_prefix="swap-batch") as pool:
            pending: deque = deque()
            for frames, tracked in batches:
                chosen = self.selector.choose(frames, tracked)
                self.summary.frames_without_face += sum(1 for t in tracked if not t.faces)
                self.faces_ahead.append(len(chosen))
                pending.append(pool.submit(self.swapper.swap_chosen, frames, chosen, self.identities, self.clock))
                if len(pending) == SWAPS_IN_FLIGHT:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()


def run_swap(swapper: FaceSwapper, sources: list[Path], target: Path, output: Path,
             options: SwapOptions | None = None, *,
             progress: Callable[[int, SwapSummary], None] | None = None,
             stage_observer: Callable[[str, float], None] | None = None) -> SwapSummary:
    """Swaps the faces of ``target`` (video or photo) with the identity in ``sources``; writes ``output``.

    ``progress(frames, summary)`` is called as frames are written (the summary so far); an exception it raises
    (e.g. a cancellation) stops the job and leaves no output. ``stage_observer(stage, seconds)`` sees every timed
    stage call.
    """
    options = options or SwapOptions()
    summary = SwapSummary()
    started = time.perf_counter()
    run = _start(swapper, options, sources, target, summary, StageClock(summary.stage_seconds, stage_observer))
    if target.suffix.lower() in IMAGE_SUFFIXES:
        _swap_photo(run, target, output)
        if progress:
            progress(1, summary)
    else:
        _swap_video(run, target, output, progress)
    summary.seconds = time.perf_counter() - started
    summary.notes += run.clock.notes()
    if run.selector.cuts:
        summary.notes.append(f"{run.selector.cuts} cuts: the picked faces were looked for again after each")
    if summary.faces_swapped == 0:
        summary.notes.append("no face was swapped: the output shows the input unchanged")
    return summary


def _start(swapper: FaceSwapper, options: SwapOptions, sources: list[Path], target: Path, summary: SwapSummary,
           clock: StageClock) -> _Run:
    """The run's source identities and face selector (the photos and the picked faces are checked before the
    video is decoded)."""
    if not sources:
        raise SwapInputError("give at least one source photo (--source face.jpg)")
    call = {"score_threshold": options.score_threshold, "clock": clock}
    asked = requested(options.faces, options.pick_time, options.pick_points, options.pick_sources)
    made = identities(swapper, sources, asked, summary.notes, **call)
    picks = find_picks(swapper, target, asked, **call)
    reference = None
    if options.faces == "reference":
        if options.reference is None:
            raise SwapInputError("--faces reference needs --reference PHOTO of the face to swap")
        reference = swapper.photo_embedding(options.reference, "reference", summary.notes, **call)
    selector = FaceSelector(options.faces, options.smoothing, options.reference_distance, reference, swapper.embed,
                            picks)
    return _Run(swapper, options, clock, summary, selector, made)


def _check_resolution(path: Path, height: int, width: int) -> None:
    if height * width > MAX_PIXELS:
        raise SwapInputError(f"{path}: {width}x{height} is larger than 8K ({MAX_PIXELS} pixels); "
                             "downscale it first, e.g. ffmpeg -i in.mp4 -vf scale=3840:-2 out.mp4")


def _detect_and_track(run: _Run, batches: Iterable[tuple[int, np.ndarray]],
                      fps: float) -> Iterator[tuple[np.ndarray, TrackedFrame]]:
    """(start index, frames) batches -> (frame, its tracked faces) in order, once each frame is final."""
    tracker = FaceTracker(max_gap=run.options.max_gap, fps=fps)
    locate = VideoLocator(run.swapper, run.options.tracking, score_threshold=run.options.score_threshold,
                          clock=run.clock)
    pending: dict[int, np.ndarray] = {}
    for start, frames in batches:
        frames, on_gpu = (to_host(frames), frames) if on_device(frames) else (frames, None)  # one copy, for the host
        found = locate(frames, on_gpu)
        for offset, frame in enumerate(frames):
            pending[start + offset] = frame
            mine = found.frame_index == offset
            with run.clock("track"):
                done = tracker.push(start + offset, found.boxes[mine], found.landmarks[mine], found.scores[mine],
                                    new_shot=found.new_shot[offset], meshes=found.meshes[mine])
            yield from ((pending.pop(t.frame_index), t) for t in done)
    with run.clock("track"):
        done = tracker.flush()
    yield from ((pending.pop(t.frame_index), t) for t in done)


def _swap_photo(run: _Run, target: Path, output: Path) -> None:
    check_for_photo(vars(run.options))
    with run.clock("decode"):
        photo = read_photo(target)
    _check_resolution(target, *photo.shape[:2])
    tracked = _detect_and_track(run, [(0, photo[None])], fps=30.0)
    (result,) = list(run.swap_stage(_batches(tracked, 1)))
    with run.clock("encode"):
        write_image(output, result[0])
    run.summary.frames = 1
    run.summary.faces_swapped += run.faces_ahead.popleft()


def _swap_video(run: _Run, target: Path, output: Path, progress) -> None:
    options, clock, summary = run.options, run.clock, run.summary
    reader, plan = open_part(target, options)
    run.selector.frames_kept(plan.indices)
    info = reader.info
    _check_resolution(target, info.height, info.width)
    if info.variable_frame_rate:
        summary.notes.append(f"variable frame rate input: written at its average {float(info.fps):.3f} fps")
    summary.notes += plan.notes
    first = info.start_time if plan.indices is None else float(info.times[plan.indices[0]])
    writer = VideoWriter(output, info.width, info.height, plan.fps, audio_from=target if options.audio else None,
                         video_start=first, codec=options.encoder, crf=options.crf, preset=options.preset,
                         audio_window=plan.audio, max_height=options.max_height)
    stages = [
        lambda batches: _batches(_detect_and_track(run, ((b.start, b.frames) for b in batches), float(plan.fps)),
                                 options.batch_size),
        run.swap_stage,
    ]
    with writer:
        for frames in made_in_stages(clock.iterate("decode", reader), stages, QUEUE_DEPTH):
            with clock("encode"):
                writer.write(frames)
            summary.frames += len(frames)
            summary.faces_swapped += run.faces_ahead.popleft()
            if progress:
                progress(len(frames), summary)
    summary.notes += writer.notes  # e.g. odd sizes padded, audio re-encoded
