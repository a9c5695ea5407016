"""A done job's thumbnail: one swapped frame (the middle of a video, or the photo), at most ``SIZE`` pixels a side,
as JPEG beside the result (``results/<id>-<attempt>.thumb.jpg``). Made on first request and kept; deleted with the
result. Written under a temporary name and renamed, so concurrent first requests never see half a file."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from swapstream.pipelines.decode import probe_video
from swapstream.services.engine.encoder import write_image
from swapstream.services.engine.photos import read_photo
from swapstream.services.engine.preview import frame_at

SIZE = 320
SUFFIX = ".thumb.jpg"


def thumbnail_path(result: Path) -> Path:
    return result.with_name(result.stem + SUFFIX)


def thumbnail(result: Path) -> Path:
    """The thumbnail of a result file, made now if it is not there yet."""
    path = thumbnail_path(result)
    if not path.is_file():
        if result.suffix == ".mp4":
            info = probe_video(result)
            frame = frame_at(info, info.duration / 2).rgb  # the middle of the video
        else:
            frame = read_photo(result)
        write_image(path, _fit(frame), quality=85)
    return path


def _fit(rgb: np.ndarray) -> np.ndarray:
    height, width = rgb.shape[:2]
    scale = min(1.0, SIZE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return rgb if scale == 1.0 else cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)

