"""Video decode into batches of upright RGB frames (numpy uint8 [n, H, W, 3]; on "gpu", asked with ``on_device``,
``DeviceFrames`` that stay on the GPU: `frames_stay_on_device`).

Which decoder runs (decoder="auto"):
- On "gpu", DALI's own video decoder (NVDEC, `device="mixed"`) where it takes the codec: H.264, HEVC, VP8, VP9,
  AV1, MPEG-4 and MJPEG.
- PyAV (the FFmpeg libraries in its wheel) for everything else, and for every file on "cpu" (DALI's CPU decoder,
  VP8, VP9 and MJPEG only, is slower there: see `choose_decoder`; decoder="dali" still runs it). Each frame is
  converted to RGB once, straight into its batch's array (turned upright there on CPU); on GPU the batch is fed to
  a DALI pipeline through `fn.external_source`, which moves it to the device and turns it upright.

DALI's decoder here is `fn.experimental.inputs.video`, not `fn.decoders.video`: the latter decodes
a whole file (or one requested frame range) per call into memory, and reading a long file range by
range re-parses the file and re-decodes from a key frame on every call. Measured on this machine
(CPU, 2820-frame 720p VP9): 132 s in 96-frame ranges with `fn.decoders.video` against 24 s
streamed by `fn.experimental.inputs.video`, which decodes sequentially and keeps only one batch
of frames in memory. It signals the end only by a short last batch, so the reader stops after
the frame count the probe found (one frame per video packet).

Frames are turned upright (an exact transpose + flip) when the stream carries a rotation
(display matrix), and every path reports each frame's presentation timestamp, so variable frame rate video
is passed through, not rejected.
"""

from __future__ import annotations

import errno
import math
import os
from contextlib import closing
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np
from nvidia.dali import fn, pipeline_def, types

from swapstream.pipelines.ahead import made_ahead
from swapstream.pipelines.align import check_device, pipeline_kwargs, to_numpy
from swapstream.pipelines.device import DeviceFrames
from swapstream.pipelines.decode_rgb import BatchArrays, RgbWriter

# FFmpeg codec names DALI's decoder takes, per backend (DALI 2.4 docs; CPU list measured here).
DALI_CODECS = {
    "cpu": frozenset({"vp8", "vp9", "mjpeg"}),
    "gpu": frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mjpeg"}),
}
# NVDEC decodes 4:2:0 only for these codecs (and no 10-bit H.264); other layouts go to PyAV.
_GPU_PIX_FMTS = frozenset({"yuv420p", "yuvj420p", "nv12"})
_GPU_10BIT_CODECS = frozenset({"hevc", "vp9", "av1"})

# Container signatures, to tell "not a video at all" from "a damaged video" in error messages.
_SIGNATURES = {
    b"\x1a\x45\xdf\xa3": "Matroska/WebM",
    b"RIFF": "AVI",
    b"OggS": "Ogg",
    b"FLV": "FLV",
    b"\x00\x00\x01\xba": "MPEG-PS",
}


# The only demuxers a file is opened with, whatever its name says: real video containers. FFmpeg would otherwise
# pick from its content any of ~300, among them playlists and scripts (concat, HLS) that open further files or
# URLs: a two-line ffconcat script naming itself opened itself until the process ran out of file descriptors.
# Each name is one of FFmpeg's demuxer names ("mov" is the MP4/QuickTime demuxer, "matroska" also reads WebM).
DEMUXERS = ("mov", "matroska", "avi", "mpegts", "flv", "ogg")
_OPEN_OPTIONS = {"format_whitelist": ",".join(DEMUXERS), "protocol_whitelist": "file"}


def open_container(path: str | Path):
    """``av.open`` restricted to the allowed demuxers and to local files."""
    return av.open(str(path), options=dict(_OPEN_OPTIONS))


class VideoDecodeError(ValueError):
    """The file cannot be decoded as a video; the message says why and what to do."""


@dataclass(frozen=True, eq=False)
class VideoInfo:
    """What `probe_video` learns about a file. Sizes are of the upright output frames."""

    path: str
    container: str
    codec: str
    pix_fmt: str
    width: int
    height: int
    rotation: int  # degrees counter-clockwise turned to make frames upright: 0, 90, 180, 270
    fps: Fraction  # average frame rate
    frame_count: int
    time_base: Fraction
    pts: np.ndarray = field(repr=False)  # int64 [frame_count], presentation order, in time_base
    start_time: float  # seconds, first frame's pts (may be > 0, e.g. video starting after audio)
    duration: float  # seconds, from the first frame to the end of the last
    variable_frame_rate: bool
    has_audio: bool
    audio_codec: str | None

    @property
    def times(self) -> np.ndarray:
        """Each frame's presentation time in seconds."""
        return self.pts * float(self.time_base)


@dataclass(frozen=True, eq=False)
class VideoBatch:
    frames: np.ndarray | DeviceFrames  # uint8 [n, H, W, 3] RGB, upright (on the GPU: see VideoReader.on_device)
    start: int  # index of the first frame in the video
    pts: np.ndarray  # int64 [n], in VideoInfo.time_base units

    def __len__(self) -> int:
        return len(self.frames)


def dali_takes(codec: str, pix_fmt: str, device: str) -> bool:
    """Whether DALI's decoder on `device` takes this stream."""
    if codec not in DALI_CODECS[check_device(device)]:
        return False
    if device == "gpu" and pix_fmt not in _GPU_PIX_FMTS:
        return pix_fmt == "yuv420p10le" and codec in _GPU_10BIT_CODECS
    return True


def choose_decoder(codec: str, pix_fmt: str, device: str) -> str:
    """The decoder "auto" runs: "dali" (NVDEC) on "gpu" where it takes the stream, else "pyav".

    On "cpu" PyAV always: against DALI's CPU decoder on 60 frames of 720p (the reader in all, best of 6, ms a frame,
    CPU / wall) VP9 8.9 / 5.7 against 10.8 / 10.7, VP8 5.8 / 4.0 against 7.8 / 7.8, MJPEG 5.5 / 5.5 against 8.3 /
    8.4. The RGB is DALI's within a quarter level on VP8 and on VP9 of BT.601 colours, identical on MJPEG. On BT.709
    VP9 DALI's colours are biased (red -1.0, blue +0.5 levels against the H.264 source the VP9 was made from) and
    PyAV's are not.
    """
    if check_device(device) == "gpu" and dali_takes(codec, pix_fmt, device):
        return "dali"
    return "pyav"


def dali_decoder_device(device: str) -> str:
    """The backend DALI's video decoder runs on: NVDEC's is "mixed" (CPU input, GPU output)."""
    return "mixed" if check_device(device) == "gpu" else "cpu"


def frames_stay_on_device(device: str, on_device: bool) -> bool:
    """Whether the reader's batches stay on the GPU (``DeviceFrames``): asked for (``on_device``), on "gpu" only.
    NVDEC's frames are then never copied to the host by the reader; PyAV's go to the GPU once, as before."""
    if on_device and check_device(device) != "gpu":
        raise ValueError("frames can stay on the GPU only with device 'gpu'; on 'cpu' they are decoded to the host")
    return on_device


KEEP_NEEDS_PYAV = "keep (reading only some frames) needs the PyAV decoder: use decoder='auto' or 'pyav'"


def open_video(
    path: str | Path,
    device: str = "cpu",
    batch_size: int = 32,
    decoder: str = "auto",
    device_id: int = 0,
    keep: np.ndarray | None = None,
    on_device: bool = False,
) -> "VideoReader":
    """Probe `path` and return a reader: iterate it for `VideoBatch`es, `.info` for metadata.

    decoder: "auto" (NVDEC on "gpu" where it takes the codec, else PyAV: `choose_decoder`), or force "dali" / "pyav".
    keep: only these frames (sorted indices into the video), decoded from the key frame before the first; PyAV reads
    them (decoder "dali" with `keep` raises ValueError), and a batch's `start` then counts kept frames.
    on_device: on "gpu", batches of `DeviceFrames` that stay on the GPU (`frames_stay_on_device`).
    Raises VideoDecodeError at once for a missing, non-video, truncated or undecodable file.
    """
    frames_stay_on_device(device, on_device)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if decoder not in ("auto", "dali", "pyav"):
        raise ValueError(f"decoder must be 'auto', 'dali' or 'pyav', got {decoder!r}")
    if keep is not None and decoder == "dali":
        raise ValueError(KEEP_NEEDS_PYAV)
    info = probe_video(path)
    chosen = "pyav" if keep is not None else choose_decoder(info.codec, info.pix_fmt, device)
    if decoder == "dali" and not dali_takes(info.codec, info.pix_fmt, device):
        raise VideoDecodeError(
            f"{info.path}: DALI's {device.upper()} decoder does not take {info.codec} "
            f"({info.pix_fmt}); use decoder='auto' or 'pyav'"
        )
    return VideoReader(info, device, batch_size, chosen if decoder == "auto" else decoder, device_id, keep=keep,
                       on_device=on_device)


class VideoReader:
    """Iterable of `VideoBatch`es of one video. Each iteration decodes the file from the start."""

    def __init__(self, info: VideoInfo, device: str, batch_size: int, decoder: str, device_id: int = 0,
                 keep: np.ndarray | None = None, on_device: bool = False):
        """``keep``: only these frames (see ``open_video``); PyAV only. ``on_device``: batches stay on the GPU."""
        if keep is not None and decoder == "dali":
            raise ValueError(KEEP_NEEDS_PYAV)
        self.info = info
        self.device = device
        self.batch_size = batch_size
        self.decoder = decoder
        self.device_id = device_id
        self.keep = keep
        self.on_device = frames_stay_on_device(device, on_device)

    def _frames(self, output) -> np.ndarray | DeviceFrames:
        """A GPU pipeline's one output sample (an FHWC sequence) as the batch's frames: copied device to device into
        ``DeviceFrames`` when they stay on the GPU, else to the host."""
        if self.on_device:
            return DeviceFrames.from_dali(output, self.device_id, output.shape()[0])
        return to_numpy(output)[0]

    def __iter__(self) -> Iterator[VideoBatch]:
        if self.decoder == "dali":
            return self._iter_dali()
        return self._iter_pyav()

    def _iter_dali(self) -> Iterator[VideoBatch]:
        pipe = _build_pipeline(
            dali_decode_graph, self.device, self.device_id, self.batch_size, self.info.rotation
        )
        encoded = np.fromfile(self.info.path, dtype=np.uint8)
        pipe.feed_input("encoded", [encoded])
        start = 0
        while start < self.info.frame_count:
            try:
                (frames,) = pipe.run()
            except RuntimeError as exc:
                raise self._failure(start, exc) from exc
            batch = self._frames(frames)
            if len(batch) == 0:
                break
            if batch.shape[1:3] != (self.info.height, self.info.width):
                raise self._size_changed(start, batch.shape[2], batch.shape[1])
            yield VideoBatch(batch, start, _pts_slice(self.info, start, len(batch)))
            start += len(batch)
            if len(batch) < self.batch_size:  # the last, partial sequence
                break

    def _iter_pyav(self) -> Iterator[VideoBatch]:
        if self.device == "cpu":  # the frames are upright numpy batches already: DALI would only copy them
            yield from self._pyav_batches(upright=True)
            return
        pipe = _build_pipeline(frames_graph, self.device, self.device_id, self.info.rotation)
        for batch in self._pyav_batches(upright=False):
            try:
                (frames,) = pipe.run(frames=[batch.frames])
            except RuntimeError as exc:
                raise self._failure(batch.start, exc) from exc
            yield VideoBatch(self._frames(frames), batch.start, batch.pts)

    def _pyav_batches(self, upright: bool) -> Iterator[VideoBatch]:
        """Batches from PyAV, each frame converted to RGB once, straight into its batch's array.

        ``upright``: turned upright there (an exact rotation); else in stored orientation.
        """
        h, w = _stored_size(self.info)
        turns = self.info.rotation // 90 if upright else 0
        out_h, out_w = (w, h) if turns % 2 else (h, w)
        index, filled, pts = 0, 0, []
        arrays = BatchArrays((self.batch_size, out_h, out_w, 3))
        batch = arrays.take()
        # One writer for the whole video keeps its scaler context (frame.to_ndarray builds one per frame).
        to_rgb = RgbWriter()
        try:
            # Decoded in a thread of its own, converted here (pipelines/ahead.py).
            with open_container(self.info.path) as container, \
                    closing(made_ahead(self._decoded(container), name="decode")) as frames:
                for frame in frames:
                    if (frame.height, frame.width) != (h, w):
                        raise self._size_changed(index, frame.width, frame.height)
                    to_rgb.write(frame, batch[filled], turns)
                    pts.append(frame.pts if frame.pts is not None else _pts_slice(self.info, index, 1)[0])
                    index += 1
                    filled += 1
                    if filled == self.batch_size:
                        yield VideoBatch(batch, index - filled, np.asarray(pts, dtype=np.int64))
                        batch = arrays.take()  # the consumer keeps the one it got
                        filled, pts = 0, []
        except av.FFmpegError as exc:
            raise self._failure(index, exc) from exc
        if filled:
            yield VideoBatch(batch[:filled], index - filled, np.asarray(pts, dtype=np.int64))

    def _decoded(self, container):
        stream = _video_stream(container)
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = decoder_threads()
        yield from self._kept_frames(container, stream)

    def _kept_frames(self, container, stream):
        """The decoded frames of `keep` (all without it): from the key frame before the first, until the last."""
        if self.keep is None:
            yield from container.decode(stream)
            return
        wanted = self.info.pts[self.keep]
        if self.keep[0] > 0:
            container.seek(int(wanted[0]), stream=stream, backward=True, any_frame=False)
        index = 0
        for frame in container.decode(stream):
            if frame.pts is None or frame.pts < wanted[index]:
                continue
            yield frame  # the wanted one, or the next after it if its pts differs from the probe's
            index = int(np.searchsorted(wanted, frame.pts, side="right"))
            if index == len(wanted):
                return

    def _size_changed(self, frame: int, width: int, height: int) -> VideoDecodeError:
        """Only the first frame's size is checked against the limits: a stream may not change it later."""
        return VideoDecodeError(
            f"{self.info.path}: the frame size changes at frame {frame} from {self.info.width}x{self.info.height} "
            f"to {width}x{height}; a video must keep one size. Re-encode it at one size "
            f"(e.g. ffmpeg -i in -vf scale={self.info.width}:{self.info.height} -c:v libx264 out.mp4)."
        )

    def _failure(self, frame: int, exc: Exception) -> VideoDecodeError:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        return VideoDecodeError(
            f"{self.info.path}: decoding failed at frame {frame} of {self.info.frame_count} "
            f"({self.info.codec}, {self.decoder} on {self.device}): {detail}. The file is probably "
            f"corrupt or truncated: fetch it again or re-encode it (e.g. ffmpeg -i in -c:v libx264 out.mp4)."
        )


def decoder_threads() -> int:
    """Threads of the PyAV decoder: every core but the one converting its frames to RGB (`made_ahead`)."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


def _rotate_upright(frames, rotation: int):
    """Turn FHWC frames `rotation` degrees counter-clockwise, exactly (no resampling).

    np.rot90(x, 1) == flip rows of transpose(x); rot90(x, 3) == flip columns of transpose(x).
    """
    if rotation == 0:
        return frames
    if rotation == 180:
        return fn.flip(frames, horizontal=1, vertical=1)
    transposed = fn.transpose(frames, perm=[0, 2, 1, 3], output_layout="FHWC")
    if rotation == 90:
        return fn.flip(transposed, horizontal=0, vertical=1)
    return fn.flip(transposed, horizontal=1, vertical=0)


def dali_decode_graph(device: str, batch_size: int, rotation: int):
    """Graph (call inside a pipeline): DALI decodes the encoded file fed to input "encoded",
    `batch_size` frames per run, sequentially; the output is one FHWC sequence, upright."""
    frames = fn.experimental.inputs.video(
        name="encoded",
        device=dali_decoder_device(device),
        sequence_length=batch_size,
        last_sequence_policy="partial",
    )
    return _rotate_upright(frames, rotation)


def frames_graph(device: str, rotation: int):
    """Graph (call inside a pipeline): decoded frames fed to input "frames" as one FHWC
    sequence, moved to `device` and turned upright."""
    frames = fn.external_source(name="frames", dtype=types.UINT8, ndim=4, layout="FHWC")
    if check_device(device) == "gpu":
        frames = frames.gpu()
    return _rotate_upright(frames, rotation)


def _build_pipeline(graph, device: str, device_id: int, *args):
    @pipeline_def(**pipeline_kwargs(device, 1, device_id))
    def pipeline():
        return graph(device, *args)

    pipe = pipeline()
    pipe.build()
    return pipe


def _stored_size(info: VideoInfo) -> tuple[int, int]:
    """(height, width) of frames as stored, before turning them upright."""
    if info.rotation in (90, 270):
        return info.width, info.height
    return info.height, info.width


def _pts_slice(info: VideoInfo, start: int, n: int) -> np.ndarray:
    """Frames start..start+n's pts; past the probed ones, extrapolated at the average rate."""
    known = info.pts[start : start + n]
    if len(known) == n:
        return known.copy()
    step = 1 / (info.fps * info.time_base) if info.fps else 1
    last = int(info.pts[-1]) if len(info.pts) else 0
    first_missing = start + len(known)
    extra = [
        last + round((i - len(info.pts) + 1) * step) for i in range(first_missing, start + n)
    ]
    return np.concatenate([known, np.asarray(extra, dtype=np.int64)])


# ---- probing ---------------------------------------------------------------------------------


def probe_video(path: str | Path) -> VideoInfo:
    """Read a file's video metadata with PyAV, demuxing it whole (fast: no decoding) to count
    frames and collect their pts, and decoding its first frame. Raises VideoDecodeError."""
    path = Path(path)
    _check_file(path)
    try:
        container = open_container(path)
    except av.FFmpegError as exc:
        raise _unreadable(path, exc) from exc
    with container:
        stream = _video_stream(container, path)
        scan = _scan_packets(container, stream, path)
        _check_not_truncated(path, container, scan)
        first_frame = _decode_first_frame(path, stream, scan.first_packets)
        return _build_info(path, container, stream, scan, first_frame)


@dataclass
class _PacketScan:
    video_pts: np.ndarray  # sorted, i.e. presentation order
    last_duration: int  # of the last video frame, in the video time base
    data_end: float  # seconds: where the last packet of any stream ends
    has_audio: bool
    audio_codec: str | None
    first_packets: list  # the stream's first packets, to decode its first frame from (no second open)


# A video's first frame comes out of the decoder within its first few packets (its reordering delay).
_FIRST_PACKETS = 32


def _check_file(path: Path) -> None:
    if not path.exists():
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        raise VideoDecodeError(f"{path}: no such file; check the path{where}")
    if not path.is_file():
        raise VideoDecodeError(f"{path}: is not a regular file; give the path of a video file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(f"{path}: the file is empty (0 bytes); fetch or export it again")


def _unreadable(path: Path, exc: Exception) -> VideoDecodeError:
    if getattr(exc, "errno", None) == errno.EINVAL:  # the content is of a demuxer outside DEMUXERS
        return VideoDecodeError(
            f"{path}: not a video container that is accepted (MP4/MOV, MKV/WebM, AVI, MPEG-TS, FLV, Ogg); "
            f"export the video to one of them (e.g. ffmpeg -i in -c:v libx264 out.mp4)."
        )
    with open(path, "rb") as f:
        head = f.read(12)
    kind = next((name for sig, name in _SIGNATURES.items() if head.startswith(sig)), None)
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide"):
        kind = "MP4/QuickTime"
    if kind is None:
        return VideoDecodeError(
            f"{path}: not a video file: FFmpeg does not recognise its contents ({exc}). "
            f"Give a video file (e.g. MP4, MKV, WebM, MOV)."
        )
    return VideoDecodeError(
        f"{path}: looks like {kind} but cannot be read ({exc}); it is probably truncated or corrupt "
        f"(an interrupted download or recording: an MP4 whose index, the 'moov' box, is missing). "
        f"Fetch the file again or re-export it."
    )


def _video_stream(container, path: Path | None = None):
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:  # skip cover art
            return stream
    kinds = ", ".join(s.type for s in container.streams) or "none"
    raise VideoDecodeError(
        f"{path or container.name}: has no video stream (streams: {kinds}); give a video file"
    )


def _scan_packets(container, stream, path: Path) -> _PacketScan:
    pts: list[int] = []
    dts_fallback = 0
    last_duration = 0
    first_packets = []
    data_end = 0.0
    declared = stream.frames
    try:
        for packet in container.demux():
            if packet.size == 0:
                continue
            if packet.pts is not None and packet.time_base is not None:
                end = (packet.pts + (packet.duration or 0)) * packet.time_base
                data_end = max(data_end, float(end))
            if packet.stream.index != stream.index:
                continue
            stamp = packet.pts if packet.pts is not None else packet.dts
            pts.append(stamp if stamp is not None else dts_fallback)
            if len(first_packets) < _FIRST_PACKETS:
                first_packets.append(packet)
            dts_fallback += 1
            last_duration = packet.duration or last_duration
    except av.FFmpegError as exc:
        raise VideoDecodeError(
            f"{path}: the file is damaged after {len(pts)} video frames ({exc}); it is probably "
            f"truncated or corrupt: fetch it again or re-export it"
        ) from exc
    if not pts:
        raise VideoDecodeError(f"{path}: the video stream has no frames; give a video with frames")
    if declared and len(pts) < declared:
        raise VideoDecodeError(
            f"{path}: truncated: the container lists {declared} video frames but only {len(pts)} "
            f"are in the file (an interrupted download or recording?). Fetch the file again."
        )
    audio = container.streams.audio
    return _PacketScan(
        video_pts=np.sort(np.asarray(pts, dtype=np.int64)),
        last_duration=int(last_duration),
        data_end=data_end,
        has_audio=bool(audio),
        audio_codec=audio[0].codec_context.name if audio else None,
        first_packets=first_packets,
    )


def _decode_first_frame(path: Path, stream, packets: list):
    """The first frame, from the packets the scan kept (opening the file again costs FFmpeg's stream probing)."""
    codec = stream.codec_context
    try:
        for packet in packets:
            # Drained at once (None), the decoder gives out the frame it holds back for reordering: one frame is
            # decoded, not the two or three after it (8 CPU-ms of a 720p H.264 probe). A packet that gives nothing
            # alone (no key frame yet) is dropped with the decoder's state, up to the first one that does.
            for frame in codec.decode(packet) or codec.decode(None):
                return frame
            codec.flush_buffers()
    except av.FFmpegError as exc:
        raise VideoDecodeError(
            f"{path}: its video cannot be decoded ({exc}); the file is corrupt or its codec is "
            f"not supported: re-encode it (e.g. ffmpeg -i in -c:v libx264 out.mp4)"
        ) from exc
    raise VideoDecodeError(
        f"{path}: no frame could be decoded from its video stream; the file is corrupt or "
        f"truncated: fetch it again or re-export it"
    )


def _build_info(path, container, stream, scan: _PacketScan, first_frame) -> VideoInfo:
    time_base = Fraction(stream.time_base) if stream.time_base else Fraction(1, 1)
    pts = scan.video_pts
    steps = np.diff(pts)
    fps = _average_rate(stream, steps, time_base)
    last_duration = scan.last_duration or (int(np.median(steps)) if len(steps) else 0)
    start_time = float(pts[0] * time_base)
    duration = float((pts[-1] + last_duration - pts[0]) * time_base)
    rotation = _upright_rotation(first_frame.rotation)
    stored_w, stored_h = first_frame.width, first_frame.height
    width, height = (stored_h, stored_w) if rotation in (90, 270) else (stored_w, stored_h)
    return VideoInfo(
        path=str(path),
        container=container.format.name,
        codec=stream.codec_context.name,
        pix_fmt=first_frame.format.name,
        width=width,
        height=height,
        rotation=rotation,
        fps=fps,
        frame_count=len(pts),
        time_base=time_base,
        pts=pts,
        start_time=start_time,
        duration=duration,
        variable_frame_rate=bool(len(steps) > 1 and steps.max() - steps.min() > 1),
        has_audio=scan.has_audio,
        audio_codec=scan.audio_codec,
    )


def _check_not_truncated(path, container, scan: _PacketScan) -> None:
    """Containers without a frame count (WebM, MKV) still state a duration up front; when every
    stream's data stops well short of it, the file was cut off."""
    if container.duration is None or container.duration <= 0:
        return
    declared = container.duration / av.time_base
    start = (container.start_time or 0) / av.time_base
    missing = declared - (scan.data_end - start)
    if missing > max(0.5, 0.05 * declared):
        raise VideoDecodeError(
            f"{path}: truncated: the container says it lasts {declared:.2f} s but its data ends "
            f"at {scan.data_end - start:.2f} s (an interrupted download or recording?). "
            f"Fetch the file again."
        )


def _average_rate(stream, steps: np.ndarray, time_base: Fraction) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate
    if rate:
        return Fraction(rate)
    if len(steps) and steps.mean() > 0:
        return Fraction(1 / (float(steps.mean()) * float(time_base))).limit_denominator(1001)
    return Fraction(0)


def _upright_rotation(display_rotation: float | None) -> int:
    """Counter-clockwise degrees (0/90/180/270) to turn stored frames upright.

    PyAV's frame.rotation is FFmpeg's av_display_rotation_get: the counter-clockwise angle the
    display matrix turns the frame by, which is what ffmpeg's autorotate applies.
    """
    if not display_rotation or math.isnan(display_rotation):
        return 0
    return int(round(display_rotation / 90.0)) % 4 * 90
