"""The clips and inputs the benchmarks run on, and the comparison of two swapped videos."""
from __future__ import annotations

import subprocess
from pathlib import Path

import av
import cv2
import imageio_ffmpeg
import numpy as np

from swapstream.services.engine.encoder import VideoWriter
from swapstream.services.engine.photos import read_photo
from swapstream.services.engine.swapper import FACE_SIZE, similarity_to
from swapstream.services.triton.repository import shared_dir

DEFAULT_CLIP = "vid01_talking_head_1280x720_audio.mp4"
DEFAULT_SOURCE = "img01_single_frontal_obama.jpg"
PHOTO_FOR_CLIP = "img03_single_frontal_rose_leslie.jpg"
CHANGED_LEVELS = 8  # a pixel differs from the input by more than this: the swap changed it (codec noise is less)


def ffmpeg(*args: str) -> None:
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", *args, "-y"], check=True)


def cut(source: Path, out: Path, frames: int) -> Path:
    """The first ``frames`` frames of ``source`` (H.264, near lossless; audio copied)."""
    ffmpeg("-i", str(source), "-frames:v", str(frames), "-c:v", "libx264", "-crf", "12", "-preset", "veryfast",
           "-c:a", "copy", str(out))
    return out


def to_vp9(source: Path, out: Path) -> Path:
    """A VP9 WebM copy of ``source`` (DALI's CPU decoder takes VP9, not H.264)."""
    ffmpeg("-i", str(source), "-an", "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8",
           "-b:v", "2M", str(out))
    return out


def clip_from_photo(photo: Path, out: Path, frames: int, fps: int = 30, size: int = 480) -> Path:
    """A clip of a real photo slowly panned and zoomed (a real face that moves), for when no video is at hand."""
    rgb = read_photo(photo)
    h, w = rgb.shape[:2]
    base = size / min(h, w)
    with VideoWriter(out, size, size, fps, crf=12, preset="veryfast") as writer:
        for i in range(frames):
            t = i / max(frames - 1, 1)
            scale = base * (1.0 + 0.15 * t)
            dx, dy = 20 * np.sin(2 * np.pi * t), 10 * t
            matrix = np.array([[scale, 0, size / 2 - scale * w / 2 + dx], [0, scale, size / 2 - scale * h / 2 + dy]])
            writer.write(cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_LINEAR,
                                        borderMode=cv2.BORDER_REFLECT)[None])
    return out


def default_clip(out_dir: Path, frames: int) -> Path:
    """The first ``frames`` frames of the shared talking-head clip, else a clip made from a shared photo."""
    media = shared_dir() / "media"
    if (media / DEFAULT_CLIP).is_file():
        return cut(media / DEFAULT_CLIP, out_dir / f"clip-{frames}.mp4", frames)
    return clip_from_photo(media / PHOTO_FOR_CLIP, out_dir / f"clip-{frames}.mp4", frames)


def default_source() -> Path:
    return shared_dir() / "media" / DEFAULT_SOURCE


def iter_frames(path: Path):
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def read_frames(path: Path, limit: int) -> np.ndarray:
    """The first ``limit`` frames of a video, RGB."""
    frames = []
    for frame in iter_frames(path):
        frames.append(frame)
        if len(frames) == limit:
            break
    return np.stack(frames)


def to_detector_size(frames: np.ndarray, detect_size: int = 640) -> np.ndarray:
    """Frames downscaled as the pipeline sends them to ``detect`` (longest side at most ``detect_size``)."""
    h, w = frames.shape[1:3]
    scale = min(1.0, detect_size / max(h, w))
    if scale == 1.0:
        return frames
    size = (round(w * scale), round(h * scale))
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])


def aligned_faces(frames: np.ndarray, landmarks: np.ndarray, frame_index: np.ndarray) -> np.ndarray:
    """FFHQ-512 crops [K,512,512,3] of the faces with these landmarks (full-resolution pixels)."""
    matrices = similarity_to(landmarks, "ffhq_512", FACE_SIZE)
    return np.stack([cv2.warpAffine(frames[i], m, (FACE_SIZE, FACE_SIZE), flags=cv2.INTER_LINEAR)
                     for i, m in zip(frame_index, matrices)])


def compare_swaps(original: Path, first: Path, second: Path) -> dict:
    """How alike two swaps of the same clip are: which frames each changed, and their pixel difference.

    A frame counts as swapped when pixels differ from the original by more than ``CHANGED_LEVELS`` (codec
    noise stays below); the difference between the two outputs is measured over the pixels either changed.
    """
    counts = [sum(1 for _ in iter_frames(p)) for p in (original, first, second)]
    if len(set(counts)) != 1:
        return {"frames": counts, "same_frame_count": False}
    swapped_a, swapped_b, diff_sum, change_sum, changed, overlap, all_diff = [], [], 0.0, 0.0, 0, 0, 0.0
    for source, a, b in zip(*(iter_frames(p) for p in (original, first, second))):
        source, a, b = (x.astype(np.int16) for x in (source, a, b))
        changed_a = np.abs(a - source).max(axis=-1) > CHANGED_LEVELS
        changed_b = np.abs(b - source).max(axis=-1) > CHANGED_LEVELS
        min_pixels = 0.001 * changed_a.size
        swapped_a.append(changed_a.sum() > min_pixels)
        swapped_b.append(changed_b.sum() > min_pixels)
        either = changed_a | changed_b
        difference = np.abs(a - b)
        diff_sum += float(difference[either].sum())
        change_sum += float(np.abs(a - source)[either].sum())
        changed += int(either.sum()) * 3
        overlap += int((changed_a & changed_b).sum())
        all_diff += float(difference.mean())
    frames = counts[0]
    return {
        "frames": frames, "same_frame_count": True,
        "swapped_frames": [int(sum(swapped_a)), int(sum(swapped_b))],
        "same_frames_swapped": swapped_a == swapped_b,
        "mean_abs_diff_swapped_pixels": diff_sum / changed if changed else 0.0,
        "mean_change_swapped_pixels": change_sum / changed if changed else 0.0,
        "mean_abs_diff_all_pixels": all_diff / frames if frames else 0.0,
        "changed_pixel_overlap": overlap * 3 / changed if changed else 0.0,
    }
