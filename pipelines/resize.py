"""DALI downscaling of frames for the detector: the detector sees at most ``longest`` pixels a side, so the
frames sent to Triton are small; boxes are mapped back with ``scale``."""
from __future__ import annotations

import numpy as np
from nvidia.dali import fn, types

from swapstream.pipelines.align import BatchedPipeline, check_device, input_device, source
from swapstream.pipelines.device import DeviceFrames, device_frames, on_device


def resize_graph(device: str, frames_on: str = "cpu"):
    """Graph (call inside a pipeline): inputs "frames" (HWC uint8, fed on ``frames_on``) and "sizes" (float32
    [h, w]); each frame resized to its size, linear with antialiasing."""
    frames = source("frames", frames_on, check_device(device), dtype=types.UINT8, ndim=3, layout="HWC")
    sizes = fn.external_source(name="sizes", dtype=types.FLOAT, ndim=1)
    return fn.resize(frames, size=sizes, interp_type=types.INTERP_LINEAR, antialias=True, device=device)


class Downscaler:
    """Frames [N,H,W,3] -> frames whose longest side is at most ``longest`` (never enlarged). Frames on the GPU
    (``DeviceFrames``, device "gpu") are downscaled there and stay there (Triton gets them by CUDA shared memory)."""

    def __init__(self, longest: int, device: str = "cpu", max_batch_size: int = 64, device_id: int = 0):
        self.longest = longest
        self._pipe = BatchedPipeline(lambda frames_on: resize_graph(device, frames_on), device, max_batch_size,
                                     device_id)

    def scale(self, height: int, width: int) -> float:
        return min(1.0, self.longest / max(height, width))

    def __call__(self, frames: np.ndarray | DeviceFrames) -> np.ndarray | DeviceFrames:
        """The downscaled frames (the input itself when it is small enough), copied once out of DALI (on the host,
        or on the GPU for ``DeviceFrames``)."""
        n, h, w = frames.shape[:3]
        scale = self.scale(h, w)
        if scale == 1.0:
            return frames
        size = (round(h * scale), round(w * scale))
        sizes = [np.array(size, np.float32)] * n
        if on_device(frames):
            input_device(self._pipe.device, frames)  # refused by a CPU pipeline before anything else
            return self._pipe.run_on_device((n, *size, frames.shape[-1]), frames=device_frames(frames).samples(),
                                            sizes=sizes)
        out = np.empty((n, *size, frames.shape[-1]), np.uint8)
        return self._pipe.run_into(out, frames=list(frames), sizes=sizes)
