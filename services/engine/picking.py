"""Faces picked by pointing at them: ``pick_points`` (pixels) in the frame at ``pick_time`` (seconds), and with
several source photos ``pick_sources`` (which photo each picked face becomes).

Before any frame is swapped, a first pass reads that one frame (a seek, not the video up to it), detects its faces
and embeds the picked ones (``find_picks``): a point on no face is refused there, and frames before ``pick_time``
can already be chosen by the picked faces' look (``selection.PickedTracks``)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from swapstream.pipelines.decode import VideoInfo, probe_video
from swapstream.services import options as table
from swapstream.services.engine.clock import StageClock
from swapstream.services.engine.errors import ErrorCode, SwapInputError
from swapstream.services.engine.photos import IMAGE_SUFFIXES, read_photo
from swapstream.services.engine.preview import FrameAt, frame_at
from swapstream.services.engine.selection import Pick, Picks
from swapstream.services.engine.swapper import FaceSwapper


@dataclass(frozen=True)
class PickRequest:
    """The pick options, parsed and checked against each other (``requested``)."""
    time: float
    points: tuple[tuple[float, float], ...]
    sources: tuple[int, ...] | None


def _bad(message: str) -> SwapInputError:
    return SwapInputError(message, ErrorCode.BAD_OPTION)


def parsed(name: str, value):
    """A pick option as given (the API's text, the CLI's values, values already parsed, or None) -> its values."""
    if value is None:
        return None
    try:
        return table.SWAP[name].parse(value if isinstance(value, str) else json.dumps(value))
    except ValueError as error:
        raise _bad(f"{name}: {error}") from None


def requested(faces: str, pick_time: float | None, pick_points, pick_sources) -> PickRequest | None:
    """The picks asked for, or None; ``SwapInputError`` (bad_option) when the pick options do not fit together."""
    points, sources = parsed("pick_points", pick_points), parsed("pick_sources", pick_sources)
    if points is None:
        if sources is not None:
            raise _bad("pick_sources maps picked faces to source photos: give pick_points too")
        return None
    if faces != "all":
        raise _bad(f"pick_points chooses the faces itself: leave faces at all (not {faces})")
    if sources is not None and len(sources) != len(points):
        raise _bad(f"pick_sources has {len(sources)} photo numbers for {len(points)} pick_points: give one per point")
    return PickRequest(float(pick_time or 0.0), points, sources)


def check_sources(picks: PickRequest | None, sources: int) -> None:
    """Every photo number of ``pick_sources`` names one of the ``sources`` photos."""
    if picks is not None and picks.sources is not None and max(picks.sources) >= sources:
        raise _bad(f"pick_sources: photo {max(picks.sources)} does not exist; there are {sources} source photos, "
                   f"numbered from 0 to {sources - 1}")


def check_time(picks: PickRequest | None, duration: float) -> None:
    """``pick_time`` is within the video."""
    if picks is not None and picks.time > duration + 1e-6:
        raise _bad(f"pick_time: {picks.time:g} s is past the end of the video ({duration:.2f} s); give a time from 0 "
                   f"to {duration:.2f}")


def checked(faces: str, pick_time: float | None, pick_points, pick_sources, sources: int,
            target: Path, info: VideoInfo | None = None) -> PickRequest | None:
    """The picks asked for, checked as far as they can be without the detector: how the options fit together, the
    photo numbers and, for a video, the time (its probe: ``info`` when the caller has it)."""
    asked = requested(faces, pick_time, pick_points, pick_sources)
    if asked is not None:
        check_sources(asked, sources)
        if target.suffix.lower() not in IMAGE_SUFFIXES:
            check_time(asked, (info or probe_video(target)).duration)
    return asked


def faces_under(boxes: np.ndarray, points: tuple[tuple[float, float], ...], when: str) -> list[int]:
    """For each point, the face whose box holds it (the nearest box centre when several do); ``SwapInputError``
    (pick_on_no_face) names the first point on no face and where the faces are."""
    chosen = []
    for number, (x, y) in enumerate(points, start=1):
        inside = [i for i, (x1, y1, x2, y2) in enumerate(boxes) if x1 <= x <= x2 and y1 <= y <= y2]
        if not inside:
            where = "; ".join(f"({b[0]:.0f}, {b[1]:.0f})-({b[2]:.0f}, {b[3]:.0f})" for b in boxes[:8])
            raise SwapInputError(f"pick_points: point {number} ({x:g}, {y:g}) is on no face {when}: "
                                 + (f"the faces there are at {where} (x1, y1)-(x2, y2); point inside one"
                                    if len(boxes) else "no face was found there; pick another time"),
                                 ErrorCode.PICK_ON_NO_FACE)
        centres = (boxes[inside, :2] + boxes[inside, 2:]) / 2
        face = inside[int(np.argmin(np.hypot(centres[:, 0] - x, centres[:, 1] - y)))]
        if face in chosen:
            raise _bad(f"pick_points: points {chosen.index(face) + 1} and {number} are on the same face; give one "
                       "point per face")
        chosen.append(face)
    return chosen


def find_picks(swapper: FaceSwapper, target: Path, picks: PickRequest | None, *, score_threshold: float,
               clock: StageClock, info: VideoInfo | None = None) -> Picks | None:
    """The first pass: the frame at the pick time read, its faces detected, the picked ones embedded (``info``:
    the video's probe when the caller has it)."""
    if picks is None:
        return None
    video = target.suffix.lower() not in IMAGE_SUFFIXES
    return picks_in(swapper, pick_frame(target, picks, clock=clock, info=info), picks, video,
                    score_threshold=score_threshold, clock=clock)


def pick_frame(target: Path, picks: PickRequest, *, clock: StageClock, info: VideoInfo | None = None) -> FrameAt:
    """The frame at the pick time (a photo: the photo), read; ``info``: the video's probe when the caller has it."""
    if target.suffix.lower() in IMAGE_SUFFIXES:
        with clock("decode"):
            return FrameAt(0, 0.0, read_photo(target))
    info = info or probe_video(target)
    check_time(picks, info.duration)
    with clock("decode"):
        return frame_at(info, picks.time)


def picks_in(swapper: FaceSwapper, frame: FrameAt, picks: PickRequest, video: bool, *, score_threshold: float,
             clock: StageClock) -> Picks:
    """The faces of the pick frame (``pick_frame``) detected, the picked ones embedded."""
    when = f"in the frame at {frame.time:.2f} s" if video else "in the photo"
    rgb = frame.rgb
    found = swapper.detect(rgb[None], score_threshold=score_threshold, clock=clock)
    which = faces_under(found.boxes, picks.points, when)
    embeddings = swapper.embed(rgb[None], np.zeros(len(which), np.int32), found.landmarks[which])
    sources = picks.sources or (0,) * len(which)
    return Picks(frame.index, frame.time, [Pick(point, found.boxes[i].copy(), embedding, source)
                                           for point, i, embedding, source
                                           in zip(picks.points, which, embeddings, sources)])


def identities(swapper: FaceSwapper, photos: list[Path], picks: PickRequest | None, notes: list[str],
               **call) -> list[dict]:
    """The run's source identities: one from all the photos, or with ``pick_sources`` one per photo."""
    if picks is None or picks.sources is None:
        return [swapper.source_identity(photos, notes, **call)]
    check_sources(picks, len(photos))
    return [swapper.source_identity([photo], notes, **call) for photo in photos]
