"""The checks of uploaded photos that need the detector: a source, target or reference photo must show a face.
Shared by the jobs and the photo routes."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from swapstream.services.engine.errors import ErrorCode, no_face_code
from swapstream.services.jobs.service import Service
from swapstream.services.jobs.uploads import Upload, UploadRejected, check_photo, save_upload


def require_face(service: Service, rgb: np.ndarray, what: str, score_threshold: float, *,
                 unless_triton_down: bool = False):
    """The faces found, or a 422; None when a submission's check was left to its worker (Triton not answering).
    ``what`` names the photo by its role first ("source photo 2")."""
    found = service.faces_in(rgb, score_threshold, unless_triton_down=unless_triton_down)
    if found is None:
        return None
    if len(found) == 0:
        raise UploadRejected(422, f"{what}: no face found (score >= {score_threshold}); use a photo where "
                                  "the face is visible and frontal, or lower score_threshold",
                             no_face_code(what))
    return found


def check_sources(service: Service, folder: Path, sources: list[Upload], score_threshold: float, *,
                  unless_triton_down: bool = False) -> list[Path]:
    """The source photos saved in ``folder``, each checked (limits, header, a face)."""
    limits = service.config.limits
    if not sources:
        raise UploadRejected(422, "source: give at least one photo of the face to put in", ErrorCode.MISSING_SOURCE)
    if len(sources) > limits.max_sources:
        raise UploadRejected(422, f"source: at most {limits.max_sources} photos", ErrorCode.TOO_MANY_SOURCES)
    paths = []
    for index, upload in enumerate(sources):
        _, path = save_upload(upload, folder, f"source-{index}", "source", {"photo"}, limits)
        require_face(service, check_photo(path, "source", limits), f"source photo {index + 1}", score_threshold,
                     unless_triton_down=unless_triton_down)
        paths.append(path)
    return paths


def save_reference(service: Service, folder: Path, reference: Upload | None, score_threshold: float, *,
                   unless_triton_down: bool = False) -> Path:
    """The reference photo of faces=reference saved in ``folder`` and checked (limits, header, a face)."""
    if reference is None:
        raise UploadRejected(422, "reference: faces=reference needs a photo of the person to swap",
                             ErrorCode.MISSING_REFERENCE)
    limits = service.config.limits
    _, path = save_upload(reference, folder, "reference", "reference", {"photo"}, limits)
    require_face(service, check_photo(path, "reference", limits), "reference photo", score_threshold,
                 unless_triton_down=unless_triton_down)
    return path
