"""Typed calls to the swapstream models over Triton gRPC: ``detect``, ``identity``, ``swap`` and ``facemesh``."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from swapstream.pipelines.device import on_device
from swapstream.services.triton import balancer
from swapstream.services.triton.shared_memory import Layout


class TritonCallError(RuntimeError):
    """A model call failed; the message names the model and carries Triton's reason."""

    def __init__(self, message: str, model: str):
        super().__init__(message)
        self.model = model


@dataclass(frozen=True)
class Detections:
    boxes: np.ndarray        # [K,4] x1, y1, x2, y2 in the input's pixels
    scores: np.ndarray       # [K]
    landmarks: np.ndarray    # [K,5,2]
    frame_index: np.ndarray  # [K] which image of the batch

    def __len__(self) -> int:
        return len(self.scores)


class SwapstreamClient:
    """``url``: one Triton's gRPC ``host:port``, or several (``a:8001,b:8001``; names resolving to several
    addresses count as several): calls are spread over the healthy servers (``balancer.TritonPool``); large tensors
    to a server on this host go through system shared memory (``shared_memory``).
    ``timeout``: the deadline of a call on one server, seconds. ``pool``: a pool of one's own (tests tune its
    probes) instead of the process's shared one for ``url``."""

    def __init__(self, url: str, timeout: float | None = None, *, pool: balancer.TritonPool | None = None):
        self.url = url
        self.timeout = timeout
        self._pool = pool or balancer.pool_for(url)
        self._closed = pool is not None  # a pool given is its owner's to close

    def _infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str],
               output_sizes: dict[str, int] | None = None) -> list[np.ndarray]:
        """``output_sizes``: bytes of the outputs known before the call (they may come back through shared memory)."""
        try:
            result = self._pool.call(model, Layout.plan(inputs, outputs, output_sizes), self.timeout)
        except balancer.PoolCallError as failed:
            raise TritonCallError(f"Triton model '{model}' at {failed.address} failed: {failed.error.message()}",
                                  model) from failed.error
        return [result[o] for o in outputs]

    def detect(self, images: np.ndarray, *, image_sizes: np.ndarray | None = None, detect_size: int | None = None,
               score_threshold: float | None = None, nms_threshold: float | None = None) -> Detections:
        """Faces in RGB images [N,H,W,3] uint8 (padded to one size; their own sizes in ``image_sizes``); images on the
        GPU (``pipelines.device``) go to a server on this host by CUDA shared memory."""
        inputs = {"IMAGES": images if on_device(images) else np.asarray(images, np.uint8)}
        if image_sizes is not None:
            inputs["IMAGE_SIZES"] = np.asarray(image_sizes, np.int32)
        if detect_size is not None:
            inputs["DETECT_SIZE"] = np.array([detect_size], np.int32)
        if score_threshold is not None:
            inputs["SCORE_THRESHOLD"] = np.array([score_threshold], np.float32)
        if nms_threshold is not None:
            inputs["NMS_THRESHOLD"] = np.array([nms_threshold], np.float32)
        return Detections(*self._infer("detect", inputs, ["BOXES", "SCORES", "LANDMARKS", "FRAME_INDEX"]))

    def identity(self, faces: np.ndarray) -> np.ndarray:
        """L2-normalised embeddings [K,512] of faces [K,112,112,3] aligned to ArcFace-112."""
        return self._infer("identity", {"FACES": np.asarray(faces, np.uint8)}, ["EMBEDDING"])[0]

    def swap(self, faces: np.ndarray, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Swapped faces [K,512,512,3] and blend masks [K,512,512] for faces aligned to FFHQ-512.

        ``embeddings``: one source identity for all faces ([512] or [1,512]), or one per face ([K,512]).
        """
        faces = np.asarray(faces, np.uint8)
        embeddings = np.asarray(embeddings, np.float32).reshape(-1, 512)
        if len(embeddings) not in (1, len(faces)):
            raise ValueError(f"swap: {len(embeddings)} source embeddings for {len(faces)} faces; give one for all "
                             "faces or one per face")
        # Always one row per face: a batching config (max_batch_size > 0) needs every input's batch to match.
        embeddings = np.ascontiguousarray(np.broadcast_to(embeddings, (len(faces), 512)))
        inputs = {"FACES": faces, "SOURCE_EMBEDDING": embeddings}
        # The outputs have the faces' size: FACES_OUT [K,H,W,3] uint8, MASKS [K,H,W] (one byte a pixel).
        faces_out, masks = self._infer("swap", inputs, ["FACES_OUT", "MASKS"],
                                       {"FACES_OUT": faces.nbytes, "MASKS": faces.nbytes // 3})
        return faces_out, masks

    def facemesh(self, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """MediaPipe's face mesh of faces [K,512,512,3] uint8 RGB aligned to FFHQ-512: landmarks [K,468,3]
        float32 (x, y in those crops' pixels, z in the same scale) and face presence [K] float32 in 0..1."""
        faces = np.asarray(faces)
        if faces.dtype != np.uint8 or faces.ndim != 4 or faces.shape[1:] != (512, 512, 3):
            raise ValueError(f"facemesh: faces must be FFHQ-512 crops, uint8 [K,512,512,3]; got {faces.dtype} "
                             f"{list(faces.shape)}")
        landmarks, presence = self._infer("facemesh", {"FACES": faces}, ["LANDMARKS", "PRESENCE"])
        return landmarks, presence

    def is_ready(self) -> bool:
        """At least one server is up (the pool's health rounds, at most a second old)."""
        return self._pool.status()["up"] > 0

    def servers(self) -> dict:
        """``{"up": k, "servers": n, "each": {address: {"up", "reason", "calls"}}}``."""
        return self._pool.status()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            balancer.release(self._pool)
