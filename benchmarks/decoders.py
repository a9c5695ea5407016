"""Decode alone, frames/s: DALI's decoder, PyAV, the ffmpeg binary, and the job's own reader, on the same file.

Each decodes the whole file to RGB frames in memory (one batch or frame at a time, nothing kept). Besides the wall
time each row has the CPU seconds it took (this process's threads and the ffmpeg child): on a shared machine the
CPU time is the steadier figure. Raw PyAV decodes as a user of it would: FFmpeg's frame threads
(``thread_type = "AUTO"``) and its default conversion (``to_ndarray(format="rgb24")``). DALI's CPU decoder takes
VP8/VP9/MJPEG only: on an H.264 file it is reported as unsupported, which is why the harness also measures a VP9 copy
of the clip.
"""
from __future__ import annotations

import resource
import subprocess
import time
from pathlib import Path

import av
import imageio_ffmpeg
import numpy as np

from swapstream.pipelines.decode import VideoDecodeError, open_video, probe_video


def _dali(path: Path, device: str, batch_size: int) -> int:
    return sum(len(batch) for batch in open_video(path, device, batch_size, decoder="dali"))


def _reader(path: Path, device: str, batch_size: int) -> int:
    return sum(len(batch) for batch in open_video(path, device, batch_size))


def _pyav(path: Path, device: str, batch_size: int) -> int:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        count = 0
        for frame in container.decode(stream):
            frame.to_ndarray(format="rgb24")
            count += 1
        return count


def _ffmpeg(path: Path, device: str, batch_size: int) -> int:
    info = probe_video(path)
    frame_bytes = info.width * info.height * 3
    process = subprocess.Popen([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo",
                                "-pix_fmt", "rgb24", "pipe:"], stdout=subprocess.PIPE)
    count = 0
    while True:
        data = process.stdout.read(frame_bytes)
        if len(data) < frame_bytes:
            break
        np.frombuffer(data, np.uint8).reshape(info.height, info.width, 3)
        count += 1
    if process.wait() != 0:
        raise RuntimeError(f"ffmpeg could not decode {path}")
    return count


DECODERS = {"dali": _dali, "pyav": _pyav, "ffmpeg": _ffmpeg, "swapstream reader": _reader}


def measure_decoders(path: Path, device: str = "cpu", batch_size: int = 16, repeats: int = 1) -> list[dict]:
    """One row per decoder: frames, seconds, frames/s, CPU seconds, or ``unsupported`` with the reason.

    The decoders run in turn ``repeats`` times (so that a change of the machine's load touches all of them alike);
    a row's seconds and CPU seconds are each the least of its runs (other work on the machine only adds to them).
    """
    info = probe_video(path)
    rows = {name: {"file": path.name, "codec": info.codec, "resolution": f"{info.width}x{info.height}",
                   "decoder": name} for name in DECODERS}
    runs = {name: [] for name in DECODERS}
    rows["swapstream reader"]["decoder"] = f"swapstream reader ({open_video(path, device).decoder})"
    for _ in range(repeats):
        for name, decode in DECODERS.items():
            if "unsupported" in rows[name]:
                continue
            cpu_started, started = _cpu_seconds(), time.perf_counter()
            try:
                frames = decode(path, device, batch_size)
            except VideoDecodeError as error:
                rows[name].update(frames=0, seconds=0.0, frames_per_s=None, unsupported=str(error))
                continue
            runs[name].append((frames, time.perf_counter() - started, _cpu_seconds() - cpu_started))
    for name, measured in runs.items():
        if measured:
            frames = measured[0][0]
            seconds, cpu_seconds = (min(run[i] for run in measured) for i in (1, 2))
            rows[name].update(frames=frames, seconds=seconds, frames_per_s=frames / seconds, cpu_seconds=cpu_seconds)
    return list(rows.values())


def _cpu_seconds() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def reader_over_pyav(rows: list[dict]) -> list[dict]:
    """Per file: the reader's speed over raw PyAV's (decode to RGB), by wall time and by CPU time."""
    out = []
    for file in dict.fromkeys(r["file"] for r in rows):
        mine = {r["decoder"].split(" (")[0]: r for r in rows if r["file"] == file and r["frames_per_s"]}
        reader, pyav = mine.get("swapstream reader"), mine.get("pyav")
        if reader and pyav:
            out.append({"file": file, "wall": reader["frames_per_s"] / pyav["frames_per_s"],
                        "cpu": (pyav["cpu_seconds"] / pyav["frames"]) / (reader["cpu_seconds"] / reader["frames"])})
    return out
