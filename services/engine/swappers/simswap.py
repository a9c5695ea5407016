"""SimSwap through Triton: the ``identity`` ensemble (ArcFace) makes the identity, the ``swap`` ensemble (SimSwap,
GFPGAN, BiSeNet mask) swaps. Real weights or their stand-ins: the repository Triton serves decides."""
from __future__ import annotations

import numpy as np

from swapstream.services.engine.clock import StageClock
from swapstream.services.engine.swappers.base import Swapper
from swapstream.services.triton.client import SwapstreamClient


def mean_identity(embeddings: np.ndarray) -> np.ndarray:
    """Several photos' embeddings -> one identity: their mean, L2-normalised."""
    mean = np.mean(embeddings, axis=0)
    return (mean / np.linalg.norm(mean)).astype(np.float32)


class SimSwap(Swapper):
    name = "simswap"
    identity_template = ("arcface_112_v2", 112)

    def __init__(self, client: SwapstreamClient):
        self.client = client

    def identity(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        """{"embedding": [512]}: the mean of the photos' ArcFace embeddings, L2-normalised."""
        return {"embedding": mean_identity(self.client.identity(crops))}

    def swap(self, aligned: np.ndarray, identities: list[dict], clock: StageClock,
             meshes: tuple[np.ndarray, np.ndarray] | None = None,
             enlargements: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        embeddings = np.stack([np.asarray(i["embedding"], np.float32).reshape(512) for i in identities])
        with clock("swap"):
            return self.client.swap(aligned, embeddings)
