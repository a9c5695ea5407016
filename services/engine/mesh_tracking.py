"""Mesh-driven tracking, MediaPipe's way: a face's mesh in one frame gives its crop in the next, so the detector
runs only to find new faces (every ``detect_every`` frames, at a scene cut) or when a followed face's mesh
presence drops.

Per frame, each followed face is cropped (FFHQ-512) with the five points of its previous mesh, and Triton
``facemesh`` gives its mesh in this frame (one call for all faces of a batch of frames). A frame the detector runs
on keeps today's faces exactly: its detections are cropped with YuNet's own five points, and a followed face that
a detection overlaps gives way to it; a followed face the detector missed stays while its mesh is present.

The tracker (``tracking.FaceTracker``) gets, per face, five landmarks that stand for YuNet's (the mesh's eye
rings, nose and mouth corners plus the offset from YuNet's points measured on that face in the last frame the
detector saw it), a box and the mesh in frame pixels, which it smooths per track like the landmarks; the swap
then warps with that smoothed mesh instead of finding it again (``FaceSwapper.swap_frames``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from swapstream.pipelines.align import invert_affine
from swapstream.pipelines.templates import estimate_similarity, template_points
from swapstream.services.engine.clock import StageClock
from swapstream.services.engine.cuts import CutDetector
from swapstream.services.engine.swappers.mesh import MIN_PRESENCE
from swapstream.services.engine.tracking import box_iou
from swapstream.services.options import default

if TYPE_CHECKING:
    from swapstream.services.engine.swapper import FaceSwapper

CROP = 512
MODES = ("mesh", "detector")
# The detector looks for new faces every this many frames (a third of a second at 30 frames/s) even while every
# face is followed; a face entering is found within it.
DETECT_EVERY = 10
# Followed faces whose boxes overlap more than this are one face followed twice: the more present one stays.
SAME_FACE_IOU = 0.5
# A detection this close to a followed face (IoU of the boxes) is that face (the tracker's own threshold).
DETECTION_IOU = 0.3

# MediaPipe mesh indices of the points that stand for YuNet's five (its order: the eye on the image's left,
# the other eye, nose tip, mouth corner on the image's left, the other corner).
_RIGHT_EYE = [33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246]
_LEFT_EYE = [263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466]
_NOSE = [1, 4]
# YuNet's points minus the mesh's, in FFHQ-512 crop pixels, mean over 42 faces of the shared clips (a face's own
# offset replaces it once the detector has seen the face: the spread between faces is 5-20 px).
DEFAULT_OFFSET = np.array([[8.3, 2.2], [-0.2, 1.8], [3.3, 0.7], [1.3, -4.5], [4.2, -0.2]])
# YuNet's box corners in the FFHQ-512 crop its points give (mean over the same faces).
_BOX_IN_CROP = np.array([[108.5, 87.0], [373.4, 93.7], [363.7, 469.7], [98.7, 463.0]])
_TEMPLATE = template_points("ffhq_512", CROP)


def _averaging() -> np.ndarray:
    """[5,468]: each row averages the mesh points that make one of the five."""
    weights = np.zeros((5, 468))
    for row, indices in enumerate((_RIGHT_EYE, _LEFT_EYE, _NOSE, [61], [291])):
        weights[row, indices] = 1.0 / len(indices)
    return weights


_FIVE = _averaging()


def five_points(mesh: np.ndarray) -> np.ndarray:
    """[..., 5, 2] eye-ring centres, nose tip, mouth corners of meshes [..., 468, >=2], in their own pixels."""
    return _FIVE @ np.asarray(mesh)[..., :2]


def map_mesh(mesh: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """A mesh [468,3] through a similarity ``matrix`` [2,3] (x, y mapped; z scaled alike)."""
    out = np.empty_like(mesh, dtype=np.float64)
    out[:, :2] = mesh[:, :2] @ matrix[:, :2].T + matrix[:, 2]
    out[:, 2] = mesh[:, 2] * np.sqrt(abs(np.linalg.det(matrix[:, :2])))
    return out


def meshes_to_crops(meshes: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """Meshes [K,468,3] in frame pixels -> in the crops of frame -> crop ``matrices`` [K,2,3]."""
    return np.stack([map_mesh(m, a) for m, a in zip(meshes, matrices)]).astype(np.float32).reshape(-1, 468, 3)


def _points_and_box(mesh: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(five landmarks [5,2], box [4]) in frame pixels standing for YuNet's, from a mesh in frame pixels."""
    raw = five_points(mesh)
    to_crop = estimate_similarity(raw, _TEMPLATE)
    back = invert_affine(to_crop)
    points = (raw @ to_crop[:, :2].T + to_crop[:, 2] + offset) @ back[:, :2].T + back[:, 2]
    corners = _BOX_IN_CROP @ back[:, :2].T + back[:, 2]
    return points, np.concatenate([corners.min(axis=0), corners.max(axis=0)])


@dataclass
class _Followed:
    mesh: np.ndarray      # [468,3] in frame pixels, in the last frame
    offset: np.ndarray    # [5,2] YuNet's points minus the mesh's, FFHQ-512 crop pixels
    presence: float
    points: np.ndarray    # [5,2] and
    box: np.ndarray       # [4]: where this mesh puts YuNet's points and box (``_points_and_box``)


@dataclass
class MeshFollower:
    """One video's or one live stream's faces followed by their mesh (state between frames; frames in order)."""
    detect_every: int = DETECT_EVERY
    faces: list[_Followed] = field(default_factory=list)
    frames: int = 0                 # frames located
    detected: int = 0               # frames the detector ran on
    _since_detection: int | None = None
    _cuts: CutDetector = field(default_factory=CutDetector)

    def wants_detection(self, frame: np.ndarray, cut: bool | None = None) -> tuple[bool, bool]:
        """(run the detector on ``frame``, it starts a new shot); called once per frame, in order. ``cut``: whether
        it starts a new shot, when the caller knows (``VideoLocator``); None: this follower looks (live streams)."""
        cut = self._cuts(frame) if cut is None else cut
        if cut:
            self.faces = []
        due = self._since_detection is None or self._since_detection + 1 >= self.detect_every
        return cut or due or not self.faces, cut

    def predicted(self) -> tuple[np.ndarray, np.ndarray]:
        """(landmarks [n,5,2], boxes [n,4]) of the followed faces where their last mesh puts them."""
        if not self.faces:
            return np.zeros((0, 5, 2)), np.zeros((0, 4))
        return np.stack([f.points for f in self.faces]), np.stack([f.box for f in self.faces])


@dataclass
class Located:
    """Faces located in a batch of frames, as ``Detections`` plus each face's mesh in frame pixels (NaN: none)."""
    boxes: np.ndarray        # [K,4]
    scores: np.ndarray       # [K]
    landmarks: np.ndarray    # [K,5,2]
    meshes: np.ndarray       # [K,468,3]
    frame_index: np.ndarray  # [K]
    new_shot: np.ndarray     # [N] bool per frame: a scene cut before it

    def __len__(self) -> int:
        return len(self.scores)


@dataclass
class _Candidate:
    position: int            # frame in the batch
    landmarks: np.ndarray    # [5,2] the crop is made from
    box: np.ndarray
    score: float
    offset: np.ndarray | None  # followed: its offset; detected: None (measured from this frame's mesh)


def locate(engine: FaceSwapper, frames: np.ndarray, image_sizes: np.ndarray | None, followers: list[MeshFollower],
           *, score_threshold: float = default("score_threshold"), clock: StageClock,
           new_shot: list[bool] | None = None, on_gpu=None) -> Located:
    """The faces of ``frames`` [N,H,W,3] (padded to one size: each frame's (h, w) in ``image_sizes``), frame n
    belonging to ``followers[n]`` (one per video or stream; a video's frames in order, one per call). ``new_shot``:
    the frames' scene cuts when the caller found them; None: each follower looks for them. ``on_gpu``: the same
    frames on the GPU (``pipelines.device.DeviceFrames``), which the detector and the aligner read instead."""
    sizes = np.asarray(image_sizes) if image_sizes is not None else np.tile(frames.shape[1:3], (len(frames), 1))
    if len(followers) != len(frames):
        raise ValueError(f"locate: {len(frames)} frames and {len(followers)} followers; give one follower per frame")
    cuts = [None] * len(frames) if new_shot is None else new_shot
    with clock("track"):
        plans = [f.wants_detection(frame[:h, :w], cut)
                 for f, frame, (h, w), cut in zip(followers, frames, sizes, cuts)]
    detect = [n for n, (wanted, _) in enumerate(plans) if wanted]
    frames = frames if on_gpu is None else on_gpu  # the host pixels were for the plans only
    candidates = _detected(engine, frames, sizes, detect, score_threshold, clock)
    with clock("track"):
        candidates += _followed(followers, candidates, set(detect))
    meshes, presence = _meshes(engine, frames, candidates, clock)
    lost = sorted({c.position for c, p in zip(candidates, presence) if p < MIN_PRESENCE and c.offset is not None}
                  - set(detect))
    if lost:  # a followed face's mesh is gone: the detector looks at that frame now, not at the next due one
        again = _detected(engine, frames, sizes, lost, score_threshold, clock)
        # a followed face still present stays unless a new detection is that face (as in ``_followed``)
        keep = [k for k, c in enumerate(candidates) if c.offset is None
                or (presence[k] >= MIN_PRESENCE and not _overlapped(c.position, c.box[None], again)[0])]
        new_meshes, new_presence = _meshes(engine, frames, again, clock)
        candidates = [candidates[k] for k in keep] + again
        meshes, presence = np.concatenate([meshes[keep], new_meshes]), np.concatenate([presence[keep], new_presence])
        detect += lost
    with clock("track"):
        return _update(followers, candidates, meshes, presence, set(detect), [cut for _, cut in plans])


def _detected(engine: FaceSwapper, frames: np.ndarray, sizes: np.ndarray, positions: list[int],
              score_threshold: float, clock: StageClock) -> list[_Candidate]:
    if not positions:
        return []
    chosen = np.asarray(positions)
    own = None if (sizes[chosen] == frames.shape[1:3]).all() else sizes[chosen]
    found = engine.detect(frames[chosen], image_sizes=own, score_threshold=score_threshold, clock=clock)
    return [_Candidate(int(chosen[i]), lm, box, float(s), None)
            for i, lm, box, s in zip(found.frame_index, found.landmarks, found.boxes, found.scores)]


def _overlapped(position: int, boxes: np.ndarray, detected: list[_Candidate]) -> np.ndarray:
    """[n] bool: which ``boxes`` [n,4] of frame ``position`` a detection of that frame overlaps (the same face)."""
    mine = np.array([c.box for c in detected if c.position == position]).reshape(-1, 4)
    if not len(boxes):
        return np.zeros(0, bool)
    return box_iou(boxes, mine).max(axis=1, initial=0.0) >= DETECTION_IOU


def _followed(followers: list[MeshFollower], detected: list[_Candidate], detect: set[int]) -> list[_Candidate]:
    """The followed faces of every frame, less those a detection of that frame overlaps."""
    out = []
    for position, follower in enumerate(followers):
        landmarks, boxes = follower.predicted()
        overlap = _overlapped(position, boxes, detected) if position in detect else np.zeros(len(boxes), bool)
        out += [_Candidate(position, lm, box, f.presence, f.offset)
                for lm, box, f, o in zip(landmarks, boxes, follower.faces, overlap) if not o]
    return out


def _meshes(engine: FaceSwapper, frames: np.ndarray, candidates: list[_Candidate],
            clock: StageClock) -> tuple[np.ndarray, np.ndarray]:
    """(meshes [K,468,3] in frame pixels, presence [K]) of the candidates: one alignment, one ``facemesh`` call."""
    if not candidates:
        return np.zeros((0, 468, 3)), np.zeros(0, np.float32)
    from swapstream.services.engine.swapper import similarity_to  # the engine imports this module
    matrices = similarity_to(np.stack([c.landmarks for c in candidates]), "ffhq_512", CROP)
    with clock("track"):
        crops = engine.aligner(frames, np.array([c.position for c in candidates]), matrices)
        meshes, presence = engine.client.facemesh(crops)
        return np.stack([map_mesh(m, invert_affine(a)) for m, a in zip(meshes, matrices)]), presence


def _update(followers: list[MeshFollower], candidates: list[_Candidate], meshes: np.ndarray, presence: np.ndarray,
            detect: set[int], cuts: list[bool]) -> Located:
    """The located faces; each follower now follows its frame's faces whose mesh is present."""
    boxes, scores, landmarks, out_meshes, index = [], [], [], [], []
    followed: list[list[_Followed]] = [[] for _ in followers]
    for c, mesh, p in zip(candidates, meshes, presence):
        present = p >= MIN_PRESENCE
        if c.offset is not None and not present:
            continue  # a followed face that is gone (its frame was detected again)
        if c.offset is None:  # a detection: YuNet's own points and box; its offset measured on this mesh
            points, box = c.landmarks, c.box
            offset = _measured_offset(c.landmarks, mesh) if present else DEFAULT_OFFSET
            followed_at = _points_and_box(mesh, offset) if present else None
        else:
            offset = c.offset
            points, box = followed_at = _points_and_box(mesh, offset)
        boxes.append(box), scores.append(c.score), landmarks.append(points), index.append(c.position)
        out_meshes.append(mesh if present else np.full((468, 3), np.nan))
        if present:
            followed[c.position].append(_Followed(mesh, offset, float(p), *followed_at))
    for position, follower in enumerate(followers):
        follower.faces = _one_each(followed[position])
        follower.frames += 1
        if position in detect:
            follower.detected += 1
            follower._since_detection = 0
        else:
            follower._since_detection = (follower._since_detection or 0) + 1
    return Located(np.array(boxes, np.float64).reshape(-1, 4), np.array(scores, np.float64),
                   np.array(landmarks, np.float64).reshape(-1, 5, 2), np.array(out_meshes).reshape(-1, 468, 3),
                   np.array(index, np.int64), np.array(cuts, bool))


def _measured_offset(landmarks: np.ndarray, mesh: np.ndarray) -> np.ndarray:
    raw = five_points(mesh)
    to_crop = estimate_similarity(raw, _TEMPLATE)
    apply = lambda p: p @ to_crop[:, :2].T + to_crop[:, 2]  # noqa: E731
    return apply(np.asarray(landmarks, np.float64)) - apply(raw)


def _one_each(faces: list[_Followed]) -> list[_Followed]:
    """Two meshes that converged on one face: the more present one stays."""
    faces = sorted(faces, key=lambda f: -f.presence)
    kept: list[_Followed] = []
    for face in faces:
        if not kept or box_iou(face.box[None], np.stack([k.box for k in kept])).max() < SAME_FACE_IOU:
            kept.append(face)
    return kept


DETECTED_NOTE = "frames the face detector ran on (faces followed by their mesh in between)"


class VideoLocator:
    """The faces of one video's frames, batches of consecutive frames in order: ``mode`` "mesh" follows them by
    their mesh frame after frame (a frame's crop needs the frame before's mesh), "detector" detects every frame.
    Either way each frame is looked at once for a scene cut (``Located.new_shot``: the tracker and the picked
    faces hear of it from there)."""

    def __init__(self, engine: FaceSwapper, mode: str, *, score_threshold: float, clock: StageClock,
                 detect_every: int = DETECT_EVERY):
        if mode not in MODES:
            raise ValueError(f"tracking must be one of {', '.join(MODES)}; got {mode!r}")
        self.engine, self.mode, self.clock = engine, mode, clock
        self.score_threshold = score_threshold
        self.follower = MeshFollower(detect_every)
        self.cuts = CutDetector()

    def __call__(self, frames: np.ndarray, on_gpu=None) -> Located:
        """``on_gpu``: the same frames on the GPU (``DeviceFrames``), which the detector and the aligner read."""
        with self.clock("track"):
            cuts = np.array([self.cuts(frame) for frame in frames], bool)
        if self.mode == "detector":
            found = self.engine.detect(frames if on_gpu is None else on_gpu, score_threshold=self.score_threshold,
                                       clock=self.clock)
            return Located(found.boxes, found.scores, found.landmarks, np.full((len(found), 468, 3), np.nan),
                           found.frame_index, cuts)
        parts = []
        for n in range(len(frames)):
            detected = self.follower.detected
            parts.append(locate(self.engine, frames[n:n + 1], None, [self.follower],
                                score_threshold=self.score_threshold, clock=self.clock, new_shot=[bool(cuts[n])],
                                on_gpu=None if on_gpu is None else on_gpu[n:n + 1]))
            if self.follower.detected > detected:
                self.clock.note(DETECTED_NOTE)
        return Located(*(np.concatenate([getattr(p, name) for p in parts]) for name in
                         ("boxes", "scores", "landmarks", "meshes")),
                       np.concatenate([p.frame_index + n for n, p in enumerate(parts)]),
                       np.concatenate([p.new_shot for p in parts]))
