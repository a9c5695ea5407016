"""``POST /v1/preview``: one swapped frame of a target (video or photo) at a chosen time, with the faces found in it
numbered, in about the time of one batch instead of the whole video.

The first call sends the files; its answer names a preview session (``X-Preview``'s ``session``) that keeps them
for ``SESSION_IDLE`` seconds, so that moving a slider sends only ``session`` and ``time``: nothing is uploaded
again and the source identity comes from the engine's cache. At most ``MAX_SESSIONS`` are kept (the oldest go);
an unknown or expired session is a 404, after which the client sends the files again. Worked on in the service's
photo threads (``PhotoWork``: a few at a time, 429 beyond), like ``/v1/swap-image``.
"""
from __future__ import annotations

import json
import threading
import time as clock
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Callable

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import Response

from swapstream.pipelines.decode import VideoDecodeError, VideoInfo
from swapstream.services.engine.clock import StageClock
from swapstream.services.engine.errors import ErrorCode
from swapstream.services.engine.photos import read_photo
from swapstream.services.engine.picking import PickRequest, check_time, identities, pick_frame, picks_in
from swapstream.services.engine.picking import check_sources as check_pick_sources
from swapstream.services.engine.preview import (FrameAt, IdentityCache, file_digest, frame_at, frame_index_at,
                                                preview_frame)
from swapstream.services.engine.selection import FaceSelector, Picks
from swapstream.services.http.deps import ServiceDep
from swapstream.services.http.errors import ERROR_RESPONSES
from swapstream.services.http.forms import swap_form
from swapstream.services.http.inputs import check_sources, save_reference
from swapstream.services.http.picks import picks_of
from swapstream.services.jobs.service import Service
from swapstream.services.jobs.uploads import (UploadRejected, check_photo, check_video, new_folder, remove_folder,
                                              save_upload, without_path)
from swapstream.services.live.frames import encode_frame

router = APIRouter(responses=ERROR_RESPONSES)

MAX_SESSIONS = 8        # previews whose files are kept; each holds one target (up to --max-video-mb) and its photos
SESSION_IDLE = 600.0    # seconds a session is kept after its last use
JPEG_QUALITY = 90


@dataclass
class Session:
    id: str
    folder: Path
    target: Path
    info: VideoInfo | None            # None: the target is a photo
    sources: list[Path]
    digest: str                       # of the source photos: the identity cache's key
    reference: Path | None = None
    used: float = field(default_factory=clock.monotonic)
    users: int = 0                    # requests working on it now: never removed under them
    picks: tuple = (None, None)       # (what was asked, the picked faces found): the last pick, kept
    references: dict = field(default_factory=dict)  # (swapper, score_threshold) -> (reference embedding, its notes)

    def picks_for(self, asked: PickRequest | None, score_threshold: float, find: Callable[[], Picks | None]):
        """The picked faces of ``asked``, found once per pick (not again for every frame the slider shows)."""
        if asked is None:
            return None
        key = (asked, score_threshold)
        if self.picks[0] != key:
            self.picks = (key, find())
        return self.picks[1]

    def has_picks(self, asked: PickRequest | None, score_threshold: float) -> bool:
        """The picked faces of ``asked`` are found already (or none are asked for)."""
        return asked is None or self.picks[0] == (asked, score_threshold)

    def reference_for(self, swapper: str, score_threshold: float, notes: list[str],
                      embed: Callable[[list[str]], object]):
        """The reference photo's embedding by ``swapper``, made once per swapper and threshold (its notes kept)."""
        key = (swapper, score_threshold)
        if key not in self.references:
            made: list[str] = []
            self.references[key] = (embed(made), made)
        embedding, said = self.references[key]
        notes.extend(said)
        return embedding


class Sessions:
    """The kept previews, bounded in number and idle time; thread-safe (the photo threads use it)."""

    def __init__(self, limit: int = MAX_SESSIONS, idle: float = SESSION_IDLE):
        self.limit, self.idle = limit, idle
        self._items: dict[str, Session] = {}
        self._lock = threading.Lock()
        self.identities = IdentityCache()

    def add(self, session: Session) -> None:
        with self._lock:
            session.users += 1
            self._items[session.id] = session
            self._evict()

    def take(self, session_id: str) -> Session:
        with self._lock:
            self._evict()
            session = self._items.get(session_id)
            if session is None:
                raise UploadRejected(404, f"no preview session {session_id[:40]!r}: it expired or was replaced; send "
                                          "target and source again", ErrorCode.NOT_FOUND)
            session.users += 1
            session.used = clock.monotonic()
            return session

    def release(self, session: Session) -> None:
        with self._lock:
            session.users -= 1
            session.used = clock.monotonic()

    def _evict(self) -> None:
        now = clock.monotonic()
        idle = [s for s in self._items.values() if not s.users and now - s.used > self.idle]
        spare = sorted((s for s in self._items.values() if not s.users and s not in idle), key=lambda s: s.used)
        idle += spare[:max(len(self._items) - len(idle) - self.limit, 0)]
        for session in idle:
            del self._items[session.id]
            remove_folder(session.folder)


async def get_sessions(request: Request) -> Sessions:
    state = request.app.state
    if getattr(state, "previews", None) is None:  # made on first use (on the event loop: no race)
        state.previews = Sessions()
    return state.previews


PREVIEW_HEADER = (
    "JSON: `session` (send it instead of the files next time), `frame` (its index), `time` (its presentation time, "
    "s), `duration` (s, 0 for a photo), `frames`, `fps`, `width`, `height`, `swapper`, `identity_cached`, `notes` "
    "(e.g. a source photo with several faces), `faces_swapped` and `faces`: [{`number` (1, 2, ... left to right), "
    "`box` [x1, y1, x2, y2] in frame pixels, `score`, `swapped`}]; no face found at that time: `faces` is empty and "
    "the frame is the original")


@router.post("/preview", summary="One swapped frame at a chosen time, with the faces found in it numbered",
             response_class=Response,
             responses={200: {"content": {"image/jpeg": {}},
                              "description": "the frame at its own size, swapped (JPEG)",
                              "headers": {"X-Preview": {"description": PREVIEW_HEADER, "schema": {"type": "string"}},
                                          "X-Swapper": {"description": "the swapper that ran",
                                                        "schema": {"type": "string"}}}}})
async def preview(
    service: ServiceDep,
    sessions: Annotated[Sessions, Depends(get_sessions)],
    options: Annotated[dict, Depends(swap_form)],
    time: Annotated[float, Form(ge=0, le=1e6, description="seconds from the video's first frame (ignored for a "
                                                           "photo); at most its duration")] = 0.0,
    session: Annotated[str | None, Form(pattern="^[0-9a-f]{32}$", description="an earlier answer's session: its "
                                        "files are used, send none")] = None,
    target: Annotated[UploadFile | None, File(description="the video (or photo) whose faces are replaced")] = None,
    source: Annotated[list[UploadFile] | None, File(description="one or more photos of the source face")] = None,
    reference: Annotated[UploadFile | None, File(description="with faces=reference")] = None,
):
    if session is None and (target is None or not source):
        raise UploadRejected(422, "give target and source (or the session of an earlier preview)",
                             ErrorCode.MISSING_SOURCE if target is not None else ErrorCode.BAD_REQUEST)
    asked = picks_of(options)  # refused before the request waits for its turn
    return await service.photo_work.run(make_preview, service, sessions, session, time, options, asked,
                                        target, source or [], reference)


def make_preview(service: Service, sessions: Sessions, session_id: str | None, seconds: float, options: dict,
                 asked: PickRequest | None, target: UploadFile | None, sources: list[UploadFile],
                 reference: UploadFile | None) -> Response:
    kept = sessions.take(session_id) if session_id else _new_session(service, sessions, target, sources, reference,
                                                                     seconds, options)
    try:
        return _answer(service, sessions, kept, seconds, options, asked)
    except VideoDecodeError as error:
        raise UploadRejected(422, f"target: not a usable video: {without_path(str(error), kept.target)}",
                             ErrorCode.NOT_A_VIDEO) from error
    finally:
        sessions.release(kept)


def _new_session(service: Service, sessions: Sessions, target: UploadFile, sources: list[UploadFile],
                 reference: UploadFile | None, seconds: float, options: dict) -> Session:
    """The files saved and checked: limits and the time first, then the faces (the detector runs only on accepted
    files)."""
    limits = service.config.limits
    folder = new_folder(service.data_dir / "tmp")
    try:
        kind, target_path = save_upload(target, folder, "target", "target", {"video", "photo"}, limits)
        info = check_video(target_path, "target", limits) if kind == "video" else None
        if info is None:
            check_photo(target_path, "target", limits)
        else:
            frame_index_at(info, seconds)  # a time outside the video is refused before anything is detected
        reference_path = None
        if options["faces"] == "reference":
            reference_path = save_reference(service, folder, reference, options["score_threshold"])
        paths = check_sources(service, folder, sources, options["score_threshold"])
        session = Session(folder.name, folder, target_path, info, paths, file_digest(paths), reference_path)
    except BaseException:
        remove_folder(folder)
        raise
    sessions.add(session)
    return session


def _answer(service: Service, sessions: Sessions, session: Session, seconds: float, options: dict,
            asked: PickRequest | None) -> Response:
    info = session.info
    if options["faces"] == "reference" and session.reference is None:
        raise UploadRejected(422, "reference: faces=reference needs a photo of the person to swap: send the files "
                                  "again with it", ErrorCode.MISSING_REFERENCE)
    if info is not None:
        check_time(asked, info.duration)
    check_pick_sources(asked, len(session.sources))
    choice = service.choose_swapper(options["swapper"])
    threshold = options["score_threshold"]
    call = {"score_threshold": threshold, "clock": StageClock()}
    notes: list[str] = []
    # read before the photo swapper is taken: the other photo requests wait only for the networks
    frame = frame_at(info, seconds) if info is not None else FrameAt(0, 0.0, read_photo(session.target))
    shown = asked is None or info is None or frame_index_at(info, asked.time) == frame.index
    at_pick = None if session.has_picks(asked, threshold) else (
        frame if shown else pick_frame(session.target, asked, clock=call["clock"], info=info))

    def find() -> Picks:
        chosen = at_pick or pick_frame(session.target, asked, clock=call["clock"], info=info)  # another pick came
        return picks_in(swapper, chosen, asked, info is not None, **call)

    with service.photo_swapper(choice.name) as swapper:
        made, cached = sessions.identities.get(
            (choice.name, threshold, session.digest, asked and asked.sources is not None),
            lambda: identities(swapper, session.sources, asked, notes, **call))
        picks = session.picks_for(asked, threshold, find)
        reference = None
        if options["faces"] == "reference":
            reference = session.reference_for(choice.name, threshold, notes, lambda said: swapper.photo_embedding(
                session.reference, "reference", said, **call))
        selector = FaceSelector(options["faces"], options["smoothing"], options["reference_distance"], reference,
                                swapper.embed, picks)
        result = preview_frame(swapper, frame, made, selector, score_threshold=call["score_threshold"])
    height, width = frame.rgb.shape[:2]
    header = {"session": session.id, "frame": frame.index, "time": round(frame.time, 4),
              "duration": round(info.duration, 4) if info else 0.0, "frames": info.frame_count if info else 1,
              "fps": round(float(info.fps), 4) if info else 0.0, "width": width, "height": height,
              "swapper": choice.name, "identity_cached": cached, "faces_swapped": result.faces_swapped,
              "faces": [face.view() for face in result.faces], "notes": [service.public(n) for n in notes]}
    return Response(encode_frame(result.rgb, "JPEG", JPEG_QUALITY), media_type="image/jpeg",
                    headers={"X-Preview": json.dumps(header, separators=(",", ":")), "X-Swapper": choice.name,
                             "Cache-Control": "no-store"})
