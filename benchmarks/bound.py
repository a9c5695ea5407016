"""The model bound: the repository's networks alone, in this process, at each batch size, no I/O.

For every batch size B, ``detect`` runs on B real frames (at the detector's size, as the pipeline sends them) and
YuNet alone on their detector input (``detect`` is one graph, its glue folded around YuNet: the difference is the
glue), and the ``swap`` ensemble on B real aligned faces; each step is timed. The bound on
frames/s for a clip with F faces per frame is ``1 / (t_detector + F * t_swap_networks)`` per frame.
Networks exported with a fixed batch of 1 (the real SimSwap, ArcFace, GFPGAN) are run once per item:
``per_item`` says so. The glue graphs (pre/post-processing) are timed too and give a second, lower
bound "with glue": with stand-ins, where the networks are tiny, that is the more telling one.
"""
from __future__ import annotations

import statistics

import numpy as np
import onnxruntime as ort

from swapstream.benchmarks.inprocess import InProcessModels
from swapstream.services.triton import glue
from swapstream.services.triton.repository import NETWORKS

DETECTOR = "yunet"


def _repeat_to(items: np.ndarray, count: int) -> np.ndarray:
    return items[np.arange(count) % len(items)]


def _time_steps(models: InProcessModels, ensemble: str, inputs: dict, repeats: int) -> dict[str, float]:
    """Median seconds per step over ``repeats`` runs of the ensemble, after one warm-up run."""
    models.run(ensemble, inputs)
    runs = []
    for _ in range(repeats):
        timings: dict[str, float] = {}
        models.run(ensemble, inputs, timings)
        runs.append(timings)
    return {step: statistics.median(run[step] for run in runs) for step in runs[0]}


def _detector_input(frames: np.ndarray) -> np.ndarray:
    """What YuNet is given inside ``detect`` for these frames."""
    session = ort.InferenceSession(glue.detect_preprocess().SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["DETECTOR_INPUT"], {"IMAGES": frames})[0]


def measure_bound(models: InProcessModels, detector_frames: np.ndarray, faces: np.ndarray, embedding: np.ndarray,
                  batch_sizes: list[int], faces_per_frame: float, repeats: int = 3) -> list[dict]:
    """One row per batch size: per-step ms per item, and the bound in frames/s and faces/s."""
    rows = []
    for batch in batch_sizes:
        frames = _repeat_to(detector_frames, batch)
        whole = _time_steps(models, "detect", {"IMAGES": frames}, repeats)["detect"]
        network = _time_steps(models, DETECTOR, {"input": _detector_input(frames)}, repeats)[DETECTOR]
        detect = {DETECTOR: network, "detect glue": max(whole - network, 0.0)}
        swap = _time_steps(models, "swap", {"FACES": _repeat_to(faces, batch),
                                            "SOURCE_EMBEDDING": embedding.reshape(1, 512)}, repeats)
        per_frame = {step: seconds / batch for step, seconds in detect.items()}
        per_face = {step: seconds / batch for step, seconds in swap.items()}
        networks = [name for name in models.steps("swap") if name in NETWORKS]
        frame_networks = per_frame[DETECTOR] + faces_per_frame * sum(per_face[n] for n in networks)
        frame_all = sum(per_frame.values()) + faces_per_frame * sum(per_face.values())
        rows.append({
            "kind": "bound", "batch_size": batch,
            "frames_per_s": 1.0 / frame_networks, "faces_per_s": faces_per_frame / frame_networks if faces_per_frame
            else 0.0,
            "frames_per_s_with_glue": 1.0 / frame_all,
            "faces_per_s_with_glue": faces_per_frame / frame_all if faces_per_frame else 0.0,
            "ms_per_item": {step: seconds * 1e3 for step, seconds in {**per_frame, **per_face}.items()},
            "per_item": sorted(n for n in [DETECTOR, *networks] if models.models[n].fixed_batch_one),
        })
    return rows

