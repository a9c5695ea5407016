"""The engine's input errors: each message says what was wrong and what to do; and the service's error codes."""
from __future__ import annotations

from enum import StrEnum
from pathlib import Path


class ErrorCode(StrEnum):
    """The machine-readable ``code`` every error answer of the service carries beside its ``detail`` (the pages
    word each one themselves, services/web/static/common.js). Here, below every room that answers errors."""
    NO_FACE_IN_SOURCE = "no_face_in_source"
    NO_FACE_IN_TARGET = "no_face_in_target"
    NO_FACE_IN_REFERENCE = "no_face_in_reference"
    MISSING_SOURCE = "missing_source"
    TOO_MANY_SOURCES = "too_many_sources"
    MISSING_REFERENCE = "missing_reference"
    NOT_A_VIDEO = "not_a_video"
    NOT_A_PHOTO = "not_a_photo"
    WRONG_FILE_TYPE = "wrong_file_type"
    EMPTY_FILE = "empty_file"
    TOO_LARGE = "too_large"
    TOO_MANY_PIXELS = "too_many_pixels"
    TOO_LONG = "too_long"
    FRAME_RATE_TOO_HIGH = "frame_rate_too_high"
    BAD_INPUT = "bad_input"
    BAD_OPTION = "bad_option"
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    FORBIDDEN_ORIGIN = "forbidden_origin"
    BAD_HOST = "bad_host"
    NOT_FOUND = "not_found"
    NOT_READY = "not_ready"
    GONE = "gone"
    TOO_MANY_REQUESTS = "too_many_requests"
    DISK_FULL = "disk_full"
    INFERENCE_UNAVAILABLE = "inference_unavailable"
    STORE_UNAVAILABLE = "store_unavailable"
    UNAVAILABLE = "unavailable"
    INTERNAL_ERROR = "internal_error"


_BY_STATUS = {400: ErrorCode.BAD_REQUEST, 401: ErrorCode.UNAUTHORIZED, 403: ErrorCode.FORBIDDEN,
              404: ErrorCode.NOT_FOUND, 409: ErrorCode.NOT_READY, 410: ErrorCode.GONE, 413: ErrorCode.TOO_LARGE,
              422: ErrorCode.BAD_INPUT, 429: ErrorCode.TOO_MANY_REQUESTS, 503: ErrorCode.UNAVAILABLE,
              507: ErrorCode.DISK_FULL}


def code_for_status(status: int) -> ErrorCode:
    """The code of an answer raised with a status only (e.g. a plain HTTPException)."""
    return _BY_STATUS.get(status, ErrorCode.INTERNAL_ERROR if status >= 500 else ErrorCode.BAD_REQUEST)


class SwapInputError(ValueError):
    """Bad input (source photo, target, options); the message says what and what to do."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.BAD_INPUT):
        super().__init__(message)
        self.code = code


class PhotoError(SwapInputError):
    """A photo that is refused; ``reason`` says why without naming the file (the caller knows it by its role)."""

    def __init__(self, reason: str, path: Path | None = None, code: ErrorCode = ErrorCode.NOT_A_PHOTO):
        super().__init__(f"{path}: {reason}" if path is not None else reason, code)
        self.reason = reason
