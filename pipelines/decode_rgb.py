"""Decoded PyAV frames to RGB, written straight into a batch's array.

swscale's accurate conversion (bilinear chroma over the full width, exact rounding) is the one the reader keeps:
it matches DALI's decoder to 0.09 levels, where swscale's default (nearest-neighbour chroma) is 1.2 levels off on
average and up to 20 at colour edges. To packed ``rgb24`` that conversion runs swscale's generic per-pixel writer
(6-10 ms a 720p frame here); to planar ``gbrp`` it runs the vectorised one (3-5 ms) and gives the same bytes, so
the planes are converted to planar and interleaved by OpenCV into the batch (0.3 ms). The bytes are identical to
``rgb24`` (tests/pipelines/test_decode_rgb.py, 4:2:0, 4:4:4 and 10-bit).
"""
from __future__ import annotations

import sys

import cv2
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

# swscale's defaults (nearest-neighbour chroma, approximate rounding) differ from DALI's own YUV->RGB by about one
# level on average; these flags bring PyAV's output to DALI's (measured: mean 0.09 levels on VP9 4:2:0, exact on
# 4:4:4 and 10-bit).
RGB_CONVERSION = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT


# np.rot90(x, turns) turns counter-clockwise; the OpenCV rotation giving the same array, by quarter turns.
_ROTATE = {1: cv2.ROTATE_90_COUNTERCLOCKWISE, 2: cv2.ROTATE_180, 3: cv2.ROTATE_90_CLOCKWISE}


def _plane(plane, height: int, width: int) -> np.ndarray:
    return np.frombuffer(plane, np.uint8).reshape(height, plane.line_size)[:, :width]


class RgbWriter:
    """Converts frames to RGB into given arrays. One per video: it keeps swscale's context (built once)."""

    def __init__(self):
        # One thread: on a busy machine swscale's slice threads cost more CPU than they save. The overlap comes
        # from the decoder's own thread instead (pipelines/ahead.py).
        self._reformatter = VideoReformatter()
        # A turned frame is interleaved here first, then turned into ``out`` by OpenCV (0.7 ms a 720p frame;
        # ``out[...] = np.rot90(...)``, a strided copy, took 28 ms).
        self._scratch: np.ndarray | None = None

    def write(self, frame, out: np.ndarray, turns: int = 0) -> None:
        """``frame`` as RGB into ``out`` [H, W, 3] uint8, turned ``turns`` quarter turns counter-clockwise."""
        planar = self._reformatter.reformat(frame, format="gbrp", interpolation=RGB_CONVERSION, threads=1)
        g, b, r = (_plane(p, frame.height, frame.width) for p in planar.planes)
        if turns % 4 == 0:
            cv2.merge([r, g, b], dst=out)
            return
        shape = (frame.height, frame.width, 3)
        if self._scratch is None or self._scratch.shape != shape:
            self._scratch = np.empty(shape, np.uint8)
        cv2.merge([r, g, b], dst=self._scratch)
        cv2.rotate(self._scratch, _ROTATE[turns % 4], dst=out)


class BatchArrays:
    """A reader's batch arrays, [n, H, W, 3] uint8: one the consumer has let go of is filled again.

    A new batch is fresh memory from the kernel (44 MB at 16 frames of 720p, too big for malloc to keep), which the
    kernel zeroes on first touch: 0.5-0.9 CPU-ms a 720p frame here. An array is taken again only when nothing but
    this holds it (no batch and no view of it is left), so a consumer that keeps its batches keeps them intact.
    """

    def __init__(self, shape: tuple[int, ...], keep: int = 4):
        """``keep``: how many of the latest arrays are looked at (a consumer a few batches behind still gains)."""
        self._shape = shape
        self._keep = keep
        self._arrays: list[np.ndarray] = []

    def take(self) -> np.ndarray:
        for array in self._arrays:
            if sys.getrefcount(array) <= _REFS_WHEN_FREE:
                return array
        array = np.empty(self._shape, np.uint8)
        self._arrays = [array, *self._arrays[: self._keep - 1]]
        return array


def _refs_when_free() -> int:
    """``sys.getrefcount`` of an array held only by a list, looked at as ``take`` does (3 on CPython 3.11)."""
    arrays = [np.empty(0)]
    for array in arrays:
        return sys.getrefcount(array)


_REFS_WHEN_FREE = _refs_when_free()
