"""Frames on the wire: JPEG or WebP bytes -> RGB (limits checked from the header, before decoding) and back."""
from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

FORMATS = {"JPEG": ".jpg", "WEBP": ".webp", "PNG": ".png"}


class FrameRejected(ValueError):
    """A frame that is not a usable image; the message says what to do."""


def image_format(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    return None


def decode_frame(data: bytes, max_pixels: int, formats: tuple[str, ...] = ("JPEG", "WEBP")) -> tuple[np.ndarray, str]:
    """(RGB uint8 [H,W,3], its format): frames are JPEG or WebP (photos may be PNG too)."""
    kind = image_format(data)
    if kind not in formats:
        raise FrameRejected(f"not a {' or '.join(formats)} image; send images encoded as {' or '.join(formats)}")
    try:
        width, height = Image.open(io.BytesIO(data)).size  # reads the header only
    except (UnidentifiedImageError, OSError) as error:
        raise FrameRejected(f"the frame is not a readable {kind} image ({error}); send whole encoded frames") from None
    if width * height > max_pixels:
        raise FrameRejected(f"the frame is {width}x{height}, more than the {max_pixels} pixels allowed; "
                            "send a smaller resolution (e.g. 1280x720)")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FrameRejected(f"the frame is not a readable {kind} image (truncated or corrupt); send whole frames")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), kind


def encode_frame(rgb: np.ndarray, kind: str, quality: int) -> bytes:
    flag = cv2.IMWRITE_JPEG_QUALITY if kind == "JPEG" else cv2.IMWRITE_WEBP_QUALITY
    ok, encoded = cv2.imencode(FORMATS[kind], cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [flag, int(quality)])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {kind} frame")
    return encoded.tobytes()
