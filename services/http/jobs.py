"""``/v1/jobs``: queue a swap of a video (or photo), list jobs, follow them (Server-Sent Events), fetch the result,
its thumbnail or the uploaded target, run a job again, cancel or delete."""
from __future__ import annotations

import mimetypes
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

from swapstream.services.engine.encoder import IMAGE_EXTENSIONS
from swapstream.services.engine.errors import ErrorCode
from swapstream.services.engine.trim import frames_planned
from swapstream.services.http.deps import ServiceDep, StoreDep
from swapstream.services.http.errors import ERROR_RESPONSES
from swapstream.services.http.forms import swap_form
from swapstream.services.http.inputs import check_sources, save_reference
from swapstream.services.http.picks import check_picks
from swapstream.services.jobs.service import Busy, Service
from swapstream.services.jobs.store import FINAL, STATES, JobStore, QueueFull
from swapstream.services.jobs.thumbnails import thumbnail, thumbnail_path
from swapstream.services.jobs.uploads import (UploadLimits, UploadRejected, check_photo, check_video, display_name,
                                              link_folder, new_folder, remove_folder, save_upload)

router = APIRouter(responses=ERROR_RESPONSES)


def job_view(job) -> dict:
    """A job as the API shows it."""
    view = job.to_dict()
    total = view["frames_total"] = job.frames_total or job.inputs.get("frames")
    view["progress"] = 1.0 if job.state == "done" else (min(job.frames_done / total, 1.0) if total else 0.0)
    view["result_url"] = f"/v1/jobs/{job.id}/result" if job.state == "done" else None
    view["thumbnail_url"] = f"/v1/jobs/{job.id}/thumbnail" if job.state == "done" else None
    view["duration"] = job.inputs.get("duration")  # seconds of video written (the part asked for); None: a photo
    view.pop("inputs", None)
    view.pop("worker", None)
    return view


def result_suffix(photo_suffix: str) -> str:
    """The swapped photo's file type: the target's own when it can be written (jpg, png, webp), else PNG."""
    return photo_suffix if photo_suffix in IMAGE_EXTENSIONS else ".png"


def _queue_full(max_queued: int) -> Busy:
    return Busy(f"the queue is full ({max_queued} jobs waiting); retry later", 30)


@router.post("/jobs", status_code=201, summary="Queue a face swap of a video (or photo)")
def submit_job(
    service: ServiceDep,
    target: Annotated[UploadFile, File(description="the video (or photo) whose faces are replaced")],
    source: Annotated[list[UploadFile], File(description="one or more photos of the source face")],
    options: Annotated[dict, Depends(swap_form)],
    reference: Annotated[UploadFile | None, File(description="with faces=reference")] = None,
):
    config = service.config
    if service.store.counts().get("queued", 0) >= config.max_queued:
        raise _queue_full(config.max_queued)
    names = {"target": display_name(target.filename), "sources": [display_name(s.filename) for s in source]}
    if reference is not None and options["faces"] == "reference":
        names["reference"] = display_name(reference.filename)
    return _queue(service, options, names,
                  lambda folder: _save_inputs(service, folder, target, source, reference, options))


def _queue(service: Service, options: dict, names: dict, fill) -> JSONResponse:
    """A new job whose files ``fill(folder)`` puts in a fresh upload folder (returning the job's ``inputs``); the
    folder goes again when the job is not made."""
    config = service.config
    folder = new_folder(service.data_dir / "uploads")
    try:
        job = service.store.create(options, fill(folder), max_attempts=config.max_attempts,
                                   max_queued=config.max_queued, names=names)
    except QueueFull:
        remove_folder(folder)
        raise _queue_full(config.max_queued) from None
    except BaseException:
        remove_folder(folder)
        raise
    service.pool.notify()
    return JSONResponse(job_view(job), status_code=201, headers={"Location": f"/v1/jobs/{job.id}"})


def _save_inputs(service: Service, folder, target: UploadFile, source: list[UploadFile],
                 reference: UploadFile | None, options: dict) -> dict:
    """The job's files saved and checked in ``folder``; the job's ``inputs``."""
    limits: UploadLimits = service.config.limits
    kind, target_path = save_upload(target, folder, "target", "target", {"video", "photo"}, limits)
    info = check_video(target_path, "target", limits) if kind == "video" else None  # the one probe
    if info is None:
        check_photo(target_path, "target", limits)
    frames, duration = frames_planned(options, info)  # the part and rate asked for, checked against the target
    sources = check_sources(service, folder, source, options["score_threshold"], unless_triton_down=True)
    check_picks(service, options, target_path, len(sources), info=info)
    inputs = {"folder": service.relative(folder), "target": service.relative(target_path),
              "sources": [service.relative(p) for p in sources], "frames": frames,
              "duration": None if duration is None else round(duration, 3),
              "result_suffix": ".mp4" if kind == "video" else result_suffix(target_path.suffix)}
    if options["faces"] == "reference":
        inputs["reference"] = service.relative(
            save_reference(service, folder, reference, options["score_threshold"], unless_triton_down=True))
    return inputs


@router.get("/jobs", summary="List jobs, newest first")
def list_jobs(store: StoreDep,
              state: Annotated[Literal[STATES] | None, Query()] = None,  # type: ignore[valid-type]
              limit: Annotated[int, Query(ge=1, le=500)] = 50,
              offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0):
    jobs, total = store.list(state, limit, offset)
    return {"jobs": [job_view(j) for j in jobs], "total": total, "limit": limit, "offset": offset}


@router.get("/jobs/events", summary="The newest jobs and then their changes, pushed (Server-Sent Events)",
            response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}}})
async def job_events(request: Request):
    return StreamingResponse(request.app.state.job_feed.stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def find(store: JobStore, job_id: str):
    job = store.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id[:40]!r}; list jobs with GET /v1/jobs")
    return job


@router.get("/jobs/{job_id}", summary="A job's state and progress")
def get_job(job_id: str, store: StoreDep):
    return job_view(find(store, job_id))


@router.get("/jobs/{job_id}/result", summary="The swapped file (supports range requests)")
def get_result(job_id: str, service: ServiceDep):
    job = find(service.store, job_id)
    if job.state != "done":
        raise HTTPException(409, f"job {job_id} is {job.state}, it has no result"
                            + ("" if job.state in FINAL else f"; poll GET /v1/jobs/{job_id} until state is done"))
    path = service.data_dir / job.result
    media_type = "video/mp4" if path.suffix == ".mp4" else f"image/{path.suffix.lstrip('.').replace('jpg', 'jpeg')}"
    return FileResponse(path, media_type=media_type, filename=f"swapped-{job_id}{path.suffix}")


@router.get("/jobs/{job_id}/target", summary="The uploaded target, to show beside the result (range requests)")
def get_target(job_id: str, service: ServiceDep):
    path = service.data_dir / find(service.store, job_id).inputs["target"]
    if not path.is_file():
        raise HTTPException(410, f"job {job_id} no longer keeps its target (cancelled jobs drop their uploads)")
    return FileResponse(path, media_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream")


@router.delete("/jobs/{job_id}", summary="Cancel a queued or running job; delete a finished one and its files",
               responses={204: {"description": "deleted"}, 202: {"description": "cancellation requested"}})
def delete_job(job_id: str, service: ServiceDep):
    job = find(service.store, job_id)
    if job.state in FINAL:
        # Files first: on a full disk, freeing them is what lets the store write the deletion.
        remove_folder(service.data_dir / job.inputs["folder"])
        if job.result:
            (service.data_dir / job.result).unlink(missing_ok=True)
            thumbnail_path(service.data_dir / job.result).unlink(missing_ok=True)
        service.store.delete(job_id)
        return Response(status_code=204)
    job = service.store.cancel(job_id)
    if job.state == "cancelled":
        service.metrics.jobs_finished.labels("cancelled").inc()
        remove_folder(service.data_dir / job.inputs["folder"])
        return JSONResponse(job_view(job), status_code=200)
    return JSONResponse(job_view(job), status_code=202)


@router.get("/jobs/{job_id}/thumbnail", summary="A swapped frame of a done job, small (JPEG, at most 320 px a side)",
            response_class=FileResponse, responses={200: {"content": {"image/jpeg": {}}}})
def get_thumbnail(job_id: str, service: ServiceDep):
    job = find(service.store, job_id)
    if job.state != "done":
        raise HTTPException(409, f"job {job_id} is {job.state}: only a done job has a thumbnail")
    return FileResponse(thumbnail(service.data_dir / job.result), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=86400"})


@router.post("/jobs/{job_id}/again", status_code=201, summary="Queue a new job with the same files and options")
def run_again(job_id: str, service: ServiceDep):
    job = find(service.store, job_id)
    config = service.config
    old = service.data_dir / job.inputs["folder"]
    if not (service.data_dir / job.inputs["target"]).is_file():
        raise HTTPException(410, f"job {job_id} no longer keeps its files (cancelled jobs drop their uploads); "
                            "submit the files again")
    if service.disk.low():
        raise UploadRejected(507, f"{service.disk.describe()}; nothing was stored. Try again later",
                             ErrorCode.DISK_FULL)
    if service.store.counts().get("queued", 0) >= config.max_queued:
        raise _queue_full(config.max_queued)

    def linked(folder) -> dict:
        link_folder(old, folder)
        moved = service.relative(folder)
        return {key: (value.replace(job.inputs["folder"], moved, 1) if key in ("folder", "target", "reference")
                      else [s.replace(job.inputs["folder"], moved, 1) for s in value] if key == "sources" else value)
                for key, value in job.inputs.items()}
    return _queue(service, job.options, job.names, linked)
