"""The shared real media and models (``../shared`` or ``SWAPSTREAM_SHARED``), and readers for test assertions."""
from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np

from swapstream.pipelines.templates import estimate_similarity, template_points
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


def aligned_faces(photo: str, template: str, size: int, client) -> np.ndarray:
    """The faces Triton detects in a shared photo, cut to a template with OpenCV (independent of DALI)."""
    rgb = read_rgb(photo)
    found = client.detect(rgb[None])
    crops = []
    for landmarks in found.landmarks:
        matrix = estimate_similarity(landmarks, template_points(template, size))
        crops.append(cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_LINEAR))
    return np.stack(crops)
