"""Face tracks across video frames: link detections, fill short gaps, smooth landmarks (One-Euro).

Streaming and pure numpy. Frames go in one at a time, in order, with whatever YuNet found in them
(boxes [k,4] x1,y1,x2,y2, landmarks [k,5,2], scores [k]); finished frames come out in the same order,
``max_gap`` frames later, because a face that the detector missed for a few frames can only be filled in
once it has been seen again.

    tracker = FaceTracker()
    for index, (boxes, landmarks, scores) in enumerate(detections):
        for frame in tracker.push(index, boxes, landmarks, scores):
            use(frame)
    for frame in tracker.flush():
        use(frame)

Per track, in the order the frames are final:
- ``raw_landmarks``: as detected, or linearly interpolated across a gap (``filled=True``);
- ``landmarks``: ``raw_landmarks`` through a One-Euro filter (Casiez, Roussel, Vogel, CHI 2012), one per
  coordinate, fed with the frame timestamps;
- ``box``: the detected/interpolated box through its own One-Euro filter with the same settings (not
  derived from the landmarks, so that a box keeps YuNet's framing of the head);
- ``mesh``: when the frames come with face meshes (``mesh_tracking``), the 468-point mesh in frame pixels
  through its own One-Euro filter with the same settings (interpolated across a gap like the landmarks); what the
  mesh swap warps with, so the swapped face does not shake with the mesh network's frame-to-frame noise.

The filter's speed term is measured in face sizes per second (the speed in pixels divided by the square
root of the box area), so ``beta`` means the same for a face 60 or 600 pixels wide.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

# Defaults, measured on YuNet landmarks of the talking-head clips in ../shared/media at 30 fps (detector
# jitter there is about 0.3-0.6 px per coordinate on a 260 px face, while expressions and head motion
# move landmarks at about 0.1 face sizes/s typically and 0.5 face sizes/s at the 95th percentile):
# - MIN_CUTOFF 1 Hz: cutoff for a face at rest; at 30 fps it removes most frame-to-frame jitter
#   (crop_jitter down to about 0.25x on vid01 and vid03).
# - BETA 10 per (face size/s): a head moving at 0.5 face sizes/s gets a 6 Hz cutoff, so the filter
#   follows it; the lag on a steady motion never exceeds 1/(2 pi BETA) = 1.6 % of the face size
#   (0.5 % at 0.1 face sizes/s, 0.9 % at 0.5).
# - D_CUTOFF 1 Hz: the value the One-Euro paper uses for the speed estimate.
MIN_CUTOFF = 1.0
BETA = 10.0
D_CUTOFF = 1.0
# A detection may join a track if its box overlaps the track's predicted box (IoU >= iou_threshold) or,
# failing that, if its landmarks are within this many face sizes of the predicted ones (YuNet's box can
# jump, e.g. with a hand beside the face, while the landmarks stay). 0.5 is below the distance at which
# two faces' boxes reach IoU 0.3, where YuNet's NMS would keep only one of them.
LANDMARK_THRESHOLD = 0.5


@dataclass(frozen=True)
class TrackedFace:
    track_id: int
    box: np.ndarray            # [4] x1, y1, x2, y2, smoothed
    landmarks: np.ndarray      # [5,2] smoothed
    raw_landmarks: np.ndarray  # [5,2] as detected, or interpolated when filled
    score: float               # detector score (interpolated when filled)
    filled: bool               # True: the detector missed this face here, it was interpolated
    mesh: np.ndarray | None = None  # [468,3] smoothed face mesh in frame pixels, when the frames came with meshes
    raw_mesh: np.ndarray | None = None  # [468,3] that mesh as the network found it (or interpolated when filled)


@dataclass(frozen=True)
class TrackedFrame:
    frame_index: int
    faces: list[TrackedFace]   # ordered by track_id
    new_shot: bool = False     # a scene cut before this frame (as pushed)


class OneEuroFilter:
    """One-Euro filter over an array of coordinates, each with its own state.

    ``scale`` divides the speed before it raises the cutoff (face size in pixels), so that ``beta`` is in
    cutoff Hz per face size per second.
    """

    def __init__(self, min_cutoff: float = MIN_CUTOFF, beta: float = BETA, d_cutoff: float = D_CUTOFF):
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t = 0.0

    @staticmethod
    def _alpha(cutoff, dt: float):
        tau = 1.0 / (2.0 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: np.ndarray, t: float, scale: float = 1.0) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self._x is None:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), t
            return x.copy()
        dt = t - self._t
        if dt <= 0:
            raise ValueError(f"timestamps must increase (got {t} after {self._t})")
        a_d = self._alpha(self.d_cutoff, dt)
        self._dx = a_d * (x - self._x) / dt + (1.0 - a_d) * self._dx
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx) / scale
        a = self._alpha(cutoff, dt)
        self._x = a * x + (1.0 - a) * self._x
        self._t = t
        return self._x.copy()


@dataclass
class _Observation:
    box: np.ndarray        # [4] float64
    landmarks: np.ndarray  # [5,2] float64
    score: float
    filled: bool = False
    mesh: np.ndarray | None = None  # [468,3] float64


def _blend(a: np.ndarray | None, b: np.ndarray | None, w: float) -> np.ndarray | None:
    return None if a is None or b is None else (1 - w) * a + w * b


@dataclass
class _PendingFrame:
    frame_index: int
    timestamp: float
    new_shot: bool = False
    faces: dict[int, _Observation] = field(default_factory=dict)


def _face_size(box: np.ndarray) -> float:
    return float(np.sqrt(max((box[2] - box[0]) * (box[3] - box[1]), 1.0)))


class _Track:
    """Association state (last detection and a per-frame velocity) plus the smoothing filters."""

    def __init__(self, track_id: int, frame_index: int, obs: _Observation, filters: tuple):
        self.id = track_id
        self.alive = True
        self.last_seen = frame_index
        self.last = obs
        self.box_velocity: np.ndarray | None = None  # per frame, known from the second detection on
        self.landmark_velocity: np.ndarray | None = None
        self.box_filter, self.landmark_filter = (OneEuroFilter(*filters), OneEuroFilter(*filters))
        self.mesh_filter = OneEuroFilter(*filters)

    def predict(self, frame_index: int) -> tuple[np.ndarray, np.ndarray]:
        if self.box_velocity is None:
            return self.last.box, self.last.landmarks
        steps = frame_index - self.last_seen
        return (self.last.box + steps * self.box_velocity,
                self.last.landmarks + steps * self.landmark_velocity)

    def update(self, frame_index: int, obs: _Observation) -> None:
        steps = frame_index - self.last_seen
        box_velocity = (obs.box - self.last.box) / steps
        landmark_velocity = (obs.landmarks - self.last.landmarks) / steps
        if self.box_velocity is None:
            self.box_velocity, self.landmark_velocity = box_velocity, landmark_velocity
        else:  # averaged, so that one detection's jitter does not steer the prediction
            self.box_velocity = 0.5 * self.box_velocity + 0.5 * box_velocity
            self.landmark_velocity = 0.5 * self.landmark_velocity + 0.5 * landmark_velocity
        self.last_seen, self.last = frame_index, obs

    def smooth(self, obs: _Observation, t: float) -> TrackedFace:
        scale = _face_size(obs.box)
        mesh = None if obs.mesh is None else self.mesh_filter(obs.mesh, t, scale)
        return TrackedFace(self.id, self.box_filter(obs.box, t, scale), self.landmark_filter(obs.landmarks, t, scale),
                           obs.landmarks.copy(), obs.score, obs.filled, mesh, obs.mesh)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between every box of ``a`` [n,4] and of ``b`` [m,4] -> [n,m]."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def greedy_match(cost: np.ndarray, allowed: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (row, column), cheapest first, each row and column used once, only where ``allowed``."""
    pairs, used_rows, used_cols = [], set(), set()
    for flat in np.argsort(cost, axis=None, kind="stable"):
        r, c = np.unravel_index(flat, cost.shape)
        if allowed[r, c] and r not in used_rows and c not in used_cols:
            pairs.append((int(r), int(c)))
            used_rows.add(r)
            used_cols.add(c)
    return pairs


class FaceTracker:
    """Streaming face tracker: ``push`` every frame in order, then ``flush`` once at the end of the video.

    - Matching: each live track predicts its box and landmarks for the new frame (constant velocity);
      detections are matched greedily on cost ``(1 - IoU) + landmark distance`` (mean distance of the
      5 points, in face sizes), allowed when IoU >= ``iou_threshold`` or distance <= ``landmark_threshold``.
      An unmatched detection starts a new track; ids are 0, 1, 2, ... in order of appearance.
    - Gaps: a track missed for 1..``max_gap`` frames and then matched again has the missed frames filled
      by linear interpolation (``filled=True``). After ``max_gap + 1`` frames without a match the track
      ends; a face seen again later gets a new id. Nothing is extrapolated past a track's last detection.
    - Output: a frame is final ``max_gap`` frames after it was pushed; ``push`` returns the frames that
      became final, ``flush`` the rest. At most ``max_gap + 1`` frames are held.
    - Timestamps for the filter: ``timestamp`` given to ``push`` (seconds), else ``frame_index / fps``.
    - One tracker per video: ``push`` after ``flush`` is an error.
    """

    def __init__(self, max_gap: int = 5, iou_threshold: float = 0.3, min_cutoff: float = MIN_CUTOFF,
                 beta: float = BETA, d_cutoff: float = D_CUTOFF, fps: float = 30.0,
                 landmark_threshold: float = LANDMARK_THRESHOLD):
        if max_gap < 0 or fps <= 0:
            raise ValueError("max_gap must be >= 0 and fps > 0")
        self.max_gap, self.iou_threshold, self.fps = max_gap, iou_threshold, fps
        self.landmark_threshold = landmark_threshold
        self._filters = (min_cutoff, beta, d_cutoff)
        self._pending: deque[_PendingFrame] = deque()
        self._tracks: dict[int, _Track] = {}  # live tracks, and ended ones whose frames are still pending
        self._next_id = 0
        self._next_frame: int | None = None
        self._last_timestamp = -math.inf
        self._flushed = False

    @property
    def held_frames(self) -> int:
        """Frames pushed but not yet returned."""
        return len(self._pending)

    def push(self, frame_index: int, boxes, landmarks, scores, timestamp: float | None = None,
             new_shot: bool = False, meshes=None) -> list[TrackedFrame]:
        """Add the detections of the next frame; return the frames that became final, in order.

        ``meshes`` [k,468,3] (frame pixels; a NaN row: none for that face) are smoothed per track with the rest.
        ``new_shot=True`` (a scene cut found by the caller) ends every track first: without it a face at
        about the same place after a cut continues the old track, and a gap could be filled across the cut. The
        frame comes out with it (``TrackedFrame.new_shot``: the picked faces are looked for again after a cut).
        """
        if self._flushed:
            raise RuntimeError("push after flush: use a new FaceTracker for a new video")
        if self._next_frame is not None and frame_index != self._next_frame:
            raise ValueError(f"frames must be pushed in order without skipping: expected {self._next_frame}, "
                             f"got {frame_index}")
        timestamp = frame_index / self.fps if timestamp is None else float(timestamp)
        if timestamp <= self._last_timestamp:
            raise ValueError(f"timestamps must increase (frame {frame_index}: {timestamp})")
        detections = _as_observations(boxes, landmarks, scores, meshes)
        self._next_frame, self._last_timestamp = frame_index + 1, timestamp

        if new_shot:
            for track in self._live_tracks():
                track.alive = False
        frame = _PendingFrame(frame_index, timestamp, bool(new_shot))
        self._pending.append(frame)
        self._associate(frame, detections)
        self._end_lost_tracks(frame_index)
        finished = []
        while len(self._pending) > self._delay:
            finished.append(self._finish(self._pending.popleft()))
        return finished

    @property
    def _delay(self) -> int:
        """Frames held back for gap filling before they are final."""
        return self.max_gap

    def flush(self) -> list[TrackedFrame]:
        """End of video: every frame still held, in order (track ends are not extrapolated)."""
        self._flushed = True
        finished = [self._finish(frame) for frame in self._pending]
        self._pending.clear()
        self._tracks.clear()
        return finished

    def _live_tracks(self) -> list[_Track]:
        return [track for track in self._tracks.values() if track.alive]

    def _associate(self, frame: _PendingFrame, detections: list[_Observation]) -> None:
        tracks = self._live_tracks()
        matched = set()
        for t, d in self._match(tracks, detections, frame.frame_index):
            self._fill_gap(tracks[t], frame.frame_index, detections[d])
            tracks[t].update(frame.frame_index, detections[d])
            frame.faces[tracks[t].id] = detections[d]
            matched.add(d)
        for d, detection in enumerate(detections):
            if d not in matched:
                track = _Track(self._next_id, frame.frame_index, detection, self._filters)
                self._tracks[track.id] = track
                frame.faces[track.id] = detection
                self._next_id += 1

    def _match(self, tracks: list[_Track], detections: list[_Observation], frame_index: int) -> list[tuple[int, int]]:
        if not tracks or not detections:
            return []
        predicted = [track.predict(frame_index) for track in tracks]
        pred_boxes = np.stack([box for box, _ in predicted])
        pred_landmarks = np.stack([landmarks for _, landmarks in predicted])
        iou = box_iou(pred_boxes, np.stack([d.box for d in detections]))
        sizes = np.array([_face_size(box) for box in pred_boxes])
        offsets = pred_landmarks[:, None] - np.stack([d.landmarks for d in detections])[None]
        distance = np.linalg.norm(offsets, axis=-1).mean(-1) / sizes[:, None]
        allowed = (iou >= self.iou_threshold) | (distance <= self.landmark_threshold)
        return greedy_match((1.0 - iou) + distance, allowed)

    def _fill_gap(self, track: _Track, frame_index: int, detection: _Observation) -> None:
        span = frame_index - track.last_seen
        first_pending = self._pending[0].frame_index
        for missing in range(track.last_seen + 1, frame_index):
            w = (missing - track.last_seen) / span
            a, b = track.last, detection
            self._pending[missing - first_pending].faces[track.id] = _Observation(
                (1 - w) * a.box + w * b.box, (1 - w) * a.landmarks + w * b.landmarks,
                (1 - w) * a.score + w * b.score, filled=True, mesh=_blend(a.mesh, b.mesh, w))

    def _end_lost_tracks(self, frame_index: int) -> None:
        for track in self._live_tracks():
            if frame_index - track.last_seen > self.max_gap:
                track.alive = False

    def _finish(self, frame: _PendingFrame) -> TrackedFrame:
        faces = [self._tracks[track_id].smooth(obs, frame.timestamp) for track_id, obs in sorted(frame.faces.items())]
        done = [i for i, track in self._tracks.items() if not track.alive and track.last_seen <= frame.frame_index]
        for track_id in done:
            del self._tracks[track_id]
        return TrackedFrame(frame.frame_index, faces, frame.new_shot)


def _as_observations(boxes, landmarks, scores, meshes=None) -> list[_Observation]:
    boxes = np.zeros((0, 4)) if boxes is None else np.asarray(boxes, np.float64).reshape(-1, 4)
    landmarks = np.zeros((0, 5, 2)) if landmarks is None else np.asarray(landmarks, np.float64).reshape(-1, 5, 2)
    scores = np.ones(len(boxes)) if scores is None else np.asarray(scores, np.float64).reshape(-1)
    if not len(boxes) == len(landmarks) == len(scores):
        raise ValueError(f"one box, 5 landmarks and one score per face: got {len(boxes)} boxes, "
                         f"{len(landmarks)} landmark sets, {len(scores)} scores")
    if meshes is None:
        meshes = [None] * len(boxes)
    else:
        meshes = np.asarray(meshes, np.float64).reshape(-1, 468, 3)
        if len(meshes) != len(boxes):
            raise ValueError(f"one mesh per face: got {len(meshes)} meshes for {len(boxes)} faces")
        meshes = [None if np.isnan(m).any() else m for m in meshes]
    return [_Observation(b, lm, float(s), mesh=m) for b, lm, s, m in zip(boxes, landmarks, scores, meshes)]


class CausalFaceTracker(FaceTracker):
    """Live streams: every frame is final as soon as it is pushed (``push`` returns it; no look-ahead).

    Matching, track ids and One-Euro smoothing are ``FaceTracker``'s. A track the detector misses is not
    interpolated (the future is unknown): for up to ``max_gap`` frames it is held at its last detected position
    (``filled=True``), so the swap does not blink back to the original face; then it ends.
    """

    @property
    def _delay(self) -> int:
        return 0

    def _fill_gap(self, track: _Track, frame_index: int, detection: _Observation) -> None:
        pass  # the missed frames were already answered with the held position

    def _end_lost_tracks(self, frame_index: int) -> None:
        super()._end_lost_tracks(frame_index)
        frame = self._pending[-1]
        for track in self._live_tracks():
            if track.id not in frame.faces:
                last = track.last
                frame.faces[track.id] = _Observation(last.box, last.landmarks, last.score, filled=True, mesh=last.mesh)


def crop_jitter(landmark_sequence: np.ndarray) -> float:
    """Jitter of a landmark sequence [T,5,2]: how much aligned crops shake from frame to frame.

    Mean over frames and points of the length of the second difference x[t+1] - 2 x[t] + x[t-1] (what
    is left of the frame-to-frame change after removing steady motion), divided by the sequence's median
    inter-ocular distance so that it does not depend on the face's size in pixels. Detector noise of
    standard deviation s per coordinate gives about 3.1 s / inter-ocular distance; steady motion gives 0.
    """
    x = np.asarray(landmark_sequence, np.float64)
    if x.ndim != 3 or x.shape[1:] != (5, 2) or len(x) < 3:
        raise ValueError(f"expected landmarks [T>=3,5,2], got {x.shape}")
    inter_ocular = float(np.median(np.linalg.norm(x[:, 0] - x[:, 1], axis=-1)))
    second_difference = x[2:] - 2.0 * x[1:-1] + x[:-2]
    return float(np.linalg.norm(second_difference, axis=-1).mean() / inter_ocular)


def box_area(face: TrackedFace) -> float:
    w, h = face.box[2] - face.box[0], face.box[3] - face.box[1]
    return float(max(w, 0.0) * max(h, 0.0))


def select_largest(faces: list[TrackedFace]) -> list[TrackedFace]:
    """The face with the largest box in this frame (``[]`` when there is none). Stateless.

    For video prefer ``LargestTrackSelector``: choosing per frame flips between two faces of similar size.
    """
    return [max(faces, key=box_area)] if faces else []


class LargestTrackSelector:
    """``--faces largest`` for a video: the face of the track with the largest median box area so far.

    Call it once per frame, in order, with that frame's faces. Areas are remembered per track over the
    last ``window`` frames it appeared in (a track unseen for ``window`` frames is forgotten, so memory
    stays bounded). The selected track is kept while it is in the frame unless another track's median
    area is more than ``switch_ratio`` times its own, so two faces of about the same size do not take turns.
    """

    def __init__(self, window: int = 150, switch_ratio: float = 1.25):
        self.window, self.switch_ratio = window, switch_ratio
        self._areas: dict[int, deque[float]] = {}
        self._last_call: dict[int, int] = {}
        self._calls = 0
        self._current: int | None = None

    def __call__(self, faces: list[TrackedFace]) -> list[TrackedFace]:
        self._calls += 1
        for face in faces:
            self._areas.setdefault(face.track_id, deque(maxlen=self.window)).append(box_area(face))
            self._last_call[face.track_id] = self._calls
        for track_id in [i for i, call in self._last_call.items() if self._calls - call > self.window]:
            del self._areas[track_id], self._last_call[track_id]
        if not faces:
            return []
        present = {face.track_id: face for face in faces}
        median = {track_id: float(np.median(self._areas[track_id])) for track_id in present}
        best = max(median, key=median.get)
        if self._current not in present or median[best] > self.switch_ratio * median[self._current]:
            self._current = best
        return [present[self._current]]
