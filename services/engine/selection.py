"""Which faces are swapped, the same way offline and live: the smoothing switch, then all faces, the largest
track, or (offline) the tracks that look like a reference photo."""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from swapstream.services.engine.tracking import LargestTrackSelector, TrackedFace, TrackedFrame


def smoothed(faces: list[TrackedFace], smoothing: bool) -> list[TrackedFace]:
    """The smoothing switch: with smoothing off, each face keeps the landmarks the detector found."""
    return faces if smoothing else [replace(face, landmarks=face.raw_landmarks) for face in faces]


class FaceSelector:
    """Which tracked faces to swap: ``faces`` all, largest, or reference (those within ``reference_distance``,
    cosine, of the ``reference`` ArcFace embedding; ``embed(frames, positions, landmarks)`` embeds a track's first
    face). Stateful across frames: one selector per video or per live stream."""

    def __init__(self, faces: str = "all", smoothing: bool = True, reference_distance: float | None = None,
                 reference: np.ndarray | None = None, embed: Callable | None = None):
        if faces == "reference" and (reference is None or embed is None or reference_distance is None):
            raise ValueError("faces=reference needs a reference embedding, a distance and an embed function")
        self.faces = faces
        self.smoothing = smoothing
        self.reference_distance = reference_distance
        self.reference = reference
        self.embed = embed
        self._track_matches: dict[int, bool] = {}
        self._largest = LargestTrackSelector()

    def pick(self, faces: list[TrackedFace]) -> list[TrackedFace]:
        """The faces of one frame to swap, before any reference check (live streams use this alone)."""
        faces = smoothed(faces, self.smoothing)
        return self._largest(faces) if self.faces == "largest" else faces

    def __call__(self, frames: np.ndarray, tracked: list[TrackedFrame]) -> list[tuple[int, TrackedFace]]:
        """[(position in ``frames``, face)] to swap in a batch of frames."""
        chosen = [(position, face) for position, frame in enumerate(tracked) for face in self.pick(frame.faces)]
        if self.faces == "reference":
            self._judge_new_tracks(frames, chosen)
            chosen = [(p, f) for p, f in chosen if self._track_matches[f.track_id]]
        return chosen

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
