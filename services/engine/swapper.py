"""FaceSwapper: detect, align, swap, blend. It holds what lives long (the frame pipelines, the Triton client, the
``Swapper``) and does not change after it is built: what belongs to one call (the stage clock, the score
threshold) is an argument of that call, so callers may share one swapper safely, from several threads too (each
DALI pipeline runs one batch at a time under its own lock; OpenCV's geometry keeps no state)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from swapstream.pipelines.align import Aligner, require_device
from swapstream.pipelines.blend import Blender
from swapstream.pipelines.resize import Downscaler
from swapstream.pipelines.templates import estimate_similarity, template_points
from swapstream.services.engine.clock import StageClock
from swapstream.services.engine.errors import SwapInputError, no_face_code
from swapstream.services.engine.mesh_tracking import meshes_to_crops
from swapstream.services.engine.photos import read_photo
from swapstream.services.engine.swappers.base import Swapper
from swapstream.services.engine.tracking import TrackedFace
from swapstream.services.options import default
from swapstream.services.triton.client import Detections, SwapstreamClient

FACE_SIZE = 512
IDENTITY_SIZE = 112   # ArcFace, for telling faces apart (faces=reference)
DETECT_SIZE = 640
MAX_FACES_PER_FRAME = 32  # the highest-scoring faces of a frame are kept, the rest dropped


def similarity_to(landmarks: np.ndarray, template: str, size: int) -> np.ndarray:
    """[K,2,3] frame -> crop matrices for [K,5,2] landmarks."""
    target = template_points(template, size)
    return np.stack([estimate_similarity(lm, target) for lm in landmarks]).reshape(-1, 2, 3)


def enlargement(matrices: np.ndarray) -> np.ndarray:
    """[K] crop pixels per frame pixel of [K,2,3] frame -> crop similarity matrices."""
    return np.sqrt(np.abs(np.linalg.det(np.asarray(matrices, np.float64)[:, :, :2])))


def strongest_per_frame(found: Detections, limit: int) -> Detections:
    """At most ``limit`` faces per frame, the highest-scoring ones, in their original order."""
    order = np.lexsort((-found.scores, found.frame_index))
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order)) - np.searchsorted(found.frame_index[order], found.frame_index[order])
    keep = rank < limit
    if keep.all():
        return found
    return Detections(found.boxes[keep], found.scores[keep], found.landmarks[keep], found.frame_index[keep])


class FaceSwapper:
    """Detect (Triton ``detect``), align, swap (``swapper``), blend (DALI on a GPU, OpenCV on a CPU); immutable after
    build."""

    def __init__(self, client: SwapstreamClient, swapper: Swapper, device: str = "cpu",
                 detect_size: int = DETECT_SIZE):
        require_device(device)
        self.client = client
        self.swapper = swapper
        self.device = device
        self.detect_size = detect_size
        self.downscaler = Downscaler(detect_size, device)
        self.aligner = Aligner(FACE_SIZE, device)
        self._aligners = {size: Aligner(size, device) for size in {IDENTITY_SIZE, swapper.identity_template[1]}}
        self.blender = Blender(device)
        self._built = True

    def __setattr__(self, name, value):
        if getattr(self, "_built", False):
            raise AttributeError(f"FaceSwapper is immutable after build (setting {name!r}): pass per-call things "
                                 "(the clock, the options) to its calls, or build another")
        super().__setattr__(name, value)

    # ------------------------------------------------------------------------------------------ faces

    def detect(self, frames: np.ndarray, image_sizes: np.ndarray | None = None, *,
               score_threshold: float = default("score_threshold"), clock: StageClock | None = None) -> Detections:
        """Detections in full-resolution coordinates for frames of one size (or padded to one size, with each
        frame's own (h, w) in ``image_sizes``); at most ``MAX_FACES_PER_FRAME`` per frame."""
        with (clock or StageClock())("detect"):
            small = self.downscaler(frames)
            sx, sy = frames.shape[2] / small.shape[2], frames.shape[1] / small.shape[1]
            if image_sizes is not None:
                image_sizes = np.rint(np.asarray(image_sizes) / [sy, sx]).astype(np.int32)
            found = self.client.detect(small, image_sizes=image_sizes, score_threshold=score_threshold,
                                       detect_size=self.detect_size)
        found = strongest_per_frame(found, MAX_FACES_PER_FRAME)
        return Detections(found.boxes * [sx, sy, sx, sy], found.scores, found.landmarks * [sx, sy],
                          found.frame_index)

    def crops(self, frames: np.ndarray, frame_index: np.ndarray, landmarks: np.ndarray,
              template: tuple[str, int]) -> np.ndarray:
        """[K,S,S,3] crops of the faces with ``landmarks`` [K,5,2], aligned to ``template`` (name, size S)."""
        name, size = template
        return self._aligners[size](frames, frame_index, similarity_to(landmarks, name, size))

    def embed(self, frames: np.ndarray, frame_index: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """ArcFace embeddings [K,512] of the faces: what tells people apart (faces=reference)."""
        if len(landmarks) == 0:
            return np.zeros((0, 512), np.float32)
        return self.client.identity(self.crops(frames, frame_index, landmarks, ("arcface_112_v2", IDENTITY_SIZE)))

    def largest_face(self, rgb: np.ndarray, what: str, name: str, notes: list[str], *,
                     score_threshold: float = default("score_threshold"),
                     clock: StageClock | None = None) -> tuple[np.ndarray, int]:
        """(landmarks [5,2] of the largest face, faces found) in an RGB image; ``what`` names it in the error,
        ``name`` in the note said when there are several faces."""
        found = self.detect(rgb[None], score_threshold=score_threshold, clock=clock)
        if len(found) == 0:
            raise SwapInputError(f"{what}: no face found (score >= {score_threshold}). "
                                 "Use a photo where the face is visible and frontal, or lower --score-threshold.",
                                 no_face_code(what))
        areas = np.prod(found.boxes[:, 2:] - found.boxes[:, :2], axis=1)
        pick = int(np.argmax(areas))
        if len(found) > 1:
            notes.append(f"{name}: {len(found)} faces, using the largest")
        return found.landmarks[pick], len(found)

    def photo_embedding(self, path: Path, role: str, notes: list[str], **call) -> np.ndarray:
        """The ArcFace embedding of the face in one photo (its only or largest face), e.g. the reference."""
        rgb = read_photo(path)
        landmarks, _ = self.largest_face(rgb, f"{role} photo {path}", path.name, notes, **call)
        return self.embed(rgb[None], np.zeros(1, np.int32), landmarks[None])[0]

    # ------------------------------------------------------------------------------------- identities

    def identity_of(self, images: Iterable[tuple[str, str, np.ndarray]], notes: list[str],
                    **call) -> tuple[dict[str, np.ndarray], list[int]]:
        """(the swapper's identity, faces found per image) from [(what, name, rgb)]: the largest face of each."""
        crops, faces = [], []
        for what, name, rgb in images:
            landmarks, found = self.largest_face(rgb, what, name, notes, **call)
            crops.append(self.crops(rgb[None], np.zeros(1, np.int32), landmarks[None],
                                    self.swapper.identity_template)[0])
            faces.append(found)
        return self.swapper.identity(np.stack(crops)), faces

    def source_identity(self, photos: list[Path], notes: list[str], **call) -> dict[str, np.ndarray]:
        """The identity of the source photos (several photos make one)."""
        images = ((f"source photo {p}", p.name, read_photo(p)) for p in photos)  # read one at a time
        return self.identity_of(images, notes, **call)[0]

    # ----------------------------------------------------------------------------------------- frames

    def swap_frames(self, frames: np.ndarray, faces: list[tuple[int, TrackedFace]], identities: list[dict],
                    clock: StageClock | None = None) -> np.ndarray:
        """Frames with the given faces (frame position in ``frames``, face) swapped; ``identities``: one for all
        faces, or one per face."""
        if not faces:
            return frames
        clock = clock or StageClock()
        frame_index = np.array([i for i, _ in faces], np.int32)
        matrices = similarity_to(np.stack([f.landmarks for _, f in faces]), "ffhq_512", FACE_SIZE)
        with clock("align"):
            aligned = self.aligner(frames, frame_index, matrices)
        swapped, masks = self.swapper.swap(aligned, identities, clock, self._tracked_meshes(faces, matrices),
                                           enlargement(matrices))
        with clock("blend"):
            return self.blender(frames, swapped, masks, frame_index, matrices)

    def swap_chosen(self, frames: np.ndarray, chosen: list[tuple[int, TrackedFace, int]], identities: list[dict],
                    clock: StageClock | None = None) -> np.ndarray:
        """Frames with the chosen faces swapped: (frame position in ``frames``, face, which of ``identities``), as
        ``FaceSelector.choose`` gives them; ``identities``: one for every face, or one per source photo."""
        per_face = [identities[i] for _, _, i in chosen] if len(identities) > 1 else identities
        return self.swap_frames(frames, [(p, f) for p, f, _ in chosen], per_face, clock)

    def tracked_meshes(self, aligned: np.ndarray, faces: list[tuple[int, TrackedFace]], matrices: np.ndarray,
                       clock: StageClock) -> tuple[np.ndarray, np.ndarray] | None:
        """(meshes [K,468,3] in the crops, presence [K]) from the faces' tracked meshes, for a swapper that follows
        them; a face without one (e.g. a detection whose mesh was not found) gets it found in its crop now, by the
        swapper (``MeshSwapper.complete_meshes``)."""
        partial = self._tracked_meshes(faces, matrices)
        return None if partial is None else self.swapper.complete_meshes(aligned, partial, clock)

    def _tracked_meshes(self, faces: list[tuple[int, TrackedFace]],
                        matrices: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(meshes [K,468,3] in the crops, presence [K]) from the faces' tracked meshes, NaN for a face without one
        (the swapper finds those); None when the swapper does not follow meshes or no face has one."""
        have = np.array([face.mesh is not None for _, face in faces])
        if not self.swapper.follows_meshes or not have.any():
            return None
        meshes = np.full((len(faces), 468, 3), np.nan, np.float32)
        presence = np.where(have, 1.0, np.nan).astype(np.float32)
        meshes[have] = meshes_to_crops(np.stack([face.mesh for _, face in faces if face.mesh is not None]),
                                       matrices[have])
        return meshes, presence
