"""The bounds of a swap's numeric options, defined once for the CLI (argparse) and the HTTP API (form fields).

Below a score threshold of about 0.1 the detector reports noise as faces (a one-face photo gave 1000 "faces" at
1e-6) and its post-processing slows to a crawl (the engine also keeps at most 32 faces per frame).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

_DEFAULTS = {"faces": "all", "reference_distance": 0.6, "score_threshold": 0.6, "batch_size": 16, "smoothing": True,
             "crf": 18, "encoder": "libx264", "preset": "medium", "audio": True, "device": "cpu"}


def default(name: str):
    return _DEFAULTS[name]


@dataclass(frozen=True)
class Bound:
    kind: type                    # int or float
    low: float
    high: float
    low_open: bool = False        # low itself is excluded
    high_open: bool = False
    help: str = ""

    def describe(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def problem(self, value) -> str | None:
        """Why ``value`` is out of bounds, or None."""
        too_low = value <= self.low if self.low_open else value < self.low
        too_high = value >= self.high if self.high_open else value > self.high
        return f"{value:g} is outside {self.describe()}" if too_low or too_high else None

    def form_constraints(self) -> dict:
        """Keyword arguments of FastAPI's ``Form``/``Query`` that enforce the bound."""
        return {"gt" if self.low_open else "ge": self.low, "lt" if self.high_open else "le": self.high}


SWAP_OPTION_BOUNDS: dict[str, Bound] = {
    "score_threshold": Bound(float, 0.1, 1.0, high_open=True, help="detector score threshold"),
    "reference_distance": Bound(float, 0.0, 2.0, low_open=True,
                                help="cosine distance to the reference below which a face counts as that person"),
    "batch_size": Bound(int, 1, 64, help="frames per batch"),
    "crf": Bound(int, 0, 51, help="encoder quality, lower is better"),
}


def check_swap_options(values: dict) -> None:
    """Raises ValueError naming every option out of its bounds."""
    problems = [f"{name}: {problem}" for name, bound in SWAP_OPTION_BOUNDS.items()
                if name in values and (problem := bound.problem(values[name]))]
    if problems:
        raise ValueError("; ".join(problems))


def argparse_type(name: str):
    """An argparse ``type=`` that parses the option and refuses values outside its bounds (a usage error)."""
    bound = SWAP_OPTION_BOUNDS[name]

    def parse(text: str):
        try:
            value = bound.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a{'n integer' if bound.kind is int else ' number'}, "
                                             f"got {text!r}") from None
        problem = bound.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = name
    return parse


def help_text(name: str, default) -> str:
    bound = SWAP_OPTION_BOUNDS[name]
    return f"{bound.help}, in {bound.describe()} ({default})"
