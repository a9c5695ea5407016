"""Paste processed faces back into their frames.

Each face crop and its mask are warped back with the inverse of the alignment matrix, but only
into the box in the frame that the mask's non-zero part maps to (its corners mapped back, clipped to the
frame), so the work per face does not grow with the frame size nor with the crop's margin. All K faces and masks are warped by one
DALI pipeline run (per `max_batch_size` faces): batched `warp_affine`, per-sample size and matrix; on the CPU, by
OpenCV's `warpAffine` face by face (``align.geometry_backend``: DALI's CPU warp costs several times more). The face is
warped with its border pixels repeated and the mask with zeros outside the crop, as facefusion's
paste-back does, so a mask reaching the crop's edge does not pull in a dark fringe. The composite
`frame * (1 - m) + face * m`, m = mask / 255, is numpy over each box, one face after another, so
overlapping faces in one frame compose in order.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np
from nvidia.dali import fn, types

from swapstream.pipelines.align import (BatchedPipeline, Box, check_device, footprint, from_box, geometry_backend,
                                        opencv_to_dali_inverse, source)


def box_warp_matrix(frame_to_crop: np.ndarray, box: Box) -> np.ndarray:
    """DALI matrix that fills the box (its own pixel grid) from the crop: the box -> crop matrix is the
    OpenCV destination -> source one."""
    return opencv_to_dali_inverse(from_box(frame_to_crop, box)).astype(np.float32)


def paste_graph(device: str, faces_on: str = "cpu"):
    """Graph (call inside a pipeline): inputs "faces" (SxSx3 uint8) and "masks" (SxSx1 uint8), fed on ``faces_on``,
    "matrices" (2x3 float32, DALI convention) and "sizes" (float32 [h, w] of each box).
    Returns the faces (border pixels repeated, as BORDER_REPLICATE) and masks (0 outside)."""
    faces = source("faces", faces_on, check_device(device), dtype=types.UINT8, ndim=3, layout="HWC")
    masks = source("masks", faces_on, device, dtype=types.UINT8, ndim=3, layout="HWC")
    matrices = fn.external_source(name="matrices", dtype=types.FLOAT, ndim=2)
    sizes = fn.external_source(name="sizes", dtype=types.FLOAT, ndim=1)
    common = dict(matrix=matrices, size=sizes, interp_type=types.INTERP_LINEAR, inverse_map=True, device=device)
    return fn.warp_affine(faces, **common), fn.warp_affine(masks, fill_value=0.0, **common)


class Blender:
    """Warps faces and masks back into frames and composites them. Build once, reuse."""

    def __init__(self, device: str = "cpu", max_batch_size: int = 64, device_id: int = 0, backend: str | None = None):
        self.device = check_device(device)
        self.backend = geometry_backend(device, backend)
        self._pipe = None if self.backend == "opencv" else \
            BatchedPipeline(lambda faces_on: paste_graph(device, faces_on), device, max_batch_size, device_id)

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
        # Only where each mask is not zero: the rest of the crop leaves the frame as it is.
        touched = [cv2.boundingRect(mask) for mask in masks]
        boxes = [footprint(m, size, h, w, rect) if rect[2] else None for m, rect in zip(matrices, touched)]
        todo = [k for k, box in enumerate(boxes) if box is not None and not box.empty]
        if not todo:
            return out
        if self._pipe is None:
            inverse = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
            for k in todo:
                box_to_crop, box_size = from_box(matrices[k], boxes[k]), boxes[k].shape[::-1]
                face = cv2.warpAffine(faces[k], box_to_crop, box_size, flags=inverse, borderMode=cv2.BORDER_REPLICATE)
                mask = cv2.warpAffine(masks[k], box_to_crop, box_size, flags=inverse,
                                      borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                _composite(out[frame_index[k]], face, mask, boxes[k])
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
    """frame[box] = frame * (1 - m) + face * m, in place; pixels with m == 0 are untouched.

    Whole-array float32 arithmetic over the rows and columns the mask touches (the same operations, in the same
    order, as per touched pixel: the same result), written back only where m > 0.
    """
    touched = mask > 0
    rows, cols = np.flatnonzero(touched.any(axis=1)), np.flatnonzero(touched.any(axis=0))
    if not len(rows):
        return
    inner = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    region = frame[box.y0 : box.y1, box.x0 : box.x1][inner]
    m = mask[inner].astype(np.float32)[..., None] / 255.0
    base = region.astype(np.float32)
    blended = face[inner].astype(np.float32)
    blended -= base
    blended *= m
    blended += base
    np.rint(blended, out=blended)
    np.clip(blended, 0, 255, out=blended)
    np.copyto(region, blended.astype(np.uint8), where=touched[inner][..., None])


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
