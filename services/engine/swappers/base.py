"""The interface of a face swapper: what a source photo's face becomes (its identity) and how an aligned target
face is replaced by it. ``FaceSwapper`` (``swapstream.services.engine.swapper``) detects, aligns and blends; a
``Swapper`` only sees aligned crops, so adding one is this interface plus its module in this folder and its name
in ``SWAPPERS`` (``__init__.py``)."""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from swapstream.services.engine.clock import StageClock


class Swapper(ABC):
    name: str                                   # "mesh" | "simswap"
    identity_template: tuple[str, int]          # which aligned crop the source needs, e.g. ("ffhq_512", 512)
    follows_meshes: bool = False                # swap warps with face meshes it may be handed (``meshes``)

    @abstractmethod
    def identity(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        """One identity from ``crops`` [N,S,S,3] uint8 RGB, one per source photo (its largest face), aligned with
        ``identity_template``. A dict of arrays (stored as .npz for stored sources); several photos -> one dict."""

    @abstractmethod
    def swap(self, aligned: np.ndarray, identities: list[dict], clock: StageClock,
             meshes: tuple[np.ndarray, np.ndarray] | None = None,
             enlargements: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(faces [K,512,512,3] uint8, masks [K,512,512]) for ``aligned`` [K,512,512,3] uint8 FFHQ-512 crops.

        ``meshes``: (face meshes [K,468,3] in the crops' pixels, presence [K]) already found for these faces (the
        tracker's, smoothed across frames), for a swapper that ``follows_meshes``; None: it finds them itself, and
        so for a face whose row is NaN (no tracked mesh).

        ``enlargements``: [K] crop pixels per frame pixel of each face (how much the crop enlarged it); a swapper
        may work at the face's own resolution where that is less than the crop's. None: the crop's.

        ``identities``: one (for all faces) or K (one per face, as live streams send them). The time spent is
        counted to ``clock``'s stages (``swap`` at least). The faces are blended back by ``pipelines/blend.py``."""
