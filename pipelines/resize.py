"""DALI downscaling of frames for the detector: the detector sees at most ``longest`` pixels a side, so the
frames sent to Triton are small; boxes are mapped back with ``scale``."""
from __future__ import annotations

import threading

import numpy as np
from nvidia.dali import fn, pipeline_def, types

from swapstream.pipelines.align import check_device, pipeline_kwargs, to_numpy


def _resize_pipeline(device: str, max_batch_size: int, device_id: int):
    @pipeline_def(**pipeline_kwargs(device, max_batch_size, device_id))
    def resize():
        frames = fn.external_source(name="frames", dtype=types.UINT8, ndim=3, layout="HWC")
        sizes = fn.external_source(name="sizes", dtype=types.FLOAT, ndim=1)
        if device == "gpu":
            frames = frames.gpu()
        return fn.resize(frames, size=sizes, interp_type=types.INTERP_LINEAR, antialias=True, device=device)

    pipe = resize()
    pipe.build()
    return pipe


class Downscaler:
    """Frames [N,H,W,3] -> frames whose longest side is at most ``longest`` (never enlarged)."""

    def __init__(self, longest: int, device: str = "cpu", max_batch_size: int = 64, device_id: int = 0):
        self.longest = longest
        self.max_batch_size = max_batch_size
        self._pipe = _resize_pipeline(check_device(device), max_batch_size, device_id)
        self._lock = threading.Lock()

    def scale(self, height: int, width: int) -> float:
        return min(1.0, self.longest / max(height, width))

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """The downscaled frames (the input itself when it is small enough)."""
        n, h, w = frames.shape[:3]
        scale = self.scale(h, w)
        if scale == 1.0:
            return frames
        size = np.array([round(h * scale), round(w * scale)], np.float32)
        out = []
        for start in range(0, n, self.max_batch_size):
            chunk = frames[start:start + self.max_batch_size]
            with self._lock:
                (resized,) = self._pipe.run(frames=list(chunk), sizes=[size] * len(chunk))
            out.extend(to_numpy(resized))
        return np.stack(out)
