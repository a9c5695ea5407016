"""Uploaded files: stored under server-chosen names, checked against the service's limits.

A client's file name never reaches a path: only its extension is looked at, and only when it is one
of the known ones. Every rejection is an ``UploadRejected`` carrying the HTTP status and a message
that says what was wrong and what to do; the caller removes the job's folder, so nothing is kept.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import time
import unicodedata
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Protocol

import numpy as np

from swapstream.pipelines.decode import VideoDecodeError, VideoInfo, probe_video
from swapstream.services.jobs.store import local_worker_is_dead, worker_id
from swapstream.services.options import MB, default, pixels
from swapstream.services.engine.errors import ErrorCode, PhotoError, code_for_status
from swapstream.services.engine.photos import IMAGE_SUFFIXES, read_photo

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".ts", ".flv", ".ogv"}  # DEMUXERS read them
# curl and most clients send application/octet-stream for video files; the content is checked anyway.
GENERIC_TYPES = {"", "application/octet-stream"}
CHUNK = 1 << 20


class Upload(Protocol):
    """An uploaded file as the HTTP layer hands it over (FastAPI's ``UploadFile`` is one)."""
    filename: str | None
    content_type: str | None
    file: BinaryIO


class UploadRejected(Exception):
    """An upload refused: the answer's status, its ``detail`` and its ``code`` (``ErrorCode``)."""

    def __init__(self, status: int, message: str, code: ErrorCode | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or code_for_status(status)


@dataclass(frozen=True)
class UploadLimits:
    """The defaults are the options table's (``swapstream serve --max-video-mb`` ...)."""
    max_video_bytes: int = int(default("max_video_mb", "serve") * MB)
    max_photo_bytes: int = int(default("max_photo_mb", "serve") * MB)
    max_duration: float = default("max_duration", "serve")    # seconds of video
    max_pixels: int = pixels(default("max_resolution", "serve"))  # per frame (and per photo)
    max_sources: int = 8
    max_fps: float = default("max_fps", "serve")              # average frame rate of a video
    max_frames: int = default("max_frames", "serve")          # frames of a video

    @property
    def max_request_bytes(self) -> int:
        """A job: the video, the source photos and a reference photo, plus room for the form fields."""
        return self.max_video_bytes + (self.max_sources + 1) * self.max_photo_bytes + MB

    @property
    def max_photo_request_bytes(self) -> int:
        """A photo request (swap-image, analyze): photos only."""
        return (self.max_sources + 1) * self.max_photo_bytes + MB

    def request_limit(self, path: str) -> int:
        # a preview sends a job's files
        return self.max_request_bytes if path.rstrip("/") in ("/v1/jobs", "/v1/preview") \
            else self.max_photo_request_bytes


def _kind(upload: Upload, field: str, allowed: set[str]) -> tuple[str, str]:
    """("video" | "photo", the stored file's extension) from the content type and the extension."""
    content_type = (upload.content_type or "").split(";")[0].strip().lower()
    suffix = Path(upload.filename or "").suffix.lower()
    if content_type.startswith("video/"):
        kind = "video"
    elif content_type.startswith("image/"):
        kind = "photo"
    elif content_type in GENERIC_TYPES:
        kind = "video" if suffix in VIDEO_SUFFIXES else "photo" if suffix in IMAGE_SUFFIXES else ""
    else:
        raise UploadRejected(415, f"{field}: content type {content_type!r} is not accepted; send a video "
                                  f"(video/*) or a photo (image/*)", ErrorCode.WRONG_FILE_TYPE)
    if kind not in allowed:
        wanted = " or ".join(sorted(allowed))
        raise UploadRejected(415, f"{field}: expected a {wanted}; send the file with its content type "
                                  f"(e.g. curl -F '{field}=@face.jpg;type=image/jpeg') or a known extension",
                             ErrorCode.NOT_A_PHOTO if allowed == {"photo"} else ErrorCode.WRONG_FILE_TYPE)
    known = VIDEO_SUFFIXES if kind == "video" else IMAGE_SUFFIXES
    return kind, suffix if suffix in known else (".mp4" if kind == "video" else ".png")


def save_upload(upload: Upload, folder: Path, role: str, field: str, allowed: set[str],
                limits: UploadLimits) -> tuple[str, Path]:
    """Copies an upload to ``folder/role<ext>``, enforcing the size limit as it streams; (kind, path)."""
    kind, suffix = _kind(upload, field, allowed)
    limit = limits.max_video_bytes if kind == "video" else limits.max_photo_bytes
    path = folder / f"{role}{suffix}"
    written = 0
    try:
        with open(path, "wb") as out:
            while chunk := upload.file.read(CHUNK):
                written += len(chunk)
                if written > limit:
                    raise UploadRejected(413, f"{field}: larger than the {limit / MB:g} MB limit for a {kind}; "
                                              "send a shorter or more compressed file", ErrorCode.TOO_LARGE)
                out.write(chunk)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise UploadRejected(507, "the server's disk is full; nothing was stored. Try again later "
                                      "or ask the operator to free space", ErrorCode.DISK_FULL) from error
        raise
    if written == 0:
        raise UploadRejected(422, f"{field}: the file is empty", ErrorCode.EMPTY_FILE)
    return kind, path


MAX_NAME = 120  # characters of a display name


def display_name(filename: str | None) -> str:
    """A client's file name as the pages may show it: its last path part, without control characters, at most
    ``MAX_NAME`` characters (the extension kept). Only ever shown: stored files have server-chosen names."""
    name = re.split(r"[/\\]", filename or "")[-1]
    name = " ".join("".join(c for c in name if unicodedata.category(c)[0] != "C").split())
    if len(name) > MAX_NAME:
        stem, dot, suffix = name.rpartition(".")
        keep = suffix if dot and len(suffix) <= 10 else ""
        name = name[:MAX_NAME - len(keep) - 2] + "…" + ("." + keep if keep else "")
    return name


def check_photo(path: Path, field: str, limits: UploadLimits) -> np.ndarray:
    """The photo as RGB, or a rejection: not a still photo of an accepted format, or too many pixels.

    The header is checked before anything is decoded (``swapstream.services.engine.photos``)."""
    try:
        return read_photo(path, limits.max_pixels)
    except PhotoError as error:
        raise UploadRejected(422, f"{field}: {error.reason}", error.code) from None


def check_video(path: Path, field: str, limits: UploadLimits) -> VideoInfo:
    try:
        info = probe_video(path)
    except VideoDecodeError as error:
        raise UploadRejected(422, f"{field}: not a usable video: {without_path(str(error), path)}",
                             ErrorCode.NOT_A_VIDEO) from error
    _check_pixels(field, info.width, info.height, limits)
    if info.duration > limits.max_duration:
        raise UploadRejected(422, f"{field}: {info.duration:.0f} s is longer than the {limits.max_duration:g} s "
                                  "limit; cut it into parts (ffmpeg -ss START -t SECONDS)", ErrorCode.TOO_LONG)
    if info.frame_count > limits.max_frames:
        raise UploadRejected(422, f"{field}: {info.frame_count} frames are more than the {limits.max_frames} "
                                  "allowed; cut it into parts (ffmpeg -ss START -t SECONDS)", ErrorCode.TOO_LONG)
    rate = max(float(info.fps), info.frame_count / info.duration if info.duration > 0 else 0.0)
    if rate > limits.max_fps:
        raise UploadRejected(422, f"{field}: {rate:.0f} frames per second is more than the {limits.max_fps:g} "
                                  f"allowed; re-encode it at a normal rate (ffmpeg -i in -r 30 out.mp4)",
                             ErrorCode.FRAME_RATE_TOO_HIGH)
    return info


def hide_paths(message: str, folder: Path) -> str:
    """``message`` with every path under ``folder`` (the data folder) reduced to the file's own name."""
    return re.sub(re.escape(str(folder)) + r"/(?:[^\s/'\"]+/)*", "", message)


def without_path(message: str, path: Path) -> str:
    """A decoder's message about a stored upload, without the server's path (the client knows the file by its
    field); a message that starts with the path loses that prefix."""
    text = message.replace(str(path), path.name)
    return text[len(path.name) + 2:] if text.startswith(f"{path.name}: ") else text


def _check_pixels(field: str, width: int, height: int, limits: UploadLimits) -> None:
    if width * height > limits.max_pixels:
        raise UploadRejected(422, f"{field}: {width}x{height} is more than the {limits.max_pixels} pixels "
                                  "allowed per frame; downscale it (ffmpeg -vf scale=1920:-2)",
                             ErrorCode.TOO_MANY_PIXELS)


def remove_folder(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


OWNER_FILE = ".owner"
_REQUEST_FOLDER = re.compile(r"[0-9a-f]{32}")


def new_folder(parent: Path) -> Path:
    """A fresh ``parent/<uuid>`` that names the process writing it (so a sweep can tell when it is orphaned)."""
    folder = parent / uuid.uuid4().hex
    folder.mkdir()
    (folder / OWNER_FILE).write_text(worker_id(0))
    return folder


def link_folder(old: Path, new: Path) -> None:
    """The uploads of ``old`` in ``new`` (a ``new_folder``) as hard links, copied where links cannot be made: each
    job owns its folder, so deleting one job never takes another's files. ``new`` names its own writer, so the
    orphan sweep treats it as any submission's."""
    for path in old.iterdir():
        if path.name == OWNER_FILE or not path.is_file():
            continue
        try:
            os.link(path, new / path.name)
        except OSError:
            shutil.copy2(path, new / path.name)


def sweep_orphans(parent: Path, in_use: Callable[[str], bool], stale_after: float) -> list[str]:
    """Removes the folders of ``parent`` that no job uses (``in_use(name)`` False) and whose writer is gone:
    a dead process of this host, or, for folders of other hosts sharing the data volume, untouched for
    ``stale_after`` seconds. Left behind by a process killed during a submission or a photo request."""
    removed = []
    for folder in parent.iterdir():
        # Only the request folders made by new_folder(); anything else there (a temporary folder of some library) is
        # not this sweep's to judge.
        if not (_REQUEST_FOLDER.fullmatch(folder.name) and folder.is_dir()) or in_use(folder.name):
            continue
        try:
            owner = (folder / OWNER_FILE).read_text().strip()
        except OSError:
            owner = ""
        try:
            age = time.time() - folder.stat().st_mtime
        except OSError:
            continue
        if (owner and local_worker_is_dead(owner)) or age > stale_after:
            remove_folder(folder)
            removed.append(folder.name)
    return removed
