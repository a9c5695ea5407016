"""``/v1/swap-image`` (swap the faces of a photo now) and ``/v1/analyze`` (the faces in a photo: boxes, scores,
landmarks, head pose). Worked on in the service's photo threads, a few at a time (``PhotoWork``)."""
from __future__ import annotations

from dataclasses import asdict, replace
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, File, UploadFile
from fastapi.responses import Response

from swapstream.services.engine.errors import ErrorCode
from swapstream.services.engine.head_pose import head_pose
from swapstream.services.engine.offline import run_swap
from swapstream.services.http.deps import ServiceDep
from swapstream.services.http.errors import ERROR_RESPONSES
from swapstream.services.http.forms import score_threshold_form, swap_form
from swapstream.services.http.inputs import check_sources, require_face
from swapstream.services.http.picks import check_picks, picks_of
from swapstream.services.jobs.service import Service
from swapstream.services.jobs.uploads import UploadRejected, check_photo, new_folder, remove_folder, save_upload

router = APIRouter(responses=ERROR_RESPONSES)


@router.post("/swap-image", summary="Swap the faces of a photo now; returns the photo",
             response_class=Response, responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}})
async def swap_image(
    service: ServiceDep,
    target: Annotated[UploadFile, File(description="the photo whose faces are replaced")],
    source: Annotated[list[UploadFile], File(description="one or more photos of the source face")],
    options: Annotated[dict, Depends(swap_form)],
):
    if options["faces"] == "reference":
        raise UploadRejected(422, "faces=reference is for jobs (POST /v1/jobs); use all or largest here",
                             ErrorCode.BAD_OPTION)
    picks_of(options)  # refused before the photo waits for its turn
    return await service.photo_work.run(swap_photo, service, target, source, options)


def swap_photo(service: Service, target: UploadFile, source: list[UploadFile], options: dict) -> Response:
    limits = service.config.limits
    folder = new_folder(service.data_dir / "tmp")
    try:
        _, target_path = save_upload(target, folder, "target", "target", {"photo"}, limits)
        found = require_face(service, check_photo(target_path, "target", limits), "target photo",
                             options["score_threshold"])
        sources = check_sources(service, folder, source, options["score_threshold"])
        check_picks(service, options, target_path, len(sources), found)
        suffix = ".png" if target_path.suffix == ".png" else ".jpg"
        output = folder / f"swapped{suffix}"
        choice = service.choose_swapper(options.pop("swapper"))
        with service.photo_swapper(choice.name) as swapper:
            summary = run_swap(swapper, sources, target_path, output, replace(service.base_options, **options))
        body = output.read_bytes()
    finally:
        remove_folder(folder)
    return Response(body, media_type="image/png" if suffix == ".png" else "image/jpeg",
                    headers={"X-Faces-Swapped": str(summary.faces_swapped), "X-Swapper": choice.name})


@router.post("/analyze", summary="Faces in a photo: boxes, scores, 5 landmarks and head pose")
async def analyze(service: ServiceDep, photo: Annotated[UploadFile, File(description="the photo to analyse")],
                  options: Annotated[dict, Depends(score_threshold_form)]):
    return await service.photo_work.run(analyze_photo, service, photo, options["score_threshold"])


def analyze_photo(service: Service, photo: UploadFile, score_threshold: float) -> dict:
    limits = service.config.limits
    folder = new_folder(service.data_dir / "tmp")
    try:
        _, path = save_upload(photo, folder, "photo", "photo", {"photo"}, limits)
        rgb = check_photo(path, "photo", limits)
    finally:
        remove_folder(folder)
    found = service.faces_in(rgb, score_threshold)
    height, width = rgb.shape[:2]
    faces = [{"box": [round(float(v), 1) for v in box], "score": round(float(score), 4),
              "landmarks": np.round(landmarks, 1).tolist(), "pose": asdict(head_pose(landmarks, width, height))}
             for box, score, landmarks in zip(found.boxes, found.scores, found.landmarks)]
    return {"width": width, "height": height, "faces": faces}
