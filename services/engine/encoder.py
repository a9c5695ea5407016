"""The output end of a job: RGB frames -> video file through an ffmpeg subprocess; photos -> image file.

`VideoWriter` streams raw RGB frames into ffmpeg's stdin (no frames on disk) and copies the source's
audio stream without re-encoding. Nothing appears under the output name until ffmpeg has finished
successfully: ffmpeg writes `.<stem>.<random>.partial<ext>` in the output's folder (same extension,
so ffmpeg picks the same muxer) and that file is renamed over the output at the end. A failed or
aborted run removes it; an older file already at the output name is left as it was.

Choices worth knowing:
- Odd sizes with a chroma-subsampled pix_fmt (yuv420p needs even width and height) are padded by one
  pixel on the right/bottom, repeating the edge pixels, rather than refused: the pipeline passes
  whatever size the source has. `VideoWriter.output_size` and `.notes` say when this happened.
- Colour: RGB is converted with the BT.709 matrix, limited range, and the stream is tagged so
  (decoders that honour the tags, PyAV included, get the same RGB back).
- A source whose video starts after its audio (e.g. 0.85 s later) keeps that offset: the frames are
  timestamped `video_start - <source's start>` later, on a fine time base (see `_fine_time_base`),
  and the mp4/mov muxer records it as an edit list. `-itsoffset` would do the same but rounds the
  offset to whole frames of the raw input's time base.
- A part of the source (`audio_window`, seconds of its timeline) takes only that part's audio: ffmpeg seeks the
  audio input (`-ss`/`-t`, copied from the packet at or before the start: within one audio frame, ~21 ms for AAC).
- `max_height` scales taller frames down in ffmpeg (area averaging, even sizes kept), after the swap: the faces are
  swapped at full resolution and only the written file is smaller.
- If the output container cannot hold the source's audio codec (checked by a short ffmpeg trial
  run before encoding), the audio is encoded instead (AAC; Opus for WebM), logged as a warning and
  recorded in `.audio` and `.notes`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import uuid
from collections import deque
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
# Containers whose moov atom can be moved to the front so that players can start before the end.
_FASTSTART = frozenset({".mp4", ".m4v", ".mov"})
# Audio encoder used when the source's audio cannot be copied into the output container.
_FALLBACK_AUDIO = {".webm": ("libopus", "128k")}
_DEFAULT_FALLBACK_AUDIO = ("aac", "192k")
_STDERR_LINES = 40


class EncodeError(ValueError):
    """Encoding could not start or did not finish; the message says what was wrong and what to do."""


class OutputPathError(EncodeError):
    """The output path cannot be written: missing or read-only folder, a directory, no extension."""


def default_ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


# ---------------------------------------------------------------------------------------------
# output paths


def _check_output_path(output: Path | str) -> Path:
    output = Path(output)
    folder = output.parent
    if not folder.exists():
        raise OutputPathError(f"output folder {folder} does not exist: create it first (mkdir -p {folder})")
    if not folder.is_dir():
        raise OutputPathError(f"output folder {folder} is not a folder: choose an output path inside a folder")
    if output.is_dir():
        raise OutputPathError(f"output {output} is an existing directory: give a file name, e.g. {output / 'out.mp4'}")
    if not output.suffix:
        raise OutputPathError(f"output {output} has no extension, so no file format can be chosen: "
                              f"name it e.g. {output}.mp4")
    return output


def _create_partial(output: Path) -> Path:
    """Create the temporary file next to the output; this is also the check that the folder is writable."""
    partial = output.with_name(f".{output.stem}.{uuid.uuid4().hex[:8]}.partial{output.suffix}")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise OutputPathError(f"cannot write into output folder {output.parent}: {exc.strerror}; "
                              "make it writable or choose another folder") from exc
    os.close(fd)
    return partial


def _commit(partial: Path, output: Path) -> None:
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    os.replace(partial, output)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------------------------------------
# probing


def probe(path: Path | str) -> dict:
    """What a media file holds, read with PyAV.

    Keys: width, height, fps (Fraction), frames, video_codec, pix_fmt, video_start (s), has_audio,
    audio_codec, audio_start (s), start (the container's start, s), duration (s). Video keys are None
    (frames 0) when there is no video stream, audio keys None when there is no audio stream. `frames`
    comes from the header, or from counting video packets when the header has no count (MKV/WebM).
    """
    path = Path(path)
    with av.open(str(path)) as container:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        info = {
            "start": container.start_time / av.time_base if container.start_time is not None else 0.0,
            "duration": container.duration / av.time_base if container.duration is not None else None,
            "width": None, "height": None, "fps": None, "frames": 0, "video_codec": None,
            "pix_fmt": None, "video_start": None,
            "has_audio": audio is not None,
            "audio_codec": audio.codec_context.name if audio is not None else None,
            "audio_start": _start_seconds(audio),
        }
        if video is not None:
            info.update(
                width=video.codec_context.width,
                height=video.codec_context.height,
                fps=video.average_rate or video.guessed_rate or video.base_rate,
                video_codec=video.codec_context.name,
                pix_fmt=video.codec_context.pix_fmt,
                video_start=_start_seconds(video),
                frames=video.frames or sum(1 for packet in container.demux(video) if packet.size),
            )
    return info


def _start_seconds(stream) -> float | None:
    if stream is None or stream.start_time is None:
        return None
    return float(stream.start_time * stream.time_base)


# ---------------------------------------------------------------------------------------------
# ffmpeg helpers


@functools.lru_cache(maxsize=None)
def _video_encoders(ffmpeg: str) -> frozenset[str]:
    listing = subprocess.run([ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True,
                             check=True).stdout
    names = set()
    for line in listing.split("------", 1)[-1].splitlines():
        flags, _, rest = line.strip().partition(" ")
        if flags.startswith("V") and rest:
            names.add(rest.split()[0])
    return frozenset(names)


def _fine_time_base(fps: Fraction) -> int:
    """Ticks per second for the output video: a whole number of ticks per frame (fps.numerator * k
    ticks/s give fps.denominator * k per frame, so mp4 timestamps stay exact) and at least 10000
    ticks/s, so the audio/video offset is kept to 0.1 ms instead of being rounded to whole frames."""
    return fps.numerator * max(1, math.ceil(10000 / fps.numerator))


def _even_multiples(pix_fmt: str) -> tuple[int, int]:
    """(x, y) that width and height must be multiples of for this pix_fmt (2 where chroma is subsampled)."""
    try:
        fmt = av.VideoFormat(pix_fmt)
    except ValueError as exc:
        raise EncodeError(f"unknown pix_fmt {pix_fmt!r}: use e.g. 'yuv420p' (most compatible) or 'yuv444p'") from exc
    return (2 if fmt.chroma_width(2) < 2 else 1), (2 if fmt.chroma_height(2) < 2 else 1)


def _exit_reason(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"ffmpeg was killed by {name} (stopped from outside, or out of memory)"
    return f"ffmpeg exited with status {returncode}"


def _some_lines(text: str, n: int = 12, first: bool = False) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(lines[:n] if first else lines[-n:]) or "(nothing on stderr)"


class _StderrTail:
    """Reads a pipe to its end in a background thread (so ffmpeg never blocks on a full stderr pipe),
    keeping the last lines for error messages."""

    def __init__(self, stream):
        self._lines: deque[str] = deque(maxlen=_STDERR_LINES)
        self._thread = threading.Thread(target=self._read, args=(stream,), name="ffmpeg-stderr", daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        with stream:
            for raw in iter(stream.readline, b""):
                self._lines.append(raw.decode("utf-8", "replace").rstrip())

    def text(self, timeout: float = 5.0) -> str:
        self._thread.join(timeout)
        return "\n".join(self._lines)


# ---------------------------------------------------------------------------------------------
# video


class VideoWriter:
    """Encodes RGB frames to a video file with ffmpeg, copying the audio stream of `audio_from`.

    Use as a context manager: a clean exit calls `close()` (the output appears), an exception calls
    `abort()` (nothing appears). `write()` takes uint8 RGB frames shaped (n, height, width, 3) or one
    (height, width, 3) frame. Not thread-safe: one thread writes.

    `video_start` is the source video stream's start time in seconds (`probe(src)["video_start"]`);
    it only matters together with `audio_from`, whose own start is subtracted, so that the video
    starts as much later than the audio as it did in the source; with `audio_window` (start, end), only the
    source's audio between those times is written and `video_start` is measured from the window's start.
    `max_height`: frames taller than this are scaled down (shape kept, even sizes). `crf` / `preset` of None are left
    out of the command (for encoders without them). Raises `EncodeError` (a `ValueError`) or
    `OutputPathError` with what was wrong before starting ffmpeg, and `EncodeError` with ffmpeg's
    last stderr lines if it fails while encoding.
    """

    def __init__(self, output: Path | str, width: int, height: int, fps: Fraction | int | float | str, *,
                 audio_from: Path | str | None = None, video_start: float = 0.0, codec: str = "libx264",
                 crf: int | None = 18, preset: str | None = "medium", pix_fmt: str = "yuv420p",
                 ffmpeg: str | None = None, audio_window: tuple[float, float] | None = None,
                 max_height: int | None = None):
        self.width, self.height = _positive_int(width, "width"), _positive_int(height, "height")
        self.fps = _as_fps(fps)
        self.codec, self.crf, self.preset, self.pix_fmt = codec, crf, preset, pix_fmt
        self.output = _check_output_path(output)
        self.notes: list[str] = []
        self.frames_written = 0
        self._proc: subprocess.Popen | None = None
        self._state = "new"
        self._partial = _create_partial(self.output)
        try:
            self.ffmpeg = ffmpeg or default_ffmpeg()
            self._check_codec()
            self._pad = self._padding()
            self.output_size = (self.width + self._pad[0], self.height + self._pad[1])
            self.scaled_size = self._scaled_size(max_height)
            self._trial_video()
            self.audio_from = Path(audio_from) if audio_from is not None else None
            self.audio_window = audio_window
            self.audio, self._offset = self._plan_audio(video_start)
            self.command = self._command()
            self._start()
        except BaseException:
            _remove(self._partial)
            raise

    # -- set-up ------------------------------------------------------------------------------

    def _check_codec(self) -> None:
        if shutil.which(self.ffmpeg) is None:
            raise EncodeError(f"ffmpeg not found at {self.ffmpeg}: install imageio-ffmpeg or pass ffmpeg=<path>")
        encoders = _video_encoders(self.ffmpeg)
        if self.codec not in encoders:
            common = ", ".join(c for c in ("libx264", "libx265", "libvpx-vp9", "libaom-av1", "mpeg4") if c in encoders)
            raise EncodeError(f"unknown video codec {self.codec!r}: this ffmpeg has no such encoder; use one of "
                              f"{common} (see `{self.ffmpeg} -encoders`)")

    def _padding(self) -> tuple[int, int]:
        mx, my = _even_multiples(self.pix_fmt)
        pad = (-self.width % mx, -self.height % my)
        if any(pad):
            note = (f"{self.width}x{self.height} is odd and {self.pix_fmt} needs even sizes: padded to "
                    f"{self.width + pad[0]}x{self.height + pad[1]} by repeating the last column/row")
            self.notes.append(note)
            log.info("%s: %s", self.output, note)
        return pad

    def _scaled_size(self, max_height: int | None) -> tuple[int, int] | None:
        """The written size when `max_height` scales the frames down, else None."""
        if max_height is None or self.height <= max_height:
            return None
        height = max_height - max_height % 2
        width = max(2, round(self.width * height / self.height / 2) * 2)
        self.notes.append(f"scaled from {self.width}x{self.height} to {width}x{height} (at most {max_height} high)")
        return width, height

    def _plan_audio(self, video_start: float) -> tuple[str | None, float]:
        """-> (how audio gets into the output: "copy", a fallback encoder name, or None; video offset in s)."""
        if self.audio_from is None:
            return None, 0.0
        if not self.audio_from.is_file():
            raise EncodeError(f"audio_from {self.audio_from} does not exist: pass the source video, or None for no audio")
        try:
            source = probe(self.audio_from)
        except (av.error.FFmpegError, OSError) as exc:
            raise EncodeError(f"cannot read audio_from {self.audio_from}: {exc}") from exc
        if not source["has_audio"]:
            return None, 0.0
        # ffmpeg moves the audio input's start (or the window's) to 0, so the video goes this much later.
        offset = max(0.0, float(video_start) - (self.audio_window[0] if self.audio_window else source["start"]))
        self._audio_seek = ([] if self.audio_window is None else
                            ["-ss", f"{max(0.0, self.audio_window[0] - source['start']):.6f}",
                             "-t", f"{self.audio_window[1] - self.audio_window[0]:.6f}"])
        if self._trial_audio_copy():
            return "copy", offset
        encoder, bitrate = _FALLBACK_AUDIO.get(self.output.suffix.lower(), _DEFAULT_FALLBACK_AUDIO)
        note = (f"{self.output.suffix} cannot hold the source's {source['audio_codec']} audio as is: "
                f"audio re-encoded with {encoder} {bitrate}")
        self.notes.append(note)
        log.warning("%s: %s", self.output, note)
        return encoder, offset

    def _trial(self, args: list[str]) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory(prefix="swapstream-encoder-") as tmp:
            target = Path(tmp) / f"trial{self.output.suffix}"
            return subprocess.run([self.ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", *args,
                                   "-y", str(target)], capture_output=True, text=True, errors="replace")

    def _trial_video(self) -> None:
        """Encode one black frame with the real settings, so codec/container/pix_fmt/option mistakes
        show up front instead of after the first frames have been sent."""
        w, h = self.output_size
        done = self._trial(["-f", "lavfi", "-i", f"color=c=black:s={w}x{h}:r={self.fps}", "-frames:v", "1",
                            *self._video_args(offset=0.0)])
        if done.returncode != 0:
            raise EncodeError(f"ffmpeg refused these settings for {self.output}: codec {self.codec}, pix_fmt "
                              f"{self.pix_fmt}, crf {self.crf}, preset {self.preset}, {w}x{h}, {self.output.suffix} "
                              "file. Check that the codec fits the extension (e.g. libx264 in .mp4, libvpx-vp9 "
                              "in .webm) and that crf/preset are valid for the codec (None leaves them out). "
                              f"ffmpeg said:\n{_some_lines(done.stderr, first=True)}")

    def _trial_audio_copy(self) -> bool:
        done = self._trial(["-i", str(self.audio_from), "-map", "0:a:0", "-c:a", "copy", "-t", "0.2"])
        return done.returncode == 0

    def _video_args(self, offset: float) -> list[str]:
        ticks = _fine_time_base(self.fps)
        filters = [f"settb=1/{ticks}"]
        if offset > 0:
            filters.append(f"setpts=PTS+{offset:.6f}/TB")
        args = ["-fps_mode", "passthrough", "-enc_time_base", f"1:{ticks}", "-c:v", self.codec,
                "-pix_fmt", self.pix_fmt]
        if self.scaled_size is not None:
            filters.append("scale={}:{}:flags=area".format(*self.scaled_size))
        if not av.VideoFormat(self.pix_fmt).is_rgb:
            filters.append("scale=out_color_matrix=bt709:out_range=tv")
            args += ["-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709", "-color_range", "tv"]
        if self.crf is not None:
            args += ["-crf", str(self.crf)]
            if self.codec.startswith("libvpx"):
                args += ["-b:v", "0"]  # libvpx: constant quality only without a bitrate target
        if self.preset is not None:
            args += ["-preset", str(self.preset)]
        return ["-vf", ",".join(filters), *args]

    def _command(self) -> list[str]:
        cmd = [self.ffmpeg, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "warning",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-video_size", "{}x{}".format(*self.output_size),
               "-framerate", str(self.fps), "-i", "pipe:0"]
        if self.audio is not None:
            cmd += [*self._audio_seek, "-i", str(self.audio_from)]
        cmd += ["-map", "0:v:0"]
        if self.audio is not None:
            cmd += ["-map", "1:a:0?"]
        cmd += self._video_args(self._offset)
        if self.audio == "copy":
            cmd += ["-c:a", "copy"]
        elif self.audio is not None:
            encoder, bitrate = _FALLBACK_AUDIO.get(self.output.suffix.lower(), _DEFAULT_FALLBACK_AUDIO)
            cmd += ["-c:a", encoder, "-b:a", bitrate]
        if self.output.suffix.lower() in _FASTSTART:
            cmd += ["-movflags", "+faststart"]
        return cmd + ["-y", str(self._partial)]

    def _start(self) -> None:
        self._proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE)
        self._stderr = _StderrTail(self._proc.stderr)
        self._state = "running"

    # -- use ---------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self._proc.pid

    def write(self, frames: np.ndarray) -> None:
        """Send frames (n, height, width, 3) uint8 RGB, or one (height, width, 3) frame, to ffmpeg."""
        self._require_running()
        frames = self._check_frames(frames)
        if any(self._pad):
            frames = np.pad(frames, ((0, 0), (0, self._pad[1]), (0, self._pad[0]), (0, 0)), mode="edge")
        data = np.ascontiguousarray(frames)
        try:
            self._proc.stdin.write(memoryview(data).cast("B"))
        except BrokenPipeError:
            self._fail("ffmpeg stopped taking frames")
        self.frames_written += len(frames)

    def close(self) -> Path:
        """Finish the file and move it to the output name; returns the output path."""
        if self._state == "done":
            return self.output
        self._require_running()
        if self.frames_written == 0:
            self.abort()
            raise EncodeError(f"no frames were written to {self.output}: nothing to encode, no file written")
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass  # ffmpeg died; its exit status below says why
        if self._proc.wait() != 0:
            self._fail("encoding failed")
        self._stderr.text()
        _commit(self._partial, self.output)
        self._state = "done"
        return self.output

    def abort(self) -> None:
        """Stop ffmpeg and remove the temporary file; the output name is not touched. Safe to call twice."""
        if self._state != "running":
            return
        self._state = "aborted"
        if self._proc.poll() is None:
            self._proc.kill()
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        self._proc.wait()
        self._stderr.text(timeout=2.0)
        _remove(self._partial)

    def _fail(self, what: str):
        try:
            returncode = self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            returncode = self._proc.wait()
        stderr = self._stderr.text()
        self.abort()
        self._state = "failed"
        raise EncodeError(f"{what} for {self.output}: {_exit_reason(returncode)}; no file was written. "
                          f"ffmpeg said:\n{_some_lines(stderr)}")

    def _require_running(self) -> None:
        if self._state != "running":
            raise EncodeError(f"writer for {self.output} is {self._state}: open a new VideoWriter")

    def _check_frames(self, frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8:
            raise EncodeError(f"frames must be uint8 RGB, got {frames.dtype}: convert with np.clip(x, 0, 255).astype(np.uint8)")
        if frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3):
            raise EncodeError(f"frames must be shaped (n, {self.height}, {self.width}, 3) as this writer was opened "
                              f"for {self.width}x{self.height}, got {frames.shape}")
        return frames

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or value <= 0:
        raise EncodeError(f"{name} must be a positive whole number of pixels, got {value!r}")
    return int(value)


def _as_fps(fps) -> Fraction:
    # Floats such as 29.97002997 mean 30000/1001, not their exact binary value.
    rate = Fraction(fps).limit_denominator(1001) if isinstance(fps, float) else Fraction(fps)
    if rate <= 0:
        raise EncodeError(f"fps must be positive, got {fps!r}")
    return rate


# ---------------------------------------------------------------------------------------------
# images


def _image_params(ext: str, quality: int) -> list[int]:
    if ext in (".jpg", ".jpeg"):
        return [cv2.IMWRITE_JPEG_QUALITY, quality]
    if ext == ".webp":
        return [cv2.IMWRITE_WEBP_QUALITY, quality]
    return []  # PNG: lossless; quality does not apply


def write_image(output: Path | str, image: np.ndarray, quality: int = 95) -> Path:
    """Write one (H, W, 3) uint8 RGB image; format from the extension (.jpg/.jpeg/.png/.webp).

    `quality` (1-100) applies to JPEG and WebP. The file appears under its name only when complete.
    """
    output = _check_output_path(output)
    ext = output.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise EncodeError(f"cannot write image {output}: unsupported extension {output.suffix!r}; "
                          f"use one of {', '.join(IMAGE_EXTENSIONS)}")
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise EncodeError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    if not 1 <= quality <= 100:
        raise EncodeError(f"quality must be 1-100, got {quality}")
    ok, encoded = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), _image_params(ext, quality))
    if not ok:
        raise EncodeError(f"OpenCV could not encode {image.shape} as {ext}")
    partial = _create_partial(output)
    try:
        partial.write_bytes(encoded.tobytes())
        _commit(partial, output)
    except BaseException:
        _remove(partial)
        raise
    return output
