"""What tests build from the engine: a FaceSwapper with today's SimSwap path, and the source's SimSwap embedding
(the stand-in swap shifts the face's colour by an amount computed from it)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from swapstream.services.engine.swapper import FaceSwapper
from swapstream.services.engine.swappers.simswap import SimSwap
from swapstream.services.triton.client import SwapstreamClient


def simswap_face_swapper(client: SwapstreamClient, device: str = "cpu") -> FaceSwapper:
    return FaceSwapper(client, SimSwap(client), device)


def source_embedding(swapper: FaceSwapper, photos: list[Path]) -> np.ndarray:
    return swapper.source_identity(photos, [])["embedding"]
