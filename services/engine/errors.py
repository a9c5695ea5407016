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
    PICK_ON_NO_FACE = "pick_on_no_face"        # a picked point (pick_points) is on no face of its frame
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
    # a job's failure or wait reason (GET /v1/jobs: ``error_code`` beside ``error``)
    WORKER_LOST = "worker_lost"                # its worker stopped or went silent; re-queued or, at the last attempt, failed
    SERVICE_RESTARTING = "service_restarting"  # the replica running it stopped; re-queued, the attempt not counted
    ENCODE_FAILED = "encode_failed"            # the result could not be written with these settings
    # live messages (WS /v1/live ``error``: ``code`` beside ``detail``)
    BAD_FRAME = "bad_frame"                    # a frame refused: not an image, truncated, out of order, bad header
    BAD_MESSAGE = "bad_message"                # a text message the stream does not take
    WRONG_SWAPPER = "wrong_swapper"            # a stored source made for another swapper than the stream's
    SWITCH_PENDING = "switch_pending"          # a ``source`` message while the previous one is still being made


_BY_STATUS = {400: ErrorCode.BAD_REQUEST, 401: ErrorCode.UNAUTHORIZED, 403: ErrorCode.FORBIDDEN,
              404: ErrorCode.NOT_FOUND, 409: ErrorCode.NOT_READY, 410: ErrorCode.GONE, 413: ErrorCode.TOO_LARGE,
              422: ErrorCode.BAD_INPUT, 429: ErrorCode.TOO_MANY_REQUESTS, 503: ErrorCode.UNAVAILABLE,
              507: ErrorCode.DISK_FULL}


_NO_FACE = {"source": ErrorCode.NO_FACE_IN_SOURCE, "target": ErrorCode.NO_FACE_IN_TARGET,
            "reference": ErrorCode.NO_FACE_IN_REFERENCE}


def no_face_code(what: str) -> ErrorCode:
    """The code of "no face found" in a photo named by its role first ("source photo 2", "reference photo ...")."""
    return _NO_FACE.get(what.split()[0] if what else "", ErrorCode.BAD_INPUT)


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
