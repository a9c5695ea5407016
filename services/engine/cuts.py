"""Scene cuts, from the frames alone: a frame that starts a new shot (``CutDetector``), looked for once per frame
(``mesh_tracking.VideoLocator``; a live stream's ``MeshFollower``). Tracks end at each, and picked faces are looked
for again after each (``selection.PickedTracks``)."""
from __future__ import annotations

import cv2
import numpy as np

# A cut: the frame's 32x18 grey thumbnail changed by more than this on average (0-255), or its hue-saturation
# histogram by more than this share. Measured on the shared clips: vid04's three cuts change 26-30 and 0.38-0.62;
# motion without a cut at most 12.6 and 0.17 (vid04), 0.9 and 0.06 (vid01, vid03). A false cut only costs one
# look at each face; a missed one could let a track carry the pick over to another person.
CUT_MEAN_CHANGE = 18.0
CUT_HISTOGRAM_CHANGE = 0.3
# Frames are sampled down to about this height before the area resize to the 64x36 thumbnail (finds the same cuts).
STRIDE_HEIGHT = 144


class CutDetector:
    """Call it with every frame in order: True when the frame starts a new shot."""

    def __init__(self):
        self._last: tuple[np.ndarray, np.ndarray] | None = None
        self.seen = 0

    def __call__(self, frame: np.ndarray) -> bool:
        step = max(1, frame.shape[0] // STRIDE_HEIGHT)  # every step-th pixel first: 0.9 ms a 1080p frame, not 7.4
        small = cv2.resize(frame[::step, ::step], (64, 36), interpolation=cv2.INTER_AREA)
        grey = cv2.resize(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), (32, 18), interpolation=cv2.INTER_AREA)
        hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
        histogram = cv2.calcHist([hsv], [0, 1], None, [16, 8], [0, 180, 0, 256]).ravel()
        histogram /= max(float(histogram.sum()), 1.0)
        last, self._last = self._last, (grey.astype(np.float32), histogram)
        if last is None:
            return False
        cut = (float(np.abs(self._last[0] - last[0]).mean()) > CUT_MEAN_CHANGE
               or 0.5 * float(np.abs(histogram - last[1]).sum()) > CUT_HISTOGRAM_CHANGE)
        self.seen += cut
        return cut
