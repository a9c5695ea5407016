"""Which frames of a target video a run decodes, swaps and writes (``plan_frames``): the part between ``start`` and
``end`` (seconds from the first frame) and, with ``fps`` below the video's own rate, an even choice of its frames.

Worked out from the probe alone (frame times, duration), so a bad choice is refused before any frame is decoded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from swapstream.pipelines.decode import VideoInfo, VideoReader, open_video
from swapstream.services.engine.errors import ErrorCode, SwapInputError

_EPSILON = 1e-6


@dataclass(frozen=True, eq=False)
class FramePlan:
    """``indices``: the video's frames to keep, in order (None: all of them); ``fps``: the output's rate;
    ``audio``: the part of the source's timeline (absolute seconds, as in its pts) whose sound goes with them, or
    None for all of it; ``duration``: seconds of output video."""
    indices: np.ndarray | None
    fps: Fraction
    audio: tuple[float, float] | None
    duration: float
    notes: list[str] = field(default_factory=list)

    @property
    def frames(self) -> int | None:
        return None if self.indices is None else len(self.indices)


def _seconds(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") + " s"


def check_window(duration: float, start: float | None, end: float | None) -> None:
    """``start``/``end`` against a video of ``duration`` seconds; SwapInputError (bad_option) saying what to do."""
    def refuse(message: str):
        raise SwapInputError(message, ErrorCode.BAD_OPTION)

    if start is not None and start >= duration:
        refuse(f"start {_seconds(start)} is not inside the video, which lasts {_seconds(duration)}: choose a start "
               f"below {_seconds(duration)}")
    if end is not None and end > duration + 1e-3:
        refuse(f"end {_seconds(end)} is past the end of the video, which lasts {_seconds(duration)}: choose an end "
               f"up to {_seconds(duration)}, or leave it out to go to the end")
    if start is not None and end is not None and start >= end:
        refuse(f"start {_seconds(start)} must come before end {_seconds(end)}")


def plan_frames(info: VideoInfo, start: float | None = None, end: float | None = None,
                fps: float | None = None) -> FramePlan:
    """The frames of the part asked for, at the rate asked for; SwapInputError when that part is empty or outside
    the video."""
    check_window(info.duration, start, end)
    times = info.times - info.start_time  # seconds from the first frame
    first, last = start or 0.0, end if end is not None else info.duration
    chosen = np.flatnonzero((times >= first - _EPSILON) & (times < last - _EPSILON))
    if len(chosen) == 0:
        raise SwapInputError(f"no frame starts between {_seconds(first)} and {_seconds(last)}: choose a longer part",
                             ErrorCode.BAD_OPTION)
    rate, notes = Fraction(info.fps), []
    if fps is not None:
        asked = Fraction(fps).limit_denominator(1001)
        if asked < rate:
            # Output frame k shows what the video shows at its time: the last frame started by then.
            wanted = times[chosen[0]] + np.arange(int(np.ceil((last - times[chosen[0]]) * float(asked)))) / float(asked)
            picked = np.searchsorted(times[chosen], wanted + _EPSILON, side="right") - 1
            chosen = chosen[np.unique(np.clip(picked, 0, len(chosen) - 1))]
            rate = asked
        else:
            notes.append(f"fps {float(asked):g} is not below the target's {float(rate):.3g}: written at the target's "
                         "rate")
    whole = start is None and end is None
    if whole and len(chosen) == info.frame_count:
        return FramePlan(None, rate, None, info.frame_count / float(rate), notes)
    audio = None if whole else (info.start_time + first, info.start_time + last)
    return FramePlan(chosen, rate, audio, len(chosen) / float(rate), notes)


VIDEO_ONLY = ("start", "end", "fps", "max_height")


def check_for_photo(options: dict) -> None:
    """A photo target takes none of the video-only options; SwapInputError naming the ones given."""
    given = [name for name in VIDEO_ONLY if options.get(name) is not None]
    if given:
        raise SwapInputError(f"{', '.join(given)} only apply to a video, and the target is a photo: leave "
                             f"{'it' if len(given) == 1 else 'them'} out", ErrorCode.BAD_OPTION)


def open_part(target: Path, options) -> tuple[VideoReader, FramePlan]:
    """A reader of the frames ``options`` (``start``, ``end``, ``fps``) ask for, and the plan they follow."""
    on_gpu = options.device == "gpu"  # the batches stay on the GPU for the detector and the aligner (pipelines/device)
    reader = open_video(target, options.device, options.batch_size, on_device=on_gpu)
    plan = plan_frames(reader.info, options.start, options.end, options.fps)
    if plan.indices is not None:  # the kept frames only (PyAV), from the same probe
        reader = VideoReader(reader.info, options.device, options.batch_size, "pyav", keep=plan.indices,
                             on_device=on_gpu)
    return reader, plan


def frames_planned(options: dict, info: VideoInfo | None) -> tuple[int, float | None]:
    """(frames, seconds of video) a run writes, the options checked first (SwapInputError): for a photo (``info``
    None) 1 and None, none of the video-only options given; for a video (its probe ``info``) the part and rate
    asked for (``start``, ``end``, ``fps``)."""
    if info is None:
        check_for_photo(options)
        return 1, None
    plan = plan_frames(info, options.get("start"), options.get("end"), options.get("fps"))
    return plan.frames or info.frame_count, plan.duration
