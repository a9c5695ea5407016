"""The reference the pipeline is compared with: a face swap written the way facefusion, Deep-Live-Cam and
roop work, one frame at a time.

PyAV decodes a frame; onnxruntime, in this process, runs the detector on it (batch 1); every face found is
cut out with OpenCV ``warpAffine`` to FFHQ-512 and swapped alone (batch 1 through SimSwap, BiSeNet, GFPGAN);
the result is warped back over the whole frame with OpenCV and pasted with its mask; ffmpeg encodes.
Nothing overlaps: each stage waits for the one before it, for every frame.

It runs the very ONNX files a Triton repository serves (networks and glue graphs, through
``InProcessModels``) with the same templates and encoder settings, so its output can be compared pixel
for pixel with the pipeline's. No tracking and no landmark smoothing: every detection of a frame is
swapped with its raw landmarks (run the pipeline with ``smoothing=False, max_gap=0`` to do the same work).
"""
from __future__ import annotations

import time
from pathlib import Path

import av
import cv2
import numpy as np

from swapstream.benchmarks.inprocess import InProcessModels
from swapstream.pipelines.decode import probe_video
from swapstream.services.engine.clock import StageClock
from swapstream.services.engine.encoder import VideoWriter
from swapstream.services.engine.errors import SwapInputError
from swapstream.services.engine.offline import SwapOptions, SwapSummary
from swapstream.services.engine.photos import read_photo
from swapstream.services.engine.swapper import DETECT_SIZE, FACE_SIZE, similarity_to
from swapstream.services.engine.swappers.simswap import SimSwap, mean_identity


class FrameAtATimeSwapper:
    def __init__(self, models: InProcessModels, options: SwapOptions, clock: StageClock):
        self.models = models
        self.options = options
        self.clock = clock

    def detect(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes [K,4] and landmarks [K,5,2] of one RGB frame, in its pixels."""
        h, w = rgb.shape[:2]
        scale = min(1.0, DETECT_SIZE / max(h, w))
        small = rgb if scale == 1.0 else cv2.resize(rgb, (round(w * scale), round(h * scale)),
                                                    interpolation=cv2.INTER_AREA)
        found = self.models.run("detect", {
            "IMAGES": small[None],
            "DETECT_SIZE": np.array([DETECT_SIZE], np.int32),
            "SCORE_THRESHOLD": np.array([self.options.score_threshold], np.float32)})
        sx, sy = w / small.shape[1], h / small.shape[0]
        return found["BOXES"] * [sx, sy, sx, sy], found["LANDMARKS"] * [sx, sy]

    def source_embedding(self, photos: list[Path]) -> np.ndarray:
        embeddings = []
        for path in photos:
            rgb = read_photo(path)
            with self.clock("detect"):
                boxes, landmarks = self.detect(rgb)
            if len(boxes) == 0:
                raise SwapInputError(f"source photo {path}: no face found")
            largest = int(np.argmax(np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)))
            template, size = SimSwap.identity_template
            matrix = similarity_to(landmarks[largest:largest + 1], template, size)[0]
            crop = cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_LINEAR)
            embeddings.append(self.models.run("identity", {"FACES": crop[None]})["EMBEDDING"][0])
        return mean_identity(np.stack(embeddings))

    def swap_frame(self, frame: np.ndarray, embedding: np.ndarray) -> tuple[np.ndarray, int]:
        """The frame with every detected face swapped, and how many faces that was."""
        clock = self.clock
        with clock("detect"):
            _, landmarks = self.detect(frame)
        out = frame
        h, w = frame.shape[:2]
        for matrix in similarity_to(landmarks, "ffhq_512", FACE_SIZE) if len(landmarks) else []:
            with clock("align"):
                aligned = cv2.warpAffine(frame, matrix, (FACE_SIZE, FACE_SIZE), flags=cv2.INTER_LINEAR,
                                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            with clock("swap"):
                result = self.models.run("swap", {"FACES": aligned[None], "SOURCE_EMBEDDING": embedding[None]})
            with clock("blend"):
                out = paste_back(out, result["FACES_OUT"][0], result["MASKS"][0], matrix, w, h)
        return out, len(landmarks)


def paste_back(frame: np.ndarray, face: np.ndarray, mask: np.ndarray, matrix: np.ndarray, w: int, h: int
               ) -> np.ndarray:
    """Face and mask warped back over the whole frame (as roop / Deep-Live-Cam do), then composited."""
    inverse = cv2.invertAffineTransform(matrix)
    face_back = cv2.warpAffine(face, inverse, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mask_back = cv2.warpAffine(mask, inverse, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                               borderValue=0).astype(np.float32)[..., None] / 255.0
    base = frame.astype(np.float32)
    return np.clip(np.rint(base + (face_back.astype(np.float32) - base) * mask_back), 0, 255).astype(np.uint8)


def _decoded_frames(path: Path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            yield frame.to_ndarray(format="rgb24")


def run_baseline(models: InProcessModels, sources: list[Path], target: Path, output: Path,
                 options: SwapOptions | None = None) -> SwapSummary:
    """Swaps every face of the video ``target`` frame by frame; writes ``output``; times each stage.

    OpenCV runs with its own worker threads here, as the peers run it (the CLI turns them off for the engine)."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(-1)  # OpenCV's default
    try:
        return _run_baseline(models, sources, target, output, options)
    finally:
        cv2.setNumThreads(threads)


def _run_baseline(models: InProcessModels, sources: list[Path], target: Path, output: Path,
                  options: SwapOptions | None) -> SwapSummary:
    options = options or SwapOptions()
    summary = SwapSummary()
    clock = StageClock(summary.stage_seconds)
    swapper = FrameAtATimeSwapper(models, options, clock)
    started = time.perf_counter()
    embedding = swapper.source_embedding(sources)
    info = probe_video(target)
    writer = VideoWriter(output, info.width, info.height, info.fps, audio_from=target if options.audio else None,
                         video_start=info.start_time, codec=options.encoder, crf=options.crf, preset=options.preset)
    with writer:
        for frame in clock.iterate("decode", _decoded_frames(target)):
            swapped, faces = swapper.swap_frame(frame, embedding)
            with clock("encode"):
                writer.write(swapped[None])
            summary.frames += 1
            summary.faces_swapped += faces
            summary.frames_without_face += faces == 0
    summary.seconds = time.perf_counter() - started
    return summary
