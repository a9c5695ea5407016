"""One face-swap job: source photos + a target video (or photo) -> the output file.

Four stages overlap through bounded queues, so memory stays bounded for any video length:

    decode (DALI / PyAV) -> detect (DALI downscale, Triton ``detect``) + track & smooth
        -> align (one batched DALI warp_affine) + Triton ``swap`` + blend (DALI) -> encode (ffmpeg)
"""
from __future__ import annotations

import queue
import re
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from swapstream.pipelines.align import Aligner, require_device
from swapstream.pipelines.blend import Blender
from swapstream.pipelines.decode import open_video
from swapstream.pipelines.resize import Downscaler
from swapstream.pipelines.templates import estimate_similarity, template_points
from swapstream.services.swap.encoder import VideoWriter, write_image
from swapstream.services.swap.option_bounds import MAX_FACES_PER_FRAME, check_swap_options
from swapstream.services.swap.tracking import FaceTracker, LargestTrackSelector, TrackedFace, TrackedFrame
from swapstream.services.triton.client import Detections, SwapstreamClient

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
MAX_PIXELS = 7680 * 4320  # 8K UHD
FACE_SIZE = 512
IDENTITY_SIZE = 112
QUEUE_DEPTH = 2
_DONE = object()  # end of a stream of items
STAGES = ("decode", "detect", "track", "align", "swap", "blend", "encode")


class SwapInputError(ValueError):
    """Bad input (source photo, target, options); the message says what and what to do."""


class PhotoError(SwapInputError):
    """A photo that is refused; ``reason`` says why without naming the file (the caller knows it by its role)."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.reason = reason


@dataclass
class SwapOptions:
    faces: str = "all"                 # all | largest | reference
    reference: Path | None = None      # with faces="reference": a photo of the face to swap
    reference_distance: float = 0.6    # cosine distance to the reference below which a face is swapped
    score_threshold: float = 0.6
    detect_size: int = 640
    batch_size: int = 16
    smoothing: bool = True
    max_gap: int = 5
    crf: int = 18
    codec: str = "libx264"
    preset: str = "medium"
    audio: bool = True
    device: str = "cpu"

    def __post_init__(self):
        try:
            check_swap_options(vars(self))
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


class StageClock:
    """Adds the time spent in each stage to ``seconds``; ``observer(stage, seconds)`` sees every timed call.

    Stages run in different threads, so one stage's time overlaps the others': their sum exceeds the wall time.
    """

    def __init__(self, seconds: dict[str, float] | None = None,
                 observer: Callable[[str, float], None] | None = None):
        self.seconds = seconds if seconds is not None else dict.fromkeys(STAGES, 0.0)
        self.observer = observer
        self._lock = threading.Lock()

    @contextmanager
    def __call__(self, stage: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            with self._lock:
                self.seconds[stage] += elapsed
            if self.observer:
                self.observer(stage, elapsed)

    def iterate(self, stage: str, items: Iterable) -> Iterator:
        """``items``, with the time taken to produce each one counted to ``stage``."""
        iterator = iter(items)
        while True:
            with self(stage):
                item = next(iterator, _DONE)
            if item is _DONE:
                return
            yield item


PHOTO_FORMATS = {"JPEG", "PNG", "WEBP", "BMP"}  # what IMAGE_SUFFIXES name, as Pillow reports it


def read_photo(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A still photo as RGB. Its header is read first: the format, the frame count and the size are checked before
    any pixel is decoded (an 856 KB PNG can claim 30000x30000 pixels, 2.7 GB decoded). Raises PhotoError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as header:
                kind, (width, height), frames = header.format, header.size, getattr(header, "n_frames", 1)
    except Image.DecompressionBombError as error:  # Pillow's own limit, far above ours: its message has the count
        claimed = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{claimed.group(1)} pixels" if claimed else "its size"
        raise PhotoError(path, f"{size} is {_over(max_pixels)}; downscale it") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise PhotoError(path, "not a readable photo (jpg, png, webp, bmp); check the file") from None
    if kind not in PHOTO_FORMATS:
        raise PhotoError(path, f"{kind} photos are not accepted; send a jpg, png, webp or bmp")
    if width * height > max_pixels:
        raise PhotoError(path, f"{width}x{height} is {_over(max_pixels)}; downscale it")
    if frames != 1:
        raise PhotoError(path, f"an animated image ({frames} frames); send a still photo")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise PhotoError(path, "not a readable photo (jpg, png, webp, bmp): damaged or truncated")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _over(max_pixels: int) -> str:
    limit = "8K" if max_pixels == MAX_PIXELS else f"{max_pixels} pixels"
    return f"larger than {limit} ({max_pixels} pixels allowed in a photo)"


def similarity_to(landmarks: np.ndarray, template: str, size: int) -> np.ndarray:
    """[K,2,3] frame -> crop matrices for [K,5,2] landmarks."""
    target = template_points(template, size)
    return np.stack([estimate_similarity(lm, target) for lm in landmarks]).reshape(-1, 2, 3)


def mean_identity(embeddings: list[np.ndarray]) -> np.ndarray:
    """Several photos' embeddings -> one identity: their mean, L2-normalised."""
    mean = np.mean(embeddings, axis=0)
    return (mean / np.linalg.norm(mean)).astype(np.float32)


class FaceSwapper:
    """Holds the DALI pipelines and the Triton client for the jobs of one process."""

    def __init__(self, client: SwapstreamClient, options: SwapOptions):
        self.client = client
        self.options = options
        require_device(options.device)
        self.downscaler = Downscaler(options.detect_size, options.device)
        self.aligner = Aligner(FACE_SIZE, options.device)
        self.identity_aligner = Aligner(IDENTITY_SIZE, options.device)
        self.blender = Blender(options.device)
        self.clock = StageClock()  # replaced by run_swap for each job

    # ----------------------------------------------------------------------------------- identities

    def detect(self, frames: np.ndarray, image_sizes: np.ndarray | None = None) -> Detections:
        """Detections in full-resolution coordinates for frames of one size (or padded to one size, with each
        frame's own (h, w) in ``image_sizes``)."""
        with self.clock("detect"):
            small = self.downscaler(frames)
            sx, sy = frames.shape[2] / small.shape[2], frames.shape[1] / small.shape[1]
            if image_sizes is not None:
                image_sizes = np.rint(np.asarray(image_sizes) / [sy, sx]).astype(np.int32)
            found = self.client.detect(small, image_sizes=image_sizes, score_threshold=self.options.score_threshold,
                                       detect_size=self.options.detect_size)
        found = _strongest_per_frame(found, MAX_FACES_PER_FRAME)
        return Detections(found.boxes * [sx, sy, sx, sy], found.scores, found.landmarks * [sx, sy],
                          found.frame_index)

    def embed(self, frames: np.ndarray, frame_index: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        if len(landmarks) == 0:
            return np.zeros((0, 512), np.float32)
        crops = self.identity_aligner(frames, frame_index, similarity_to(landmarks, "arcface_112_v2", IDENTITY_SIZE))
        return self.client.identity(crops)

    def photo_embedding(self, path: Path, role: str, notes: list[str]) -> np.ndarray:
        """The embedding of the face in one photo: its only face, or the largest one (said in ``notes``)."""
        return self.image_embedding(read_photo(path), f"{role} photo {path}", path.name, notes)[0]

    def image_embedding(self, rgb: np.ndarray, what: str, name: str, notes: list[str]) -> tuple[np.ndarray, int]:
        """(embedding of the largest face, faces found) in an RGB image; ``what`` names it in the error."""
        found = self.detect(rgb[None])
        if len(found) == 0:
            raise SwapInputError(f"{what}: no face found (score >= {self.options.score_threshold}). "
                                 "Use a photo where the face is visible and frontal, or lower --score-threshold.")
        areas = np.prod(found.boxes[:, 2:] - found.boxes[:, :2], axis=1)
        pick = int(np.argmax(areas))
        if len(found) > 1:
            notes.append(f"{name}: {len(found)} faces, using the largest")
        return self.embed(rgb[None], np.zeros(1, np.int32), found.landmarks[pick:pick + 1])[0], len(found)

    def source_embedding(self, photos: list[Path], notes: list[str]) -> np.ndarray:
        """Mean of the photos' embeddings, L2-normalised."""
        return mean_identity([self.photo_embedding(p, "source", notes) for p in photos])

    # --------------------------------------------------------------------------------------- frames

    def swap_frames(self, frames: np.ndarray, faces: list[tuple[int, TrackedFace]],
                    embedding: np.ndarray) -> np.ndarray:
        """Frames with the given faces (frame position in ``frames``, face) swapped; ``embedding``: one source
        identity [512] for all faces, or one per face [K,512]."""
        if not faces:
            return frames
        frame_index = np.array([i for i, _ in faces], np.int32)
        matrices = similarity_to(np.stack([f.landmarks for _, f in faces]), "ffhq_512", FACE_SIZE)
        with self.clock("align"):
            aligned = self.aligner(frames, frame_index, matrices)
        with self.clock("swap"):
            swapped, masks = self.client.swap(aligned, embedding)
        with self.clock("blend"):
            return self.blender(frames, swapped, masks, frame_index, matrices)


def _strongest_per_frame(found: Detections, limit: int) -> Detections:
    """At most ``limit`` faces per frame, the highest-scoring ones, in their original order."""
    order = np.lexsort((-found.scores, found.frame_index))
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order)) - np.searchsorted(found.frame_index[order], found.frame_index[order])
    keep = rank < limit
    if keep.all():
        return found
    return Detections(found.boxes[keep], found.scores[keep], found.landmarks[keep], found.frame_index[keep])


class FaceSelector:
    """Which tracked faces to swap: all, the largest, or those that look like a reference photo."""

    def __init__(self, swapper: FaceSwapper, options: SwapOptions, reference: np.ndarray | None):
        self.swapper = swapper
        self.options = options
        self.reference = reference
        self._track_matches: dict[int, bool] = {}
        self._largest = LargestTrackSelector()

    def __call__(self, frames: np.ndarray, tracked: list[TrackedFrame]) -> list[tuple[int, TrackedFace]]:
        chosen = []
        for position, frame in enumerate(tracked):
            faces = frame.faces
            if self.options.faces == "largest":
                faces = self._largest(faces)
            chosen += [(position, face) for face in faces]
        if self.options.faces == "reference":
            self._judge_new_tracks(frames, chosen)
            chosen = [(p, f) for p, f in chosen if self._track_matches[f.track_id]]
        return chosen

    def _judge_new_tracks(self, frames: np.ndarray, chosen: list[tuple[int, TrackedFace]]) -> None:
        """A track is judged once, on its first face, by cosine distance to the reference identity."""
        first = {}
        for position, face in chosen:
            if face.track_id not in self._track_matches and face.track_id not in first:
                first[face.track_id] = (position, face)
        if not first:
            return
        positions = np.array([p for p, _ in first.values()], np.int32)
        embeddings = self.swapper.embed(frames, positions, np.stack([f.landmarks for _, f in first.values()]))
        for track_id, embedding in zip(first, embeddings):
            self._track_matches[track_id] = 1.0 - float(embedding @ self.reference) < self.options.reference_distance


# ------------------------------------------------------------------------------------------- stages


class _Pipeline:
    """Runs generator stages in threads joined by bounded queues; the first error stops them all."""

    def __init__(self):
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def _put(self, q: queue.Queue, item) -> bool:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _drain(self, q: queue.Queue) -> Iterator:
        while True:
            try:
                item = q.get(timeout=0.1)
            except queue.Empty:
                if self.stop.is_set():
                    return
                continue
            if item is _DONE:
                return
            yield item

    def run(self, source: Iterable, stages: list[Callable[[Iterator], Iterator]]) -> Iterator:
        """Yields what the last stage yields; each stage maps an iterator of items to an iterator of items."""
        queues = [queue.Queue(QUEUE_DEPTH) for _ in range(len(stages) + 1)]
        feeders = [lambda: iter(source)] + [
            (lambda stage=stage, q=q: stage(self._drain(q))) for stage, q in zip(stages, queues)]

        def work(make_items, out_q):
            try:
                for item in make_items():
                    if not self._put(out_q, item):
                        return
            except BaseException as error:  # noqa: BLE001 - handed to the consumer
                self.error = self.error or error
                self.stop.set()
            finally:
                self._put(out_q, _DONE)

        threads = [threading.Thread(target=work, args=(feed, q), daemon=True)
                   for feed, q in zip(feeders, queues)]
        for thread in threads:
            thread.start()
        try:
            yield from self._drain(queues[-1])
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(timeout=30)
        if self.error:
            raise self.error


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


def run_swap(swapper: FaceSwapper, sources: list[Path], target: Path, output: Path,
             progress: Callable[[int, "SwapSummary"], None] | None = None,
             stage_observer: Callable[[str, float], None] | None = None) -> SwapSummary:
    """Swaps the faces of ``target`` (video or photo) with the identity in ``sources``; writes ``output``.

    ``progress(frames, summary)`` is called as frames are written (the summary so far); an exception it raises (e.g. a cancellation)
    stops the job and leaves no output. ``stage_observer(stage, seconds)`` sees every timed stage call.
    """
    options = swapper.options
    summary = SwapSummary()
    swapper.clock = StageClock(summary.stage_seconds, stage_observer)
    started = time.perf_counter()
    if not sources:
        raise SwapInputError("give at least one source photo (--source face.jpg)")
    embedding = swapper.source_embedding(sources, summary.notes)
    reference = None
    if options.faces == "reference":
        if options.reference is None:
            raise SwapInputError("--faces reference needs --reference PHOTO of the face to swap")
        reference = swapper.photo_embedding(options.reference, "reference", summary.notes)
    selector = FaceSelector(swapper, options, reference)

    def swap_stage(batches):
        for frames, tracked in batches:
            chosen = selector(frames, tracked)
            summary.frames_without_face += sum(1 for t in tracked if not t.faces)
            summary.faces_swapped += len(chosen)
            yield swapper.swap_frames(frames, chosen, embedding)

    if target.suffix.lower() in IMAGE_SUFFIXES:
        with swapper.clock("decode"):
            photo = read_photo(target)
        _check_resolution(target, *photo.shape[:2])
        tracked = _detect_and_track(swapper, [(0, photo[None])], fps=30.0)
        (result,) = list(swap_stage(_batches(tracked, 1)))
        with swapper.clock("encode"):
            write_image(output, result[0])
        summary.frames = 1
        if progress:
            progress(1, summary)
    else:
        _swap_video(swapper, target, output, swap_stage, summary, progress)
    summary.seconds = time.perf_counter() - started
    if summary.faces_swapped == 0:
        summary.notes.append("no face was swapped: the output shows the input unchanged")
    return summary


def _check_resolution(path: Path, height: int, width: int) -> None:
    if height * width > MAX_PIXELS:
        raise SwapInputError(f"{path}: {width}x{height} is larger than 8K ({MAX_PIXELS} pixels); "
                             "downscale it first, e.g. ffmpeg -i in.mp4 -vf scale=3840:-2 out.mp4")


def _detect_and_track(swapper: FaceSwapper, batches: Iterable[tuple[int, np.ndarray]],
                      fps: float) -> Iterator[tuple[np.ndarray, TrackedFrame]]:
    """(start index, frames) batches -> (frame, its tracked faces) in order, once each frame is final."""
    tracker = FaceTracker(max_gap=swapper.options.max_gap, fps=fps)
    pending: dict[int, np.ndarray] = {}
    smoothing = swapper.options.smoothing

    def finished(frames: list[TrackedFrame]):
        for tracked in frames:
            if not smoothing:
                tracked = replace(tracked, faces=[replace(f, landmarks=f.raw_landmarks) for f in tracked.faces])
            yield pending.pop(tracked.frame_index), tracked

    clock = swapper.clock
    for start, frames in batches:
        found = swapper.detect(frames)
        for offset, frame in enumerate(frames):
            pending[start + offset] = frame
            mine = found.frame_index == offset
            with clock("track"):
                done = tracker.push(start + offset, found.boxes[mine], found.landmarks[mine], found.scores[mine])
            yield from finished(done)
    with clock("track"):
        done = tracker.flush()
    yield from finished(done)


def _swap_video(swapper: FaceSwapper, target: Path, output: Path, swap_stage, summary: SwapSummary,
                progress) -> None:
    options = swapper.options
    reader = open_video(target, options.device, options.batch_size)
    info = reader.info
    _check_resolution(target, info.height, info.width)
    if info.variable_frame_rate:
        summary.notes.append(f"variable frame rate input: written at its average {float(info.fps):.3f} fps")
    writer = VideoWriter(output, info.width, info.height, info.fps, audio_from=target if options.audio else None,
                         video_start=info.start_time, codec=options.codec, crf=options.crf, preset=options.preset)
    pipeline = _Pipeline()
    clock = swapper.clock
    stages = [
        lambda batches: _batches(_detect_and_track(swapper, ((b.start, b.frames) for b in batches),
                                                   float(info.fps)), options.batch_size),
        swap_stage,
    ]
    with writer:
        for frames in pipeline.run(clock.iterate("decode", reader), stages):
            with clock("encode"):
                writer.write(frames)
            summary.frames += len(frames)
            if progress:
                progress(len(frames), summary)
    summary.notes += writer.notes  # e.g. odd sizes padded, audio re-encoded
