"""Which faces are swapped, the same way offline and live: the smoothing switch, then all faces, the largest
track, (offline) the tracks that look like a reference photo, or (offline) the faces picked by pointing at them,
followed by their tracks and, across cuts, by their look."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from swapstream.services.engine.tracking import LargestTrackSelector, TrackedFace, TrackedFrame, box_iou


def smoothed(faces: list[TrackedFace], smoothing: bool) -> list[TrackedFace]:
    """The smoothing switch: with smoothing off, each face keeps the landmarks the detector found and the mesh the
    mesh network found."""
    if smoothing:
        return faces
    return [replace(face, landmarks=face.raw_landmarks, mesh=face.mesh if face.raw_mesh is None else face.raw_mesh)
            for face in faces]


@dataclass(frozen=True)
class Pick:
    """One face picked by a point in the frame ``Picks.frame_index``."""
    point: tuple[float, float]
    box: np.ndarray        # [4] its detector box in that frame
    embedding: np.ndarray  # [512] its ArcFace embedding, L2-normalised: how it is re-found
    source: int            # which of the run's identities it becomes


@dataclass(frozen=True)
class Picks:
    frame_index: int
    time: float            # seconds from the first frame
    faces: list[Pick]


class FaceSelector:
    """Which tracked faces to swap: ``faces`` all, largest, or reference (those within ``reference_distance``,
    cosine, of the ``reference`` ArcFace embedding; ``embed(frames, positions, landmarks)`` embeds a track's first
    face); or, with ``picks``, the picked faces (``PickedTracks``). Stateful across frames: one selector per video
    or per live stream."""

    def __init__(self, faces: str = "all", smoothing: bool = True, reference_distance: float | None = None,
                 reference: np.ndarray | None = None, embed: Callable | None = None, picks: Picks | None = None):
        if faces == "reference" and (reference is None or embed is None or reference_distance is None):
            raise ValueError("faces=reference needs a reference embedding, a distance and an embed function")
        if picks is not None and (faces != "all" or embed is None or reference_distance is None):
            raise ValueError("picks need faces=all, a distance and an embed function")
        self.faces = faces
        self.smoothing = smoothing
        self.reference_distance = reference_distance
        self.reference = reference
        self.embed = embed
        self._track_matches: dict[int, bool] = {}
        self._largest = LargestTrackSelector()
        self._picked = PickedTracks(picks, reference_distance, embed) if picks is not None else None

    def pick(self, faces: list[TrackedFace]) -> list[TrackedFace]:
        """The faces of one frame to swap, before any reference check (live streams use this alone)."""
        faces = smoothed(faces, self.smoothing)
        return self._largest(faces) if self.faces == "largest" else faces

    def __call__(self, frames: np.ndarray, tracked: list[TrackedFrame]) -> list[tuple[int, TrackedFace]]:
        """[(position in ``frames``, face)] to swap in a batch of frames."""
        return [(position, face) for position, face, _ in self.choose(frames, tracked)]

    def choose(self, frames: np.ndarray, tracked: list[TrackedFrame]) -> list[tuple[int, TrackedFace, int]]:
        """[(position in ``frames``, face, which identity)] to swap in a batch of frames (identity 0 unless
        picked faces map to several sources)."""
        if self._picked is not None:
            return self._picked(frames, [replace(t, faces=self.pick(t.faces)) for t in tracked])
        chosen = [(position, face) for position, frame in enumerate(tracked) for face in self.pick(frame.faces)]
        if self.faces == "reference":
            self._judge_new_tracks(frames, chosen)
            chosen = [(p, f) for p, f in chosen if self._track_matches[f.track_id]]
        return [(p, f, 0) for p, f in chosen]

    def _judge_new_tracks(self, frames: np.ndarray, chosen: list[tuple[int, TrackedFace]]) -> None:
        """A track is judged once, on its first face, by cosine distance to the reference identity."""
        first = {}
        for position, face in chosen:
            if face.track_id not in self._track_matches and face.track_id not in first:
                first[face.track_id] = (position, face)
        if not first:
            return
        positions = np.array([p for p, _ in first.values()], np.int32)
        embeddings = self.embed(frames, positions, np.stack([f.landmarks for _, f in first.values()]))
        for track_id, embedding in zip(first, embeddings):
            self._track_matches[track_id] = 1.0 - float(embedding @ self.reference) < self.reference_distance

    def frames_kept(self, indices: np.ndarray | None) -> None:
        """The run reads only these frames of the video (``start``, ``end``, ``fps``), numbered from 0 as read: the
        frame the picks were made on is known by its place among them (when it is not read, the picks are found by
        their look alone)."""
        if self._picked is not None and indices is not None:
            where = int(np.searchsorted(indices, self._picked.picks.frame_index))
            found = where < len(indices) and indices[where] == self._picked.picks.frame_index
            self._picked.frame_index = where if found else -1

    @property
    def cuts(self) -> int:
        """Cuts seen so far (picked faces only)."""
        return self._picked.cuts if self._picked is not None else 0


class PickedTracks:
    """The picked faces through a video. A track is given a pick by its look: the cosine distance of its face's
    ArcFace embedding to the picked face's, the nearest pick within ``distance``. A track with a pick keeps it until
    the next cut; a track without one is looked at again in each batch (a face turned away may turn back), and after
    a cut every track is looked at again, so a track that the tracker carried across a cut to another person loses
    the pick. In the frame the picks were made on, the faces under the points are the picks whatever their look.
    In each frame a pick goes to one face at most: the nearest. Cuts are the tracked frames' ``new_shot`` (found
    once per frame by ``mesh_tracking.VideoLocator``)."""

    def __init__(self, picks: Picks, distance: float, embed: Callable):
        self.picks = picks
        self.distance = distance
        self.embed = embed
        self.cuts = 0  # cuts seen so far (``TrackedFrame.new_shot``)
        self.frame_index = picks.frame_index  # the picks' frame as the run numbers its frames
        self._embeddings = np.stack([pick.embedding for pick in picks.faces])  # [P,512]
        self._pick_of: dict[int, tuple[int, float]] = {}  # track -> (pick, distance), until the next cut

    def __call__(self, frames: np.ndarray, tracked: list[TrackedFrame]) -> list[tuple[int, TrackedFace, int]]:
        cut = [frame.new_shot for frame in tracked]
        self.cuts += sum(cut)
        looks = self._look(frames, tracked, cut)
        chosen = []
        for position, frame in enumerate(tracked):
            if cut[position]:
                self._pick_of.clear()
            for face in frame.faces:
                if (position, face.track_id) in looks:
                    self._judge(face.track_id, looks[position, face.track_id])
            if frame.frame_index == self.frame_index:
                self._hold_the_picked(frame.faces)
            chosen += [(position, face, self.picks.faces[pick].source) for face, pick in self._nearest(frame.faces)]
        return chosen

    def _look(self, frames: np.ndarray, tracked: list[TrackedFrame], cut: list[bool]) -> dict:
        """{(position, track): distances [P] to the picks} for the faces looked at in this batch: each track's
        first face in the batch and after each cut, unless it holds a pick (only cuts take that away)."""
        holding, wanted = set(self._pick_of), {}
        shot = 0
        for position, frame in enumerate(tracked):
            if cut[position]:
                holding, shot = set(), shot + 1
            for face in frame.faces:
                if face.track_id not in holding and (shot, face.track_id) not in wanted:
                    wanted[shot, face.track_id] = (position, face)
        if not wanted:
            return {}
        positions = np.array([p for p, _ in wanted.values()], np.int32)
        embeddings = self.embed(frames, positions, np.stack([f.landmarks for _, f in wanted.values()]))
        distances = 1.0 - embeddings @ self._embeddings.T
        return {(p, f.track_id): d for (p, f), d in zip(wanted.values(), distances)}

    def _judge(self, track_id: int, distances: np.ndarray) -> None:
        best = int(np.argmin(distances))
        if distances[best] < self.distance:
            self._pick_of[track_id] = (best, float(distances[best]))
        else:
            self._pick_of.pop(track_id, None)

    def _hold_the_picked(self, faces: list[TrackedFace]) -> None:
        """The frame the picks were made on: the face over each picked box is that pick (distance -1: first)."""
        if not faces:
            return
        overlap = box_iou(np.stack([pick.box for pick in self.picks.faces]), np.stack([f.box for f in faces]))
        for pick, row in enumerate(overlap):
            if row.max() > 0.3:
                self._pick_of[faces[int(row.argmax())].track_id] = (pick, -1.0)

    def _nearest(self, faces: list[TrackedFace]) -> list[tuple[TrackedFace, int]]:
        """(face, pick) with each pick and each face used once, nearest first."""
        candidates = sorted((self._pick_of[f.track_id][1], self._pick_of[f.track_id][0], i)
                            for i, f in enumerate(faces) if f.track_id in self._pick_of)
        used_picks, chosen = set(), []
        for _, pick, index in candidates:
            if pick not in used_picks:
                used_picks.add(pick)
                chosen.append((faces[index], pick))
        return sorted(chosen, key=lambda item: item[0].track_id)
