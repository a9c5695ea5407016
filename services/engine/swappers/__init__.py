"""The pluggable face swappers (``base.Swapper``): ``simswap`` (Triton ``identity`` + ``swap``) and ``mesh``
(Triton ``facemesh`` + a geometric warp); ``choice.choose_swapper`` says which one a run uses and why."""
from __future__ import annotations

from swapstream.services.engine.errors import SwapInputError
from swapstream.services.engine.swappers.base import Swapper
from swapstream.services.engine.swappers.mesh import MeshSwapper
from swapstream.services.engine.swappers.simswap import SimSwap
from swapstream.services.triton.client import SwapstreamClient

SWAPPERS = {"mesh": MeshSwapper, "simswap": SimSwap}  # name -> class built with the Triton client


def create_swapper(name: str, client: SwapstreamClient) -> Swapper:
    if name not in SWAPPERS:
        raise SwapInputError(f"no swapper {name!r} here yet; choose one of {', '.join(SWAPPERS)}")
    return SWAPPERS[name](client)
