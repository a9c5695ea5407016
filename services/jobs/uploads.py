"""Uploaded files: stored under server-chosen names, checked against the service's limits.

A client's file name never reaches a path: only its extension is looked at, and only when it is one
of the known ones. Every rejection is an ``UploadRejected`` carrying the HTTP status and a message
that says what was wrong and what to do; the caller removes the job's folder, so nothing is kept.
"""
from __future__ import annotations

import errno
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from fastapi import UploadFile

from swapstream.pipelines.decode import VideoDecodeError, VideoInfo, probe_video
from swapstream.services.swap.job import IMAGE_SUFFIXES

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"}
# curl and most clients send application/octet-stream for video files; the content is checked anyway.
GENERIC_TYPES = {"", "application/octet-stream"}
CHUNK = 1 << 20
MB = 1 << 20


class UploadRejected(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class UploadLimits:
    max_video_bytes: int = 1024 * MB
    max_photo_bytes: int = 20 * MB
    max_duration: float = 600.0          # seconds of video
    max_pixels: int = 3840 * 2160        # per frame: 4K UHD
    max_sources: int = 8

    @property
    def max_request_bytes(self) -> int:
        return self.max_video_bytes + (self.max_sources + 2) * self.max_photo_bytes + MB


def _kind(upload: UploadFile, field: str, allowed: set[str]) -> tuple[str, str]:
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
                                  f"(video/*) or a photo (image/*)")
    if kind not in allowed:
        wanted = " or ".join(sorted(allowed))
        raise UploadRejected(415, f"{field}: expected a {wanted}; send the file with its content type "
                                  f"(e.g. curl -F '{field}=@face.jpg;type=image/jpeg') or a known extension")
    known = VIDEO_SUFFIXES if kind == "video" else IMAGE_SUFFIXES
    return kind, suffix if suffix in known else (".mp4" if kind == "video" else ".png")


def save_upload(upload: UploadFile, folder: Path, role: str, field: str, allowed: set[str],
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
                                              "send a shorter or more compressed file")
                out.write(chunk)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise UploadRejected(507, "the server's disk is full; nothing was stored. Try again later "
                                      "or ask the operator to free space") from error
        raise
    if written == 0:
        raise UploadRejected(422, f"{field}: the file is empty")
    return kind, path


def check_photo(path: Path, field: str, limits: UploadLimits) -> np.ndarray:
    """The photo as RGB, or a rejection: not a readable image, or too many pixels."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UploadRejected(422, f"{field}: not a readable photo (jpg, png, webp, bmp)")
    height, width = image.shape[:2]
    _check_pixels(field, width, height, limits)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def check_video(path: Path, field: str, limits: UploadLimits) -> VideoInfo:
    try:
        info = probe_video(path)
    except VideoDecodeError as error:
        # The decoder's message starts with our server-side path; the client knows the file by its field.
        reason = str(error).split(": ", 1)[-1]
        raise UploadRejected(422, f"{field}: not a usable video: {reason}") from error
    _check_pixels(field, info.width, info.height, limits)
    if info.duration > limits.max_duration:
        raise UploadRejected(422, f"{field}: {info.duration:.0f} s is longer than the {limits.max_duration:g} s "
                                  "limit; cut it into parts (ffmpeg -ss START -t SECONDS)")
    return info


def _check_pixels(field: str, width: int, height: int, limits: UploadLimits) -> None:
    if width * height > limits.max_pixels:
        raise UploadRejected(422, f"{field}: {width}x{height} is more than the {limits.max_pixels} pixels "
                                  "allowed per frame; downscale it (ffmpeg -vf scale=1920:-2)")


def remove_folder(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
