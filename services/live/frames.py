"""Frames on the wire: JPEG or WebP bytes -> RGB (limits checked from the header, before decoding) and back."""
from __future__ import annotations

import cv2
import numpy as np

from swapstream.services.engine.errors import ErrorCode, PhotoError
from swapstream.services.engine.photos import decode_photo

FORMATS = {"JPEG": ".jpg", "WEBP": ".webp", "PNG": ".png"}


class FrameRejected(ValueError):
    """A frame that is not a usable image; the message says what to do, ``code`` what kind."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.BAD_FRAME):
        super().__init__(message)
        self.code = code


def decode_frame(data: bytes, max_pixels: int, max_side: int | None = None,
                 formats: tuple[str, ...] = ("JPEG", "WEBP"), longest: int | None = None) -> tuple[np.ndarray, str]:
    """(RGB uint8 [H,W,3], its format): frames are JPEG or WebP (photos may be PNG too), at most ``max_side``
    pixels a side; ``longest``: decoded smaller, down to that longest side. The header checks are the photo
    reader's (``swapstream.services.engine.photos``): nothing is decoded before they pass."""
    try:
        return decode_photo(data, max_pixels, formats, max_side, longest)
    except PhotoError as error:
        raise FrameRejected(error.reason, error.code) from None


def encode_frame(rgb: np.ndarray, kind: str, quality: int) -> bytes:
    flag = cv2.IMWRITE_JPEG_QUALITY if kind == "JPEG" else cv2.IMWRITE_WEBP_QUALITY
    ok, encoded = cv2.imencode(FORMATS[kind], cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [flag, int(quality)])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {kind} frame")
    return encoded.tobytes()
