"""The pick options of a submission (``pick_time``, ``pick_points``, ``pick_sources``; a job or ``/v1/swap-image``)
checked before anything runs: that they fit together, the photo numbers, the time (a video) and, for a photo, that
every point is on a face. A 422 with ``bad_option`` or ``pick_on_no_face``; a video's points are checked by the
job's first pass (one frame), before any frame is swapped."""
from __future__ import annotations

from pathlib import Path

from swapstream.pipelines.decode import VideoInfo
from swapstream.services.engine.photos import IMAGE_SUFFIXES
from swapstream.services.engine.picking import PickRequest, checked, faces_under, requested
from swapstream.services.http.inputs import require_face
from swapstream.services.jobs.service import Service
from swapstream.services.jobs.uploads import check_photo


def picks_of(options: dict) -> PickRequest | None:
    """The picks asked for, or None (how the options fit together only)."""
    return requested(options["faces"], options.get("pick_time"), options.get("pick_points"),
                     options.get("pick_sources"))


def check_picks(service: Service, options: dict, target: Path, sources: int, found=None,
                info: VideoInfo | None = None) -> None:
    """The picks against the inputs; ``found``: the target photo's faces when the caller has detected them;
    ``info``: the target video's probe when the caller has it."""
    asked = checked(options["faces"], options.get("pick_time"), options.get("pick_points"),
                    options.get("pick_sources"), sources, target, info)
    if asked is None or target.suffix.lower() not in IMAGE_SUFFIXES:
        return
    if found is None:  # a job's photo: checked now if Triton answers at once, else by its worker
        rgb = check_photo(target, "target", service.config.limits)
        found = require_face(service, rgb, "target photo", options["score_threshold"], unless_triton_down=True)
    if found is not None:
        faces_under(found.boxes, asked.points, "in the photo")
