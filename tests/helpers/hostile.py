"""Hostile files the hardening tests make: decompression bombs, high-rate and size-changing streams, concat scripts,
progressive-JPEG scan bombs."""
from __future__ import annotations

import struct
import subprocess
import zlib
from pathlib import Path

import imageio_ffmpeg


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A valid greyscale PNG of ``width`` x ``height`` black pixels: a few hundred KB that decode to width*height bytes.

    The zlib stream is one fully flushed deflate segment (a block of rows) repeated, so writing it is fast.
    """
    row = b"\x00" * (width + 1)                       # filter byte + pixels
    rows_per_block = max(1, (1 << 20) // len(row))
    block = row * rows_per_block
    compressor = zlib.compressobj(9)
    segment = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    header, segment = segment[:2], segment[2:]
    blocks, rest = divmod(height, rows_per_block)
    adler = 1
    for _ in range(blocks):
        adler = zlib.adler32(block, adler)
    tail_data = row * rest
    tail = zlib.compressobj(9)
    tail_bytes = tail.compress(tail_data) + tail.flush(zlib.Z_FINISH)
    adler = zlib.adler32(tail_data, adler)
    # The tail compressor's own header and checksum are dropped: its deflate data continue the stream.
    stream = header + segment * blocks + tail_bytes[2:-4] + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b""))
    return path


def ffmpeg(*args: str) -> None:
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", *args], check=True)


def high_rate_video(path: Path, fps: int = 10000, seconds: float = 6.0, size: int = 16) -> Path:
    """A tiny video with a huge frame count: ``fps`` frames a second of ``size`` x ``size`` pixels."""
    ffmpeg("-f", "lavfi", "-i", f"color=c=gray:s={size}x{size}:r={fps}:d={seconds}", "-c:v", "libx264",
           "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path))
    return path


def size_changing_ts(path: Path, small: int = 160, large: int = 4096, frames: int = 10) -> Path:
    """An MPEG-TS stream whose frames switch from ``small`` x ``small`` to ``large`` x ``large`` pixels."""
    parts = []
    for index, size in enumerate((small, large)):
        part = path.with_name(f"{path.stem}-{index}.ts")
        ffmpeg("-f", "lavfi", "-i", f"testsrc=s={size}x{size}:r=10", "-frames:v", str(frames), "-c:v", "libx264",
               "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-f", "mpegts", str(part))
        parts.append(part)
    path.write_bytes(b"".join(p.read_bytes() for p in parts))
    for part in parts:
        part.unlink()
    return path


def ffconcat_script(path: Path) -> Path:
    """A two-line FFmpeg concat script that names itself: opened by the concat demuxer, it recurses."""
    path.write_text(f"ffconcat version 1.0\nfile '{path.name}'\n")
    return path


def _jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, bytes) of each segment after SOI; a scan's bytes run to the next marker that is not a restart."""
    position, segments = 2, []
    while position < len(data):
        marker = data[position + 1]
        if marker == 0xD9:
            segments.append((marker, data[position:position + 2]))
            break
        end = position + 2 + int.from_bytes(data[position + 2:position + 4], "big")
        if marker == 0xDA:
            while True:
                end = data.index(b"\xff", end)
                if data[end + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
                    end += 2
                    continue
                break
        segments.append((marker, data[position:end]))
        position = end
    return segments


def scan_bomb(width: int = 1920, height: int = 1080, size: int = 200_000) -> bytes:
    """A progressive JPEG of a flat ``width`` x ``height`` image whose smallest scan is repeated to ``size`` bytes:
    thousands of scans of a dozen bytes, each of which a decoder applies to the whole image."""
    import cv2
    import numpy as np

    flat = np.full((height, width, 3), 128, np.uint8)
    data = cv2.imencode(".jpg", flat, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    segments = _jpeg_segments(data)
    smallest = min((s for marker, s in segments if marker == 0xDA), key=len)
    head = data[:2] + b"".join(s for marker, s in segments if marker != 0xD9)
    return head + smallest * (size // len(smallest)) + b"\xff\xd9"
