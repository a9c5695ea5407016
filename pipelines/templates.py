"""Five-point face templates and the similarity fit that maps landmarks onto them.

Landmark order everywhere is YuNet's / OpenCV FaceDetectorYN's: right eye, left eye, nose tip,
right mouth corner, left mouth corner (the subject's right eye is the one on the image's left).
The templates below use the same order.
"""

from __future__ import annotations

import numpy as np

# facefusion's WARP_TEMPLATES (face_helper.py), normalised to [0, 1] of the crop side.
_NORMALISED_TEMPLATES: dict[str, np.ndarray] = {
    "ffhq_512": np.array(
        [
            [0.37691676, 0.46864664],
            [0.62285697, 0.46912813],
            [0.50123859, 0.61331904],
            [0.39308822, 0.72541100],
            [0.61150205, 0.72490465],
        ],
        dtype=np.float64,
    ),
    "arcface_112_v2": np.array(
        [
            [0.34191607, 0.46157411],
            [0.65653393, 0.45983393],
            [0.50022500, 0.64050536],
            [0.37097589, 0.82469196],
            [0.63151696, 0.82325089],
        ],
        dtype=np.float64,
    ),
    "arcface_112_v1": np.array(
        [
            [0.35473214, 0.45658929],
            [0.64526786, 0.45658929],
            [0.50000000, 0.61154464],
            [0.37913393, 0.77687500],
            [0.62086607, 0.77687500],
        ],
        dtype=np.float64,
    ),
}

# The crop size each template is named after.
_NATIVE_SIZES = {"ffhq_512": 512, "arcface_112_v1": 112, "arcface_112_v2": 112}

TEMPLATE_NAMES = tuple(_NORMALISED_TEMPLATES)


def template_points(name: str, size: int) -> np.ndarray:
    """The template's 5 points in pixel coordinates of a `size` x `size` crop, shape (5, 2)."""
    try:
        normalised = _NORMALISED_TEMPLATES[name]
    except KeyError:
        raise ValueError(
            f"unknown face template {name!r}; known templates: {', '.join(TEMPLATE_NAMES)}"
        ) from None
    if size <= 0:
        raise ValueError(f"template size must be positive, got {size}")
    return normalised * float(size)


ffhq_512 = template_points("ffhq_512", _NATIVE_SIZES["ffhq_512"])
arcface_112_v1 = template_points("arcface_112_v1", _NATIVE_SIZES["arcface_112_v1"])


def estimate_similarity(src_pts: np.ndarray, dst_pts: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) taking src to dst.

    Returns the 2x3 float64 matrix M with dst ~= M @ [x, y, 1], in OpenCV's convention, i.e. the
    matrix `cv2.warpAffine(image, M, ...)` needs to warp the image of `src_pts` onto `dst_pts`.
    This is Umeyama's closed form in 2-D: with centred points, the optimal
    [[a, -b], [b, a]] is a = sum(x*u + y*v) / sum(x^2 + y^2), b = sum(x*v - y*u) / sum(x^2 + y^2).
    On exact correspondences it equals cv2.estimateAffinePartial2D (facefusion's call, LMEDS).
    """
    src = _as_points(src_pts, "src_pts")
    dst = _as_points(dst_pts, "dst_pts")
    if len(src) != len(dst):
        raise ValueError(f"point counts differ: {len(src)} source vs {len(dst)} destination")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - src_mean, dst - dst_mean
    spread = float(np.sum(s * s))
    if spread <= 1e-12:
        raise ValueError("source points are all the same point; no similarity is defined")
    a = float(np.sum(s[:, 0] * d[:, 0] + s[:, 1] * d[:, 1])) / spread
    b = float(np.sum(s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0])) / spread
    linear = np.array([[a, -b], [b, a]])
    translation = dst_mean - linear @ src_mean
    return np.hstack([linear, translation[:, None]])


def _as_points(points: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2 or len(arr) < 2:
        raise ValueError(f"{what} must have shape (n >= 2, 2), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contains NaN or infinite coordinates")
    return arr
