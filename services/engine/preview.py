"""One swapped frame of a target at a chosen time, before the whole video runs (``POST /v1/preview``).

The frame is read by the job's own reader (PyAV, keeping that frame only: a seek to the key frame before it, then
decoding forward), detected, chosen and swapped by the same ``FaceSwapper`` and ``FaceSelector`` as a
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

import numpy as np

from swapstream.pipelines.decode import VideoDecodeError, VideoInfo, VideoReader
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
    """The upright RGB frame shown at ``seconds``, read by the job's reader keeping that frame only (a seek to the
    key frame before it, then decoding up to it); ``info`` is the probe's, kept by the caller (no probe per call)."""
    index = frame_index_at(info, seconds)
    reader = VideoReader(info, "cpu", 1, "pyav", keep=np.array([index]))
    batches = iter(reader)
    batch = next(batches, None)
    batches.close()  # the reader's container with it
    if batch is None:
        raise VideoDecodeError(f"{info.path}: no frame could be decoded at {seconds:g} s; the file is probably "
                               "damaged: fetch it again or re-encode it")
    return FrameAt(index, float(info.times[index] - info.start_time), batch.frames[0])


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


def preview_frame(swapper: FaceSwapper, frame: FrameAt, identities: list[dict], selector: FaceSelector, *,
                  score_threshold: float) -> Preview:
    """One frame detected, chosen by the job's ``selector`` (the ``faces`` option, or the picked faces) and swapped
    with ``identities`` (one for every face, or one per source photo for picked faces)."""
    found = swapper.detect(frame.rgb[None], score_threshold=score_threshold)
    order = np.lexsort((found.boxes[:, 1], found.boxes[:, 0])) if len(found) else np.zeros(0, np.int64)
    faces = [TrackedFace(number, found.boxes[i], found.landmarks[i], found.landmarks[i], float(found.scores[i]),
                         False) for number, i in enumerate(order, start=1)]
    chosen = selector.choose(frame.rgb[None], [TrackedFrame(frame.index, faces)])
    rgb = frame.rgb
    if chosen:
        rgb = swapper.swap_chosen(rgb[None].copy(), chosen, identities)[0]
    swapped = {face.track_id for _, face, _ in chosen}
    return Preview(rgb, [PreviewFace(f.track_id, [float(v) for v in f.box], f.score, f.track_id in swapped)
                         for f in faces])
