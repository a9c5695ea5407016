"""Paste processed faces back into their frames.

Each face crop and its mask are warped back with the inverse of the alignment matrix, but only
into the face's bounding box in the frame (the crop's corners mapped back, clipped to the frame),
so the work per face does not grow with the frame size. All K faces and masks are warped by one
DALI pipeline run (per `max_batch_size` faces): batched `warp_affine`, per-sample size and matrix. The face is
warped with its border pixels repeated and the mask with zeros outside the crop, as facefusion's
paste-back does, so a mask reaching the crop's edge does not pull in a dark fringe. The composite
`frame * (1 - m) + face * m`, m = mask / 255, is numpy over each box, one face after another, so
overlapping faces in one frame compose in order.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from nvidia.dali import fn, types

from swapstream.pipelines.align import BatchedPipeline, check_device, invert_affine, opencv_to_dali_inverse


@dataclass(frozen=True)
class Box:
    """Half-open pixel box [x0, x1) x [y0, y1) in frame coordinates."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def empty(self) -> bool:
        return self.x1 <= self.x0 or self.y1 <= self.y0

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0


def paste_box(frame_to_crop: np.ndarray, crop_size: int, frame_h: int, frame_w: int) -> Box:
    """The frame pixels a crop can touch when warped back, clipped to the frame.

    The crop covers [-0.5, S - 0.5]^2 in OpenCV coordinates (pixel centres at integers);
    bilinear sampling reaches at most one pixel further, hence the margin of 1.
    """
    crop_to_frame = invert_affine(frame_to_crop)
    lo, hi = -0.5, crop_size - 0.5
    corners = np.array([[lo, lo, 1], [hi, lo, 1], [lo, hi, 1], [hi, hi, 1]])
    mapped = corners @ crop_to_frame.T
    x0, y0 = np.floor(mapped.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(mapped.max(axis=0)).astype(int) + 2
    return Box(max(x0, 0), max(y0, 0), min(x1, frame_w), min(y1, frame_h))


def box_warp_matrix(frame_to_crop: np.ndarray, box: Box) -> np.ndarray:
    """DALI matrix that fills the box (its own pixel grid) from the crop.

    A box pixel (u, v) is frame pixel (u + x0, v + y0), which comes from crop point
    frame_to_crop @ (u + x0, v + y0, 1): that is the OpenCV destination->source matrix.
    """
    m = np.asarray(frame_to_crop, dtype=np.float64)
    box_to_crop = m.copy()
    box_to_crop[:, 2] = m[:, 2] + m[:, :2] @ np.array([box.x0, box.y0], dtype=np.float64)
    return opencv_to_dali_inverse(box_to_crop).astype(np.float32)


def paste_graph(device: str):
    """Graph (call inside a pipeline): inputs "faces" (SxSx3 uint8), "masks" (SxSx1 uint8),
    "matrices" (2x3 float32, DALI convention) and "sizes" (float32 [h, w] of each box).
    Returns the faces (border pixels repeated, as BORDER_REPLICATE) and masks (0 outside)."""
    faces = fn.external_source(name="faces", dtype=types.UINT8, ndim=3, layout="HWC")
    masks = fn.external_source(name="masks", dtype=types.UINT8, ndim=3, layout="HWC")
    matrices = fn.external_source(name="matrices", dtype=types.FLOAT, ndim=2)
    sizes = fn.external_source(name="sizes", dtype=types.FLOAT, ndim=1)
    if check_device(device) == "gpu":
        faces, masks = faces.gpu(), masks.gpu()
    common = dict(matrix=matrices, size=sizes, interp_type=types.INTERP_LINEAR, inverse_map=True, device=device)
    return fn.warp_affine(faces, **common), fn.warp_affine(masks, fill_value=0.0, **common)


class Blender:
    """Warps faces and masks back into frames and composites them. Build once, reuse."""

    def __init__(self, device: str = "cpu", max_batch_size: int = 64, device_id: int = 0):
        self.device = check_device(device)
        self._pipe = BatchedPipeline(lambda: paste_graph(device), device, max_batch_size, device_id)

    def __call__(
        self,
        frames: np.ndarray,
        faces: np.ndarray,
        masks: np.ndarray,
        frame_index: np.ndarray,
        matrices: np.ndarray,
    ) -> np.ndarray:
        """frames (N,H,W,3) uint8, faces (K,S,S,3) uint8, masks (K,S,S) uint8 0-255,
        frame_index (K,), matrices (K,2,3) OpenCV frame->crop (the ones used to align).
        Returns new frames; frames without faces are bit-identical copies of the input."""
        frames, faces, masks, frame_index, matrices = _check_blend_inputs(
            frames, faces, masks, frame_index, matrices
        )
        out = frames.copy()
        n, h, w = frames.shape[:3]
        size = faces.shape[1]
        boxes = [paste_box(m, size, h, w) for m in matrices]
        todo = [k for k, box in enumerate(boxes) if not box.empty]
        if not todo:
            return out
        warped_faces, warped_masks = self._pipe.run(
            faces=[faces[k] for k in todo],
            masks=[masks[k, :, :, None] for k in todo],
            matrices=[box_warp_matrix(matrices[k], boxes[k]) for k in todo],
            sizes=[np.array(boxes[k].shape, dtype=np.float32) for k in todo],
        )
        for k, face, mask in zip(todo, warped_faces, warped_masks):
            _composite(out[frame_index[k]], face, mask[..., 0], boxes[k])
        return out


def _composite(frame: np.ndarray, face: np.ndarray, mask: np.ndarray, box: Box) -> None:
    """frame[box] = frame * (1 - m) + face * m, in place; pixels with m == 0 are untouched."""
    region = frame[box.y0 : box.y1, box.x0 : box.x1]
    touched = mask > 0
    if not touched.any():
        return
    m = mask[touched].astype(np.float32)[:, None] / 255.0
    base = region[touched].astype(np.float32)
    pasted = face[touched].astype(np.float32)
    region[touched] = np.clip(np.rint(base + (pasted - base) * m), 0, 255).astype(np.uint8)


_BLENDERS: dict[str, Blender] = {}
_BLENDERS_LOCK = threading.Lock()


def blend_faces(
    frames: np.ndarray,
    faces: np.ndarray,
    masks: np.ndarray,
    frame_index: np.ndarray,
    matrices: np.ndarray,
    device: str = "cpu",
) -> np.ndarray:
    """`Blender.__call__` with a cached Blender per device."""
    with _BLENDERS_LOCK:
        blender = _BLENDERS.get(check_device(device))
        if blender is None:
            blender = _BLENDERS[device] = Blender(device)
    return blender(frames, faces, masks, frame_index, matrices)


def _check_blend_inputs(frames, faces, masks, frame_index, matrices):
    frames = np.asarray(frames)
    faces = np.asarray(faces)
    masks = np.asarray(masks)
    if frames.ndim != 4 or frames.dtype != np.uint8 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (N,H,W,3), got {frames.dtype} {frames.shape}")
    if faces.ndim != 4 or faces.dtype != np.uint8 or faces.shape[-1] != 3 or faces.shape[1] != faces.shape[2]:
        raise ValueError(f"faces must be uint8 (K,S,S,3), got {faces.dtype} {faces.shape}")
    if masks.dtype != np.uint8 or masks.shape != faces.shape[:3]:
        raise ValueError(
            f"masks must be uint8 (K,S,S) matching faces {faces.shape[:3]}, got {masks.dtype} {masks.shape}"
        )
    frame_index = np.asarray(frame_index, dtype=np.int64).reshape(-1)
    matrices = np.asarray(matrices, dtype=np.float64).reshape(-1, 2, 3)
    k = len(faces)
    if len(frame_index) != k or len(matrices) != k:
        raise ValueError(
            f"need one frame index and one matrix per face: {k} faces, "
            f"{len(frame_index)} indices, {len(matrices)} matrices"
        )
    if k and (frame_index.min() < 0 or frame_index.max() >= len(frames)):
        raise ValueError(f"frame_index out of range for {len(frames)} frames: {frame_index}")
    return frames, faces, masks, frame_index, matrices
