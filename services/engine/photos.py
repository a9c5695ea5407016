"""The one photo reader: every photo that enters (job uploads, swap-image, analyse, sources, a live ``start``'s
source image) and every live frame is checked from its header first: the format, the frame count and the size,
before any pixel is decoded (an 856 KB PNG can claim 30000x30000 pixels, 2.7 GB decoded), and a JPEG's scans are
counted (``jpeg_scans``: 400 KB of empty progressive scans cost minutes of decoding)."""
from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from swapstream.services.engine.errors import ErrorCode, PhotoError
from swapstream.services.engine.jpeg_scans import MAX_SCANS, count_scans

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
PHOTO_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")  # what IMAGE_SUFFIXES name, as Pillow reports it
MAX_PIXELS = 7680 * 4320  # 8K UHD


def check_header(source: Path | bytes, max_pixels: int = MAX_PIXELS, formats: tuple[str, ...] = PHOTO_FORMATS,
                 max_side: int | None = None) -> str:
    """The photo's format once its header passed: one of ``formats``, a still image, at most ``max_pixels`` (and
    ``max_side`` pixels a side), a JPEG of at most ``MAX_SCANS`` scans. Nothing is decoded. Raises PhotoError (its
    ``reason`` names no file)."""
    names = " or ".join(formats)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as header:
                kind, (width, height), frames = header.format, header.size, getattr(header, "n_frames", 1)
    except Image.DecompressionBombError as error:  # Pillow's own limit, far above ours: its message has the count
        claimed = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{claimed.group(1)} pixels" if claimed else "its size"
        raise PhotoError(f"{size} is {_over(max_pixels)}; downscale it", code=ErrorCode.TOO_MANY_PIXELS) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise PhotoError(f"not a {names} image; send a still photo encoded as {names}") from None
    if kind not in formats:
        raise PhotoError(f"not a {names} image ({kind}); send a still photo encoded as {names}")
    if width * height > max_pixels:
        raise PhotoError(f"{width}x{height} is {_over(max_pixels)}; downscale it", code=ErrorCode.TOO_MANY_PIXELS)
    if max_side is not None and max(width, height) > max_side:
        raise PhotoError(f"{width}x{height} is more than {max_side} pixels a side; send the usual shape of a camera "
                         "or photo (e.g. 1280x720)", code=ErrorCode.TOO_MANY_PIXELS)
    if frames != 1:
        raise PhotoError(f"an animated image ({frames} frames); send a still photo")
    if kind == "JPEG":
        scans = count_scans(source if isinstance(source, bytes) else Path(source).read_bytes())
        if scans > MAX_SCANS:
            raise PhotoError(f"a JPEG of {scans} scans (at most {MAX_SCANS}); re-encode it as an ordinary JPEG")
    return kind


def _over(max_pixels: int) -> str:
    limit = "8K" if max_pixels == MAX_PIXELS else f"{max_pixels} pixels"
    return f"larger than {limit} ({max_pixels} pixels allowed)"


_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def decode_checked(data: bytes, kind: str, longest: int | None = None) -> np.ndarray:
    """RGB uint8 [H,W,3] of an encoded photo whose header passed ``check_header`` (``kind``: the format it gave).
    Raises PhotoError when the pixels cannot be decoded. ``longest``: decoded at 1/2, 1/4 or 1/8 of its size while
    its longest side stays at least that (a JPEG is decoded at the smaller size directly)."""
    flag = cv2.IMREAD_COLOR
    if longest is not None:
        with Image.open(io.BytesIO(data)) as header:
            side = max(header.size)
        flag = next((_REDUCED[f] for f in (8, 4, 2) if side // f >= longest), cv2.IMREAD_COLOR)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if bgr is None:
        raise PhotoError(f"not a readable {kind} image (truncated or corrupt); send the whole file")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_photo(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A still photo file as RGB, its header checked first. Raises PhotoError (its message names the file)."""
    try:
        kind = check_header(Path(path), max_pixels)
    except PhotoError as error:
        raise PhotoError(error.reason, path, error.code) from None
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise PhotoError(f"not a readable {kind} image (truncated or corrupt); send the whole file", path)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
