"""The pluggable face swappers (``base.Swapper``): ``simswap`` (Triton ``identity`` + ``swap``)."""
from __future__ import annotations

from swapstream.services.engine.errors import SwapInputError
from swapstream.services.engine.swappers.base import Swapper
from swapstream.services.engine.swappers.simswap import SimSwap
from swapstream.services.triton.client import SwapstreamClient

SWAPPERS = {"simswap": SimSwap}  # name -> class built with the Triton client


def create_swapper(name: str, client: SwapstreamClient) -> Swapper:
    if name not in SWAPPERS:
        raise SwapInputError(f"no swapper {name!r} here yet; choose one of {', '.join(SWAPPERS)}")
    return SWAPPERS[name](client)
