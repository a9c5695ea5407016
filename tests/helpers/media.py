"""The shared real media and models (``../shared`` or ``SWAPSTREAM_SHARED``), and readers for test assertions."""
from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np

from swapstream.services.triton.repository import shared_dir

SHARED = shared_dir()
MEDIA = SHARED / "media"
YUNET_REFERENCE = SHARED / "models" / "face_detection_yunet_2023mar.onnx"


def read_rgb(name: str) -> np.ndarray:
    image = cv2.imread(str(MEDIA / name), cv2.IMREAD_COLOR)
    assert image is not None, f"cannot read {name}"
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def frames_of(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
