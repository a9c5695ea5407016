"""The ingestion service's HTTP API (FastAPI; OpenAPI docs at ``/docs``).

Jobs are queued in the job store and run by the worker threads (``swapstream.services.jobs.workers``); photos are
swapped and analysed synchronously. Every rejection says what was wrong and what to do, and leaves
nothing stored.
"""

import asyncio
import logging
import mimetypes
import secrets
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from swapstream.services.jobs.disk import MB, DiskSpace, is_disk_full
from swapstream.services.jobs.events import JobFeed
from swapstream.services.jobs.guard import V1Guard
from swapstream.services.jobs.metrics import ServiceMetrics
from swapstream.services.jobs.store import FINAL, STATES, JobStore, JobStoreError, QueueFull, local_worker_is_dead
from swapstream.services.jobs.uploads import (UploadLimits, UploadRejected, check_photo, check_video, hide_paths,
                                              new_folder, remove_folder, save_upload, sweep_orphans)
from swapstream.services.jobs.workers import WorkerPool
from swapstream.services.live.limits import LiveLimits
from swapstream.services.live.routes import mount_live
from swapstream.services.engine.encoder import IMAGE_EXTENSIONS
from swapstream.services.engine.errors import SwapInputError
from swapstream.services.engine.head_pose import head_pose
from swapstream.services.engine.offline import SwapOptions, run_swap
from swapstream.services.engine.swapper import FaceSwapper
from swapstream.services.engine.swappers import create_swapper
from swapstream.services.options import SWAP_OPTION_BOUNDS
from swapstream.services.triton.client import SwapstreamClient, TritonCallError
from swapstream.services.web.pages import mount_pages

log = logging.getLogger("swapstream.api")


@dataclass
class ServiceConfig:
    data_dir: Path
    triton_url: str
    store_url: str | None = None       # default: SQLite in data_dir
    workers: int = 1
    max_queued: int = 16
    max_attempts: int = 3
    stale_after: float = 300.0          # seconds without a heartbeat before another machine's job is re-queued
    token: str | None = None
    device: str = "cpu"
    limits: UploadLimits = field(default_factory=UploadLimits)
    live: LiveLimits = field(default_factory=LiveLimits)
    min_free_bytes: int = 100 * MB      # below it: not ready, no job started, submissions refused (507)
    triton_timeout: float = 120.0       # deadline of one Triton call, seconds
    photo_workers: int = 1              # photo requests (swap-image, analyze) worked on at once ...
    photo_queue: int = 4                # ... and waiting; more get 429


RECOVERY_SECONDS = 15.0  # how often running jobs are checked for a dead or silent worker
SUBMIT_CHECK_SECONDS = 5.0  # longest a submission waits for Triton to check its photos' faces


class Service:
    """The store, the workers and the photo swapper of one service process."""

    def __init__(self, config: ServiceConfig):
        self.config = config
        self.data_dir = config.data_dir.resolve()
        for folder in ("uploads", "results", "tmp"):
            (self.data_dir / folder).mkdir(parents=True, exist_ok=True)
        # Request bodies are spooled by the multipart parser through ``tempfile``: inside the data folder, on
        # the disk whose free space the service watches, never in the system's /tmp.
        tempfile.tempdir = str(self.data_dir / "tmp")
        self.disk = DiskSpace(self.data_dir, config.min_free_bytes)
        self.store = JobStore(config.store_url) if config.store_url else JobStore.in_folder(self.data_dir)
        self.base_options = SwapOptions(device=config.device)
        self.pool: WorkerPool | None = None
        self.metrics = ServiceMetrics(self.store.counts, lambda: self.pool.busy() if self.pool else 0)
        self.client = SwapstreamClient(config.triton_url, timeout=config.triton_timeout)
        self.check_client = SwapstreamClient(config.triton_url, timeout=SUBMIT_CHECK_SECONDS)
        self._photo_swappers: dict[str, FaceSwapper] = {}  # "request" and "check" (their own Triton deadline)
        self._photo_lock = threading.Lock()
        self.photo_work = PhotoWork(config.photo_workers, config.photo_queue)
        self.health_executor = ThreadPoolExecutor(2, thread_name_prefix="swapstream-health")
        self._recovering = threading.Event()

    def start(self) -> None:
        self.recover()
        for partial in (self.data_dir / "results").glob(".*.partial*"):
            partial.unlink(missing_ok=True)  # left by a killed worker; never referenced by a job
        in_use = self.store.input_folders()
        for parent, used in (("uploads", lambda name: f"uploads/{name}" in in_use), ("tmp", lambda _name: False)):
            for name in sweep_orphans(self.data_dir / parent, used, self.config.stale_after):
                log.warning("removed %s/%s, left by a process that stopped during a request", parent, name)
        self.pool = WorkerPool(self.config.workers, self.store, self.data_dir, self.config.triton_url,
                               self.base_options, self.metrics, self.disk, self.config.triton_timeout)
        self.pool.start()
        threading.Thread(target=self._recover_periodically, name="swapstream-recovery", daemon=True).start()

    def recover(self) -> None:
        """Running jobs whose worker died or went silent for ``stale_after`` s: re-queued, failed or cancelled."""
        for job in self.store.recover(local_worker_is_dead, self.config.stale_after):
            log.warning("job %s was running in a worker that stopped or went silent: now %s", job.id, job.state)
            if job.state in FINAL:
                self.metrics.jobs_finished.labels(job.state).inc()
            if job.state == "cancelled":
                remove_folder(self.data_dir / job.inputs["folder"])

    def _recover_periodically(self) -> None:
        while not self._recovering.wait(min(RECOVERY_SECONDS, self.config.stale_after / 2)):
            try:
                self.recover()
            except Exception:  # noqa: BLE001 - a store outage; tried again at the next round
                log.exception("recovering stale jobs failed")

    def stop(self) -> None:
        self._recovering.set()
        if self.pool:
            self.pool.stop()
        self.photo_work.executor.shutdown(wait=False, cancel_futures=True)
        self.health_executor.shutdown(wait=False, cancel_futures=True)
        self.store.close()

    def public(self, message: str) -> str:
        """A message for a client: the server's paths under the data folder reduced to the file's own name."""
        return hide_paths(message, self.data_dir)

    @contextmanager
    def photo_swapper(self, *, check: bool = False, wait: float | None = None):
        """A swapper of the synchronous endpoints, one request at a time (the photo work runs one at a time).

        ``check``: the one whose Triton client gives up after ``SUBMIT_CHECK_SECONDS`` (a submission's face check);
        ``wait``: seconds to wait for the swapper, after which TimeoutError."""
        if not self._photo_lock.acquire(timeout=-1 if wait is None else wait):
            raise TimeoutError("the photo swapper is busy")
        try:
            use = "check" if check else "request"
            if use not in self._photo_swappers:
                client = self.check_client if check else self.client
                self._photo_swappers[use] = FaceSwapper(client, create_swapper("simswap", client), self.config.device)
            yield self._photo_swappers[use]
        finally:
            self._photo_lock.release()

    def faces_in(self, rgb: np.ndarray, score_threshold: float, *, unless_triton_down: bool = False):
        """Faces found in a photo. With ``unless_triton_down`` (a submission's check), None when Triton does not
        answer within ``SUBMIT_CHECK_SECONDS``: the job is queued all the same and its worker checks the face."""
        if not unless_triton_down:
            with self.photo_swapper() as swapper:
                return swapper.detect(rgb[None], score_threshold=score_threshold)
        try:
            with self.photo_swapper(check=True, wait=SUBMIT_CHECK_SECONDS) as swapper:
                return swapper.detect(rgb[None], score_threshold=score_threshold)
        except (TritonCallError, TimeoutError) as error:
            log.warning("a submission's face check is left to its worker: %s", error)
            return None


# ------------------------------------------------------------------------------------------ requests

Faces = Literal["all", "largest", "reference"]
Preset = Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"]


def _bounded(name: str) -> Form:
    """The form field of a numeric swap option, with the bounds the CLI also enforces (``swapstream.services.options``)."""
    bound = SWAP_OPTION_BOUNDS[name]
    return Form(**bound.form_constraints(), description=f"{bound.help}, in {bound.describe()}")


class PhotoWork:
    """Synchronous photo work (swap-image, analyze) off the event loop, in its own threads: ``workers`` at once
    and ``queue`` waiting; beyond that a request gets 429 at once instead of stalling the service."""

    def __init__(self, workers: int, queue: int):
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="swapstream-photo")
        self.capacity = workers + queue
        self.pending = 0

    async def run(self, function, *args):
        if self.pending >= self.capacity:
            raise HTTPException(429, f"{self.pending} photo requests are being worked on or waiting; retry "
                                     "in a few seconds", headers={"Retry-After": "5"})
        self.pending += 1  # only the event loop's thread counts
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)
        finally:
            self.pending -= 1


def swap_form(
    faces: Annotated[Faces, Form(description="which faces to swap")] = "all",
    reference_distance: Annotated[float, _bounded("reference_distance")] = 0.6,
    score_threshold: Annotated[float, _bounded("score_threshold")] = 0.6,
    smoothing: Annotated[bool, Form(description="smooth landmarks across frames")] = True,
    batch_size: Annotated[int, _bounded("batch_size")] = 16,
    crf: Annotated[int, _bounded("crf")] = 18,
    preset: Annotated[Preset, Form(description="x264 preset")] = "medium",
    audio: Annotated[bool, Form(description="copy the target's audio")] = True,
) -> dict:
    """A swap's options, as in ``swapstream swap``: the ``SwapOptions`` fields a client may set."""
    return {"faces": faces, "reference_distance": reference_distance, "score_threshold": score_threshold,
            "smoothing": smoothing, "batch_size": batch_size, "crf": crf, "preset": preset, "audio": audio}


def result_suffix(photo_suffix: str) -> str:
    """The swapped photo's file type: the target's own when it can be written (jpg, png, webp), else PNG."""
    return photo_suffix if photo_suffix in IMAGE_EXTENSIONS else ".png"


def summarise_validation(error: RequestValidationError) -> str:
    """One line per invalid field (where and why), never echoing the submitted value."""
    parts = []
    for item in error.errors()[:10]:
        where = ".".join(str(part) for part in item.get("loc", ()) if part not in ("body", "query", "path"))
        parts.append(f"{where or 'request'}: {item.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)[:1000]


def job_view(job) -> dict:
    view = job.to_dict()
    total = view["frames_total"] = job.frames_total or job.inputs.get("frames")
    view["progress"] = 1.0 if job.state == "done" else (min(job.frames_done / total, 1.0) if total else 0.0)
    view["result_url"] = f"/v1/jobs/{job.id}/result" if job.state == "done" else None
    view.pop("inputs", None)
    view.pop("worker", None)
    return view


# --------------------------------------------------------------------------------------------- app

def create_app(service: Service) -> FastAPI:
    config = service.config
    limits = config.limits

    @asynccontextmanager
    async def lifespan(_app):
        service.start()
        yield
        live.stop()
        service.stop()

    app = FastAPI(title="swapstream", version="0.1.0", lifespan=lifespan,
                  description="Batched video face swap over Triton Inference Server.")
    bearer = HTTPBearer(auto_error=False)

    def refuse_on_low_disk(scope) -> tuple[int, str] | None:
        if scope["method"] == "POST" and scope["path"].rstrip("/") == "/v1/jobs" and service.disk.low():
            return 507, f"{service.disk.describe()}; nothing was read or stored. Try again later"
        return None

    # Before any body is read: the token, the size limit, the disk (see guard.py). require_token stays on the
    # routes, so that the OpenAPI docs show the scheme and a route mounted elsewhere keeps it.
    app.add_middleware(V1Guard, token=config.token, body_limit=limits.request_limit, refuse=refuse_on_low_disk)

    def require_token(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if config.token is None:
            return
        if credentials is None or not secrets.compare_digest(credentials.credentials, config.token):
            raise HTTPException(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(UploadRejected)
    async def rejected(_request, error: UploadRejected):
        return JSONResponse({"detail": service.public(error.message)}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, error: RequestValidationError):
        return JSONResponse({"detail": summarise_validation(error)}, status_code=422)

    @app.exception_handler(Exception)
    async def internal(request: Request, error: Exception):
        log.error("%s %s failed", request.method, request.url.path, exc_info=error)
        if is_disk_full(error):
            return JSONResponse({"detail": "the server's disk is full; try again later"}, status_code=507)
        return JSONResponse({"detail": "internal error; the service log has the details"}, status_code=500)

    @app.exception_handler(TritonCallError)
    async def triton_down(_request, error: TritonCallError):
        return JSONResponse({"detail": f"the inference server failed: {error}; retry shortly"}, status_code=503)

    @app.exception_handler(JobStoreError)
    async def store_down(_request, error: JobStoreError):
        return JSONResponse({"detail": f"the job store is unavailable: {error}"}, status_code=503)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_token)])

    def check_sources(folder: Path, sources: list[UploadFile], score_threshold: float, *,
                      unless_triton_down: bool = False) -> list[Path]:
        if not sources:
            raise UploadRejected(422, "source: give at least one photo of the face to put in")
        if len(sources) > limits.max_sources:
            raise UploadRejected(422, f"source: at most {limits.max_sources} photos")
        paths = []
        for index, upload in enumerate(sources):
            _, path = save_upload(upload, folder, f"source-{index}", "source", {"photo"}, limits)
            require_face(check_photo(path, "source", limits), f"source photo {index + 1}", score_threshold,
                         unless_triton_down=unless_triton_down)
            paths.append(path)
        return paths

    def require_face(rgb: np.ndarray, what: str, score_threshold: float, *, unless_triton_down: bool = False):
        found = service.faces_in(rgb, score_threshold, unless_triton_down=unless_triton_down)
        if found is None:  # a submission while Triton does not answer: the job's worker checks the face
            return None
        if len(found) == 0:
            raise UploadRejected(422, f"{what}: no face found (score >= {score_threshold}); use a photo where "
                                      "the face is visible and frontal, or lower score_threshold")
        return found

    @v1.post("/jobs", status_code=201, summary="Queue a face swap of a video (or photo)")
    def submit_job(
        target: Annotated[UploadFile, File(description="the video (or photo) whose faces are replaced")],
        source: Annotated[list[UploadFile], File(description="one or more photos of the source face")],
        options: Annotated[dict, Depends(swap_form)],
        reference: Annotated[UploadFile | None, File(description="with faces=reference")] = None,
    ):
        if service.store.counts().get("queued", 0) >= config.max_queued:
            raise _queue_full(config.max_queued)
        folder = new_folder(service.data_dir / "uploads")
        try:
            kind, target_path = save_upload(target, folder, "target", "target", {"video", "photo"}, limits)
            frames = 1
            if kind == "video":
                frames = check_video(target_path, "target", limits).frame_count
            else:
                check_photo(target_path, "target", limits)
            sources = check_sources(folder, source, options["score_threshold"], unless_triton_down=True)
            inputs = {"folder": _relative(service, folder), "target": _relative(service, target_path),
                      "sources": [_relative(service, p) for p in sources], "frames": frames,
                      "result_suffix": ".mp4" if kind == "video" else result_suffix(target_path.suffix)}
            if options["faces"] == "reference":
                if reference is None:
                    raise UploadRejected(422, "reference: faces=reference needs a photo of the person to swap")
                _, reference_path = save_upload(reference, folder, "reference", "reference", {"photo"}, limits)
                require_face(check_photo(reference_path, "reference", limits), "reference photo",
                             options["score_threshold"], unless_triton_down=True)
                inputs["reference"] = _relative(service, reference_path)
            job = service.store.create(options, inputs, max_attempts=config.max_attempts,
                                       max_queued=config.max_queued)
        except QueueFull:
            remove_folder(folder)
            raise _queue_full(config.max_queued) from None
        except BaseException:
            remove_folder(folder)
            raise
        service.pool.notify()
        return JSONResponse(job_view(job), status_code=201, headers={"Location": f"/v1/jobs/{job.id}"})

    @v1.get("/jobs", summary="List jobs, newest first")
    def list_jobs(state: Annotated[Literal[STATES] | None, Query()] = None,  # type: ignore[valid-type]
                  limit: Annotated[int, Query(ge=1, le=500)] = 50,
                  offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0):
        jobs, total = service.store.list(state, limit, offset)
        return {"jobs": [job_view(j) for j in jobs], "total": total, "limit": limit, "offset": offset}

    feed = app.state.job_feed = JobFeed(service.store, job_view)

    @v1.get("/jobs/events", summary="The newest jobs and then their changes, pushed (Server-Sent Events)",
            response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}}})
    async def job_events():
        return StreamingResponse(feed.stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def find(job_id: str):
        job = service.store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r}; list jobs with GET /v1/jobs")
        return job

    @v1.get("/jobs/{job_id}", summary="A job's state and progress")
    def get_job(job_id: str):
        return job_view(find(job_id))

    @v1.get("/jobs/{job_id}/result", summary="The swapped file (supports range requests)")
    def get_result(job_id: str):
        job = find(job_id)
        if job.state != "done":
            raise HTTPException(409, f"job {job_id} is {job.state}, it has no result"
                                + ("" if job.state in FINAL else f"; poll GET /v1/jobs/{job_id} until state is done"))
        path = service.data_dir / job.result
        media_type = "video/mp4" if path.suffix == ".mp4" else f"image/{path.suffix.lstrip('.').replace('jpg', 'jpeg')}"
        return FileResponse(path, media_type=media_type, filename=f"swapped-{job_id}{path.suffix}")

    @v1.get("/jobs/{job_id}/target", summary="The uploaded target, to show beside the result (range requests)")
    def get_target(job_id: str):
        path = service.data_dir / find(job_id).inputs["target"]
        if not path.is_file():
            raise HTTPException(410, f"job {job_id} no longer keeps its target (cancelled jobs drop their uploads)")
        return FileResponse(path, media_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream")

    @v1.delete("/jobs/{job_id}", summary="Cancel a queued or running job; delete a finished one and its files",
               responses={204: {"description": "deleted"}, 202: {"description": "cancellation requested"}})
    def delete_job(job_id: str):
        job = find(job_id)
        if job.state in FINAL:
            # Files first: on a full disk, freeing them is what lets the store write the deletion.
            remove_folder(service.data_dir / job.inputs["folder"])
            if job.result:
                (service.data_dir / job.result).unlink(missing_ok=True)
            service.store.delete(job_id)
            return Response(status_code=204)
        job = service.store.cancel(job_id)
        if job.state == "cancelled":
            service.metrics.jobs_finished.labels("cancelled").inc()
            remove_folder(service.data_dir / job.inputs["folder"])
            return JSONResponse(job_view(job), status_code=200)
        return JSONResponse(job_view(job), status_code=202)

    @v1.post("/swap-image", summary="Swap the faces of a photo now; returns the photo",
             response_class=Response, responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}})
    async def swap_image(
        target: Annotated[UploadFile, File(description="the photo whose faces are replaced")],
        source: Annotated[list[UploadFile], File(description="one or more photos of the source face")],
        options: Annotated[dict, Depends(swap_form)],
    ):
        if options["faces"] == "reference":
            raise UploadRejected(422, "faces=reference is for jobs (POST /v1/jobs); use all or largest here")
        return await service.photo_work.run(swap_photo, target, source, options)

    def swap_photo(target: UploadFile, source: list[UploadFile], options: dict) -> Response:
        folder = new_folder(service.data_dir / "tmp")
        try:
            _, target_path = save_upload(target, folder, "target", "target", {"photo"}, limits)
            require_face(check_photo(target_path, "target", limits), "target photo", options["score_threshold"])
            sources = check_sources(folder, source, options["score_threshold"])
            suffix = ".png" if target_path.suffix == ".png" else ".jpg"
            output = folder / f"swapped{suffix}"
            with service.photo_swapper() as swapper:
                summary = run_swap(swapper, sources, target_path, output, replace(service.base_options, **options))
            body = output.read_bytes()
        except SwapInputError as error:
            raise UploadRejected(422, str(error)) from error
        finally:
            remove_folder(folder)
        return Response(body, media_type="image/png" if suffix == ".png" else "image/jpeg",
                        headers={"X-Faces-Swapped": str(summary.faces_swapped)})

    @v1.post("/analyze", summary="Faces in a photo: boxes, scores, 5 landmarks and head pose")
    async def analyze(photo: Annotated[UploadFile, File(description="the photo to analyse")],
                      score_threshold: Annotated[float, _bounded("score_threshold")] = 0.6):
        return await service.photo_work.run(analyze_photo, photo, score_threshold)

    def analyze_photo(photo: UploadFile, score_threshold: float) -> dict:
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

    app.include_router(v1)
    live = mount_live(app, service.client, service.data_dir, config.device, config.live, service.metrics.live,
                      config.token, [Depends(require_token)], limits.max_photo_bytes, service.store)
    app.state.live = live

    # Health answers on the event loop (and readiness in its own threads), never queued behind request work.
    @app.get("/healthz", summary="The process is up")
    async def healthz():
        return {"status": "ok"}

    def readiness() -> dict:
        checks = {"triton": service.client.is_ready(), "workers": bool(service.pool and service.pool.alive()),
                  "disk": not service.disk.low()}
        if not checks["disk"]:
            checks["disk_error"] = service.disk.describe()
        try:
            service.store.ping()
            checks["store"] = True
        except JobStoreError as error:
            checks["store"] = False
            checks["store_error"] = str(error)
        return checks

    @app.get("/readyz", summary="Triton ready, store writable, workers alive, free space on the data disk")
    async def readyz():
        checks = await asyncio.get_running_loop().run_in_executor(service.health_executor, readiness)
        ready = checks["triton"] and checks["workers"] and checks["store"] and checks["disk"]
        return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def metrics():
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    mount_pages(app)
    return app


def _queue_full(max_queued: int) -> HTTPException:
    return HTTPException(429, f"the queue is full ({max_queued} jobs waiting); retry later",
                         headers={"Retry-After": "30"})


def _relative(service: Service, path: Path) -> str:
    return str(path.relative_to(service.data_dir))

