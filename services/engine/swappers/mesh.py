"""The mesh swapper: a geometric face swap driven by MediaPipe's Face Mesh network (Triton ``facemesh``).

Source, once: each photo's aligned FFHQ-512 crop becomes a texture, its 468-point mesh, a triangulation, its skin
mask and its head pose. Target, per batch: one ``facemesh`` call for all faces, then per face the source whose
head pose is closest is warped onto the face's mesh (``mesh_warp``). Faces the swap would spoil are left untouched
(mask 0) and counted in the run's notes: no face mesh found, or a head turned so far that the mesh folds over.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np

from swapstream.services.engine.clock import StageClock
from swapstream.services.engine.errors import ErrorCode, SwapInputError
from swapstream.services.engine.swappers import mesh_warp
from swapstream.services.engine.swappers.base import Swapper
from swapstream.services.triton.client import SwapstreamClient

MIN_PRESENCE = 0.5  # Face Mesh's face-presence score (a sigmoid) below which a crop holds no usable face
# Share of the source mesh's area that may face away in the target. Measured on the shared media: frontal to
# 30 degrees 0.00-0.07, a face turned 40 degrees 0.17 (swapped cleanly), the profile photo 0.21, profiles in
# vid04 0.25-0.38.
MAX_AWAY = 0.18

# The warp's per-pixel work runs at this many work pixels per frame pixel of the face (never above the crop's own,
# never under a quarter of it): the blend shrinks the crop back to the frame, so finer work would not be seen.
WORK_DETAIL = 1.0
MIN_WORK_SCALE = 0.25

# The faces of a batch warp side by side: OpenCV and numpy release the GIL in nearly all of a face's work.
WARP_THREADS = min(4, os.cpu_count() or 1)

UNTOUCHED_NO_MESH = "faces left untouched by the mesh swapper: no face mesh found (blurred, tiny or hidden faces)"
UNTOUCHED_FOLDED = "faces left untouched by the mesh swapper: head turned too far (the face mesh folds over)"


def face_meshes(client: SwapstreamClient, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(meshes [K,468,3] in the crops' pixels, presence [K]) of FFHQ-512 ``crops``: one ``facemesh`` call in the
    model's own window, the one measured closest to MediaPipe's two-pass mesh (see the facemesh model)."""
    meshes, presence = client.facemesh(crops)
    return meshes.astype(np.float32, copy=False), presence


@cache
def _warp_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(WARP_THREADS, thread_name_prefix="mesh-warp")


def work_scales(enlargements: np.ndarray | None, count: int = 0) -> np.ndarray:
    """[K] scales of the crops the warp works at, from each face's enlargement into its crop (None: ``count`` faces
    at the crop's own scale)."""
    if enlargements is None:
        return np.ones(count)
    return np.clip(WORK_DETAIL / np.asarray(enlargements, np.float64), MIN_WORK_SCALE, 1.0)


def _halves(source: dict, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The identity's n-th texture and skin at half size (for faces worked at half scale or less), made on first use
    and kept in the identity."""
    if "half_texture" not in source:  # two threads may both make them: the same arrays, no harm
        source["half_skin"] = np.stack([mesh_warp.half_size(s) for s in source["skin"]])
        source["half_texture"] = np.stack([mesh_warp.half_size(t) for t in source["texture"]])
    return source["half_texture"][n], source["half_skin"][n]


class MeshSwapper(Swapper):
    name = "mesh"
    follows_meshes = True
    identity_template = ("ffhq_512", mesh_warp.SIZE)

    def __init__(self, client: SwapstreamClient):
        self.client = client

    def identity(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        """{"texture" [N,512,512,3], "mesh" [N,468,3], "triangles" [N,936,3], "skin" [N,512,512], "pose" [N,2]}
        for the source photos whose face the mesh network finds and that are not in profile."""
        crops = np.asarray(crops, np.uint8)
        meshes, presence = face_meshes(self.client, crops)
        poses = mesh_warp.mesh_pose(meshes)
        usable = (presence >= MIN_PRESENCE) & (np.abs(poses[:, 0]) <= 35.0)
        if not usable.any():
            raise SwapInputError("the mesh swapper found no usable face in the source photo(s): the face must be "
                                 "visible, sharp and turned less than 35 degrees from the camera; use a frontal "
                                 "photo", ErrorCode.NO_FACE_IN_SOURCE)
        crops, meshes, poses = crops[usable], meshes[usable], poses[usable]
        return {"texture": crops,
                "mesh": meshes.astype(np.float32),
                "triangles": np.stack([mesh_warp.triangulate(m) for m in meshes]),
                "skin": np.stack([mesh_warp.source_skin(c, m) for c, m in zip(crops, meshes)]),
                "pose": poses}

    def complete_meshes(self, aligned: np.ndarray, meshes: tuple[np.ndarray, np.ndarray] | None,
                        clock: StageClock) -> tuple[np.ndarray, np.ndarray]:
        """(meshes [K,468,3], presence [K]) of ``aligned`` crops: ``meshes`` as given, its missing faces (NaN rows)
        or all (None) found now in one ``facemesh`` call."""
        with clock("swap"):
            return self._completed(np.asarray(aligned, np.uint8), meshes)

    def _completed(self, aligned: np.ndarray, meshes: tuple[np.ndarray, np.ndarray] | None):
        if meshes is None:
            return face_meshes(self.client, aligned)
        meshes, presence = meshes
        missing = np.isnan(presence) | np.isnan(meshes).any(axis=(1, 2))
        if not missing.any():
            return meshes, presence
        meshes, presence = np.array(meshes, np.float32), np.array(presence, np.float32)
        meshes[missing], presence[missing] = face_meshes(self.client, aligned[missing])
        return meshes, presence

    def swap(self, aligned: np.ndarray, identities: list[dict], clock: StageClock,
             meshes: tuple[np.ndarray, np.ndarray] | None = None,
             enlargements: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        aligned = np.asarray(aligned, np.uint8)
        count = len(aligned)
        if len(identities) not in (1, count):
            raise ValueError(f"mesh swap: {len(identities)} identities for {count} faces; give one for all faces "
                             "or one per face")
        faces, masks = aligned.copy(), np.zeros(aligned.shape[:3], np.uint8)
        if count == 0:
            return faces, masks
        with clock("swap"):
            meshes, presence = self._completed(aligned, meshes)
            poses = mesh_warp.mesh_pose(meshes)
            scales = work_scales(enlargements, count)
            warps = []
            for k in range(count):
                if presence[k] < MIN_PRESENCE:
                    clock.note(UNTOUCHED_NO_MESH)
                    continue
                source = identities[0] if len(identities) == 1 else identities[k]
                n = int(np.argmin(np.abs(np.asarray(source["pose"]) - poses[k]).sum(axis=1)))
                # Each face writes only its own faces[k] and masks[k].
                warps.append(_warp_pool().submit(
                    mesh_warp.swap_face, aligned[k], meshes[k], source["texture"][n], source["mesh"][n],
                    source["triangles"][n], source["skin"][n], faces[k], masks[k], max_away=MAX_AWAY,
                    scale=float(scales[k]), half=_halves(source, n) if scales[k] <= 0.5 else None))
            for warp in warps:
                if not warp.result():
                    clock.note(UNTOUCHED_FOLDED)
        return faces, masks
