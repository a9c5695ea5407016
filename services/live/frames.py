"""Frames on the wire: JPEG or WebP bytes -> RGB and back. A frame's limits are checked from its header when it
arrives (``check_frame``); its pixels are decoded only when the scheduler takes it (``decode_frame``), so a frame
dropped for a newer one is never decoded."""
from __future__ import annotations

import cv2
import numpy as np

from swapstream.services.engine.errors import ErrorCode, PhotoError
from swapstream.services.engine.photos import check_header, decode_checked
from swapstream.services.live.protocol import error_message

FORMATS = {"JPEG": ".jpg", "WEBP": ".webp", "PNG": ".png"}


class FrameRejected(ValueError):
    """A frame that is not a usable image; the message says what to do, ``code`` what kind."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.BAD_FRAME):
        super().__init__(message)
        self.code = code


def check_frame(data: bytes, max_pixels: int, max_side: int | None = None,
                formats: tuple[str, ...] = ("JPEG", "WEBP")) -> str:
    """The frame's format once its header passed the photo reader's checks (``swapstream.services.engine.photos``):
    frames are JPEG or WebP (photos may be PNG too), at most ``max_pixels`` and ``max_side`` pixels a side. Nothing
    is decoded."""
    try:
        return check_header(data, max_pixels, formats, max_side)
    except PhotoError as error:
        raise FrameRejected(error.reason, error.code) from None


def decode_frame(data: bytes, kind: str, longest: int | None = None) -> np.ndarray:
    """RGB uint8 [H,W,3] of a frame that passed ``check_frame`` (``kind``: the format it gave); FrameRejected when
    its pixels cannot be decoded (truncated or corrupt). ``longest``: decoded smaller, down to that longest side."""
    try:
        return decode_checked(data, kind, longest)
    except PhotoError as error:
        raise FrameRejected(error.reason, error.code) from None


def refusal(error: Exception, seq: int | None) -> dict:
    """The ``error`` message for a refused frame (a FrameRejected or a bad header): ``too_many_pixels``, else
    ``bad_frame``."""
    too_many = getattr(error, "code", None) == ErrorCode.TOO_MANY_PIXELS
    return error_message(ErrorCode.TOO_MANY_PIXELS if too_many else ErrorCode.BAD_FRAME, str(error), seq)


def encode_frame(rgb: np.ndarray, kind: str, quality: int) -> bytes:
    flag = cv2.IMWRITE_JPEG_QUALITY if kind == "JPEG" else cv2.IMWRITE_WEBP_QUALITY
    ok, encoded = cv2.imencode(FORMATS[kind], cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [flag, int(quality)])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {kind} frame")
    return encoded.tobytes()
