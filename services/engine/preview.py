"""One swapped frame of a target at a chosen time, before the whole video runs (``POST /v1/preview``).

The frame is found by seeking with PyAV (to the key frame before it, then decoding forward), converted to RGB as
the job's reader converts it, detected, chosen and swapped by the same ``FaceSwapper`` and ``FaceSelector`` as a
job: what the preview shows is what the job will write for that frame (less the tracker's smoothing, which needs
the frames around it). Source identities are kept in a small bounded cache, so that moving the slider of one
preview does not embed the source photos again.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from swapstream.pipelines.decode import (_RGB_CONVERSION, VideoDecodeError, VideoInfo, _video_stream,
                                         open_container)
from swapstream.services.engine.errors import ErrorCode, SwapInputError
from swapstream.services.engine.selection import FaceSelector
from swapstream.services.engine.swapper import FaceSwapper
from swapstream.services.engine.tracking import TrackedFace, TrackedFrame

IDENTITY_CACHE_SIZE = 16  # source identities kept (a mesh identity is about 1 MB: its 512² texture)


@dataclass(frozen=True)
class FrameAt:
    index: int         # the frame's position in the video (0 for a photo)
    time: float        # its presentation time, seconds from the first frame
    rgb: np.ndarray    # [H, W, 3] uint8, upright


def frame_index_at(info: VideoInfo, seconds: float) -> int:
    """The frame shown at ``seconds`` from the first frame: the last one that starts at or before it. Raises
    ``SwapInputError`` (bad_option) for a time outside the video."""
    if not 0.0 <= seconds <= info.duration + 1e-6:
        raise SwapInputError(f"time: {seconds:g} s is outside the video, which lasts {info.duration:.3f} s; "
                             f"choose a time from 0 to {info.duration:.3f}", ErrorCode.BAD_OPTION)
    times = info.times - info.start_time
    return max(int(np.searchsorted(times, seconds + 1e-6, side="right")) - 1, 0)


def frame_at(info: VideoInfo, seconds: float) -> FrameAt:
    """The upright RGB frame shown at ``seconds``: a seek to the key frame before it, then decoding up to it."""
    index = frame_index_at(info, seconds)
    wanted = int(info.pts[index])
    try:
        frame = _decode_to(info, wanted, seek=True)
        if frame is None:  # the seek landed past the frame (a container without a usable index): from the start
            frame = _decode_to(info, wanted, seek=False)
    except av.FFmpegError as error:
        raise VideoDecodeError(f"{info.path}: decoding the frame at {seconds:g} s failed ({error}); the file is "
                               "probably damaged: fetch it again or re-encode it") from error
    if frame is None:
        raise VideoDecodeError(f"{info.path}: no frame could be decoded at {seconds:g} s; the file is probably "
                               "damaged: fetch it again or re-encode it")
    rgb = VideoReformatter().reformat(frame, format="rgb24", interpolation=_RGB_CONVERSION, threads=1).to_ndarray()
    rgb = np.ascontiguousarray(np.rot90(rgb, info.rotation // 90))
    if rgb.shape[:2] != (info.height, info.width):
        raise VideoDecodeError(f"{info.path}: the frame at {seconds:g} s is {rgb.shape[1]}x{rgb.shape[0]}, not the "
                               f"{info.width}x{info.height} of its first frame; re-encode the video at one size")
    return FrameAt(index, float(info.times[index] - info.start_time), rgb)


def _decode_to(info: VideoInfo, wanted: int, seek: bool):
    """The last decoded frame whose pts is at most ``wanted``; None when the first one decoded is already past it."""
    with open_container(info.path) as container:
        stream = _video_stream(container)
        stream.thread_type = "AUTO"
        if seek:
            container.seek(wanted, stream=stream, backward=True, any_frame=False)
        last = None
        for frame in container.decode(stream):
            if frame.pts is not None and frame.pts > wanted:
                return last
            last = frame
            if frame.pts == wanted:
                return last
        return last


# ------------------------------------------------------------------------------------------------- identities

def file_digest(paths: Sequence[Path]) -> str:
    """One digest of the photos' bytes, in order: the cache key of the identity they make."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


class IdentityCache:
    """The last ``size`` source identities, by key (swapper, score threshold, the photos' digest); thread-safe.
    Two callers asking for the same missing key both make it (rare, and cheaper than holding a lock over Triton)."""

    def __init__(self, size: int = IDENTITY_CACHE_SIZE):
        self.size = size
        self._items: OrderedDict[tuple, dict] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, make: Callable[[], dict]) -> tuple[dict, bool]:
        """(the identity, True when it came from the cache)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key], True
        identity = make()
        with self._lock:
            self._items[key] = identity
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return identity, False

    def __len__(self) -> int:
        return len(self._items)


# ------------------------------------------------------------------------------------------------------ the frame

@dataclass(frozen=True)
class PreviewFace:
    number: int           # 1, 2, ... left to right: how the page and the user name it
    box: list[float]      # x1, y1, x2, y2 in frame pixels
    score: float
    swapped: bool

    def view(self) -> dict:
        return {"number": self.number, "box": [round(v, 1) for v in self.box], "score": round(self.score, 4),
                "swapped": self.swapped}


@dataclass
class Preview:
    rgb: np.ndarray                              # the swapped frame
    faces: list[PreviewFace] = field(default_factory=list)

    @property
    def faces_swapped(self) -> int:
        return sum(face.swapped for face in self.faces)


def faces_at_points(boxes: np.ndarray, points: Sequence[Sequence[float]]) -> np.ndarray:
    """Which boxes [K,4] contain at least one of ``points`` [[x, y], ...] (frame pixels): a bool mask [K]."""
    if len(boxes) == 0 or not len(points):
        return np.zeros(len(boxes), bool)
    xy = np.asarray(points, np.float64).reshape(-1, 2)
    inside = ((xy[None, :, 0] >= boxes[:, None, 0]) & (xy[None, :, 0] <= boxes[:, None, 2])
              & (xy[None, :, 1] >= boxes[:, None, 1]) & (xy[None, :, 1] <= boxes[:, None, 3]))
    return inside.any(axis=1)


def preview_frame(swapper: FaceSwapper, rgb: np.ndarray, identity: dict, selector: FaceSelector, *,
                  score_threshold: float, points: Sequence[Sequence[float]] | None = None) -> Preview:
    """One frame detected, chosen and swapped. ``points``: only the faces whose boxes contain one of them (the
    user's clicks); else the faces the ``selector`` (the ``faces`` option) chooses."""
    found = swapper.detect(rgb[None], score_threshold=score_threshold)
    order = np.lexsort((found.boxes[:, 1], found.boxes[:, 0])) if len(found) else np.zeros(0, np.int64)
    faces = [TrackedFace(number, found.boxes[i], found.landmarks[i], found.landmarks[i], float(found.scores[i]),
                         False) for number, i in enumerate(order, start=1)]
    if points is not None:
        picked = faces_at_points(np.array([f.box for f in faces]).reshape(-1, 4), points)
        chosen = [(0, face) for face, keep in zip(faces, picked) if keep]
    else:
        chosen = selector(rgb[None], [TrackedFrame(0, faces)])
    swapped_ids = {face.track_id for _, face in chosen}
    out = swapper.swap_frames(rgb[None].copy(), chosen, [identity])[0] if chosen else rgb
    return Preview(out, [PreviewFace(f.track_id, [float(v) for v in f.box], f.score, f.track_id in swapped_ids)
                         for f in faces])
