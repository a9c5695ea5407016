"""The dlib quality judge for tests: ``swapstream.benchmarks.judge`` (one definition, shared with ``bench
quality``), loaded once per session, and the distances tests compare."""
from __future__ import annotations

from functools import cache

import numpy as np

from swapstream.benchmarks.judge import SAME_PERSON, Judge

__all__ = ["SAME_PERSON", "judge", "distances_to"]


@cache
def judge() -> Judge:
    return Judge()


def distances_to(person: np.ndarray, rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """[K] dlib distances of the faces in ``boxes`` of ``rgb`` to the descriptor ``person``."""
    return judge().distance(judge().descriptors(rgb, boxes), person)
