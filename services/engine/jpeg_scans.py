"""The number of scans in a JPEG, counted from its markers without decoding anything.

A progressive JPEG is decoded scan by scan, and each scan walks the whole image: a few megabytes of near-empty scans
(hundreds of thousands) cost minutes of CPU in any decoder. Real encoders write at most a dozen or so; the photo
reader refuses more than ``MAX_SCANS`` before it decodes.
"""
from __future__ import annotations

MAX_SCANS = 100
_SOS = b"\xff\xda"
# Markers without a length field: SOI, EOI, RST0-7, TEM.
_STANDALONE = {0xD8, 0xD9, 0x01, *range(0xD0, 0xD8)}


def count_scans(data: bytes) -> int:
    """Start-of-scan markers in a JPEG. The segments before the first scan are walked by their lengths (an EXIF
    thumbnail inside one is skipped); after it, the entropy-coded data cannot contain 0xFFDA (a 0xFF there is
    followed by 0x00 or a restart marker), so every 0xFFDA is a scan."""
    position = 2  # after SOI
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return 0  # not a marker: a damaged file, which the decoder refuses by itself
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xDA:
            return data.count(_SOS, position)
        if marker in _STANDALONE:
            position += 2
            continue
        position += 2 + int.from_bytes(data[position + 2:position + 4], "big")
    return 0
