"""How long a live round takes by its number of frames, measured, so that a round takes no more frames than the
latency budget allows.

Each size keeps a running average of its rounds' times (from gathering to the last answer). A size not measured in
the last ``RECENT`` rounds is predicted from the nearest recently measured one, in proportion to its frames: no
batching gain is assumed until one is measured. So on a CPU, where a round's time grows with each face's own image
work, rounds shrink to what the budget holds; where batching pays (the networks on a GPU, or the faces of a round
warped side by side on two cores), the measured times of bigger rounds let them grow again.

A gain that is never measured would never be found: once every ``RECENT`` rounds a round one frame bigger than the
budget's is tried, when the size below it fits (as if the extra frame were free). So at most one round of each size in
``RECENT`` may pass the budget, by about one frame's share of it.
"""
from __future__ import annotations

SMOOTHING = 0.3   # weight of the newest measure in a running average of times
RECENT = 50       # rounds: a size's own average counts while it was measured this recently


def smoothed(average: float, seconds: float) -> float:
    """A measured time's running average (0: none yet, the first measure as it is)."""
    return seconds if average == 0 else SMOOTHING * seconds + (1 - SMOOTHING) * average


class RoundTimes:
    def __init__(self):
        self._average: dict[int, float] = {}  # frames -> seconds
        self._seen: dict[int, int] = {}       # frames -> the round count when last measured
        self._tried: dict[int, int] = {}      # frames -> the round count when last tried beyond the prediction
        self._rounds = 0

    def add(self, frames: int, seconds: float) -> None:
        self._rounds += 1
        self._average[frames] = smoothed(self._average.get(frames, 0.0), seconds)
        self._seen[frames] = self._rounds

    def predict(self, frames: int) -> float | None:
        """Seconds a round of ``frames`` frames is expected to take; None before any round ended."""
        recent = [n for n, seen in self._seen.items() if self._rounds - seen < RECENT]
        if not recent:
            return None
        if frames in recent:
            return self._average[frames]
        nearest = min(recent, key=lambda n: (abs(n - frames), n))
        return self._average[nearest] * frames / nearest

    def most_frames(self, seconds: float, limit: int) -> int:
        """The most frames (1 to ``limit``) of a round predicted to take at most ``seconds``; 1 when none is. Or one
        more, to be measured, when that size was neither measured nor tried in the last ``RECENT`` rounds."""
        most = next((frames for frames in range(limit, 1, -1)
                     if (predicted := self.predict(frames)) is None or predicted <= seconds), 1)
        trial = most + 1
        if trial <= limit and self.predict(most) <= seconds and self._due(trial):
            self._tried[trial] = self._rounds
            return trial
        return most

    def _due(self, frames: int) -> bool:
        last = max(self._seen.get(frames, -RECENT), self._tried.get(frames, -RECENT))
        return self._rounds - last >= RECENT
