"""``swapstream bench quality``: is the swapped face the source person, and what else did the swap change?

Per shared clip and photo the engine swaps the faces (detect, track and smooth, align, the chosen swapper, blend:
the product's own pieces) and dlib's face-recognition ResNet, a model swapstream never swaps with, judges them:

- **judged the source**: the share of swapped faces whose descriptor is within dlib's 0.6 of the source photo's;
- **distance swapped / untouched**: the mean descriptor distance to the source, after and before the swap;
- **background change**: the largest pixel change farther than a quarter of a face box from every face (0 = the
  background is untouched);
- **crop jitter**: ``tracking.crop_jitter`` of the aligned crops' landmarks (smoothed, as swapped), per track;
- **mesh jitter**: the same measure over the face mesh in frame pixels (what the mesh swap follows);
- **seam**: the mean colour difference (CIE76 delta E) between the pasted face and the target across the mask's
  feather (mask 25-75 %): what the feather has to hide.

And the swapper's cost: ms per face of its ``swap`` call (the face-mesh call included) at batch 1 and 16.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from swapstream.benchmarks.harness import BenchConfig, bench_setup
from swapstream.benchmarks.judge import SAME_PERSON, Judge
from swapstream.benchmarks.media import iter_frames
from swapstream.services.engine.clock import StageClock
from swapstream.services.engine.mesh_tracking import VideoLocator
from swapstream.services.engine.photos import read_photo
from swapstream.services.engine.swapper import FACE_SIZE, FaceSwapper, enlargement, similarity_to
from swapstream.services.engine.swappers import create_swapper
from swapstream.services.engine.swappers.choice import choose_swapper
from swapstream.services.engine.swappers.mesh import face_meshes
from swapstream.services.engine.tracking import FaceTracker, TrackedFace, TrackedFrame, crop_jitter
from swapstream.services.triton.client import SwapstreamClient
from swapstream.services.options import default
from swapstream.services.triton.repository import shared_dir

CLIPS = ("vid01_talking_head_1280x720_audio.mp4", "vid03_square_480_expressions.mp4",
         "vid04_multi_small_faces_cuts_audio.mp4")
PHOTOS = ("img03_single_frontal_rose_leslie.jpg", "img07_group6_t1.jpg", "img09_group3_glasses_voc.jpg")
SOURCE = "img01_single_frontal_obama.jpg"
BATCH = 16


@dataclass
class TargetQuality:
    target: str
    frames: int = 0
    faces: int = 0
    judged_faces: int = 0
    judged_source: int = 0
    swapped_distances: list[float] = field(default_factory=list)
    untouched_distances: list[float] = field(default_factory=list)
    background_change: int = 0
    crop_jitter: float | None = None
    mesh_jitter: float | None = None
    seam_delta_e: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def row(self) -> dict:
        mean = lambda values: round(float(np.mean(values)), 3) if values else None  # noqa: E731
        return {"target": self.target, "frames": self.frames, "faces": self.faces, "judged_faces": self.judged_faces,
                "judged_source_share": round(self.judged_source / self.judged_faces, 3) if self.judged_faces else None,
                "distance_swapped": mean(self.swapped_distances),
                "distance_untouched": mean(self.untouched_distances),
                "background_change_max": self.background_change,
                "crop_jitter": None if self.crop_jitter is None else round(self.crop_jitter, 4),
                "mesh_jitter": None if self.mesh_jitter is None else round(self.mesh_jitter, 4),
                "seam_delta_e": mean(self.seam_delta_e), "notes": self.notes}


def _outside_faces(shape: tuple[int, int], boxes: np.ndarray) -> np.ndarray:
    keep = np.ones(shape, bool)
    for x1, y1, x2, y2 in boxes:
        mx, my = (x2 - x1) / 4, (y2 - y1) / 4
        keep[max(int(y1 - my), 0):int(y2 + my) + 1, max(int(x1 - mx), 0):int(x2 + mx) + 1] = False
    return keep


def _seam(aligned: np.ndarray, faces: np.ndarray, masks: np.ndarray) -> list[float]:
    """Per face: mean delta E between pasted face and target where the mask is 25-75 % (None: no mask)."""
    out = []
    for crop, face, mask in zip(aligned, faces, masks):
        band = (mask >= 64) & (mask <= 191)
        if band.sum() < 50:
            continue
        a = cv2.cvtColor(crop, cv2.COLOR_RGB2LAB).astype(np.float32)[band]
        b = cv2.cvtColor(face, cv2.COLOR_RGB2LAB).astype(np.float32)[band]
        a[:, 0] *= 100 / 255  # OpenCV's 8-bit L is 0..255 for 0..100
        b[:, 0] *= 100 / 255
        out.append(float(np.linalg.norm(a - b, axis=1).mean()))
    return out


def _mesh_jitter(sequences: dict[int, list[np.ndarray]]) -> float | None:
    """crop_jitter's measure over whole meshes in frame pixels, averaged over tracks of at least 3 frames."""
    values = []
    for points in sequences.values():
        if len(points) < 3:
            continue
        x = np.stack(points).astype(np.float64)
        inter_ocular = float(np.median(np.linalg.norm(x[:, 33, :2] - x[:, 263, :2], axis=-1)))
        second = x[2:, :, :2] - 2 * x[1:-1, :, :2] + x[:-2, :, :2]
        values.append(np.linalg.norm(second, axis=-1).mean() / inter_ocular)
    return float(np.mean(values)) if values else None


class QualityRun:
    def __init__(self, engine: FaceSwapper, identity: dict, person: np.ndarray, judge: Judge, judge_every: int,
                 tracking: str = "mesh"):
        self.engine, self.identity, self.person, self.judge = engine, identity, person, judge
        self.judge_every = judge_every
        self.tracking = tracking  # how faces are followed between frames (engine/mesh_tracking.py)
        self.clock = StageClock()

    def swap(self, frames: np.ndarray, tracked: list[TrackedFrame], first: int, result: TargetQuality,
             landmarks: dict, meshes: dict) -> None:
        """Swaps one batch of frames and judges every ``judge_every``-th of them."""
        chosen = [(p, f) for p, t in enumerate(tracked) for f in t.faces]
        result.frames += len(frames)
        result.faces += len(chosen)
        if not chosen:
            return
        index = np.array([p for p, _ in chosen], np.int32)
        matrices = similarity_to(np.stack([f.landmarks for _, f in chosen]), "ffhq_512", FACE_SIZE)
        aligned = self.engine.aligner(frames, index, matrices)
        tracked = self.engine.tracked_meshes(aligned, chosen, matrices, self.clock)
        if tracked is None and self.engine.swapper.name == "mesh":
            # Detector mode (no tracked meshes): found once, for the swap and for the record below.
            with self.clock("swap"):
                tracked = face_meshes(self.engine.client, aligned)
        faces, masks = self.engine.swapper.swap(aligned, [self.identity], self.clock, tracked, enlargement(matrices))
        swapped = self.engine.blender(frames, faces, masks, index, matrices)
        result.seam_delta_e += _seam(aligned, faces, masks)
        for (_, face) in chosen:
            landmarks.setdefault(face.track_id, []).append(face.landmarks)
        if self.engine.swapper.name == "mesh":  # the mesh the swap followed, back in frame pixels
            found, _ = tracked
            for (_, face), mesh, matrix in zip(chosen, found, matrices):
                inverse = cv2.invertAffineTransform(matrix)
                meshes.setdefault(face.track_id, []).append(mesh[:, :2] @ inverse[:, :2].T + inverse[:, 2])
        for p in range(len(frames)):
            mine = index == p
            boxes = np.array([f.box for q, f in chosen if q == p]).reshape(-1, 4)
            result.background_change = max(result.background_change, int(np.abs(
                swapped[p].astype(np.int16) - frames[p])[_outside_faces(frames.shape[1:3], boxes)].max(initial=0)))
            if not mine.any() or (first + p) % self.judge_every:
                continue
            after = self.judge.distance(self.judge.descriptors(swapped[p], boxes), self.person)
            before = self.judge.distance(self.judge.descriptors(frames[p], boxes), self.person)
            touched = masks[mine].reshape(len(boxes), -1).max(axis=1) > 0  # faces the swapper left alone: not judged
            result.judged_faces += int(touched.sum())
            result.judged_source += int((after[touched] < SAME_PERSON).sum())
            result.swapped_distances += after[touched].tolist()
            result.untouched_distances += before[touched].tolist()

    def clip(self, path: Path, max_frames: int) -> TargetQuality:
        """The first ``max_frames`` frames, detected and tracked as the product does, swapped in batches."""
        result = TargetQuality(path.name)
        tracker = FaceTracker(fps=30.0)
        locate = VideoLocator(self.engine, self.tracking, score_threshold=default("score_threshold"), clock=self.clock)
        pending: dict[int, np.ndarray] = {}
        landmarks: dict[int, list] = {}
        meshes: dict[int, list] = {}
        ready: list[TrackedFrame] = []
        swapped = 0

        def swap_ready(final: bool) -> None:
            nonlocal ready, swapped
            while len(ready) >= BATCH or (final and ready):
                part, ready = ready[:BATCH], ready[BATCH:]
                frames = np.stack([pending.pop(t.frame_index) for t in part])
                self.swap(frames, part, swapped, result, landmarks, meshes)
                swapped += len(part)

        frames = iter_frames(path)
        start = 0
        while start < max_frames:
            chunk = [frame for _, frame in zip(range(min(BATCH, max_frames - start)), frames)]
            if not chunk:
                break
            found = locate(np.stack(chunk))
            for offset, frame in enumerate(chunk):
                pending[start + offset] = frame
                mine = found.frame_index == offset
                ready += tracker.push(start + offset, found.boxes[mine], found.landmarks[mine], found.scores[mine],
                                      new_shot=found.new_shot[offset], meshes=found.meshes[mine])
            start += len(chunk)
            swap_ready(final=False)
        ready += tracker.flush()
        swap_ready(final=True)
        jitters = [crop_jitter(np.stack(seq)) for seq in landmarks.values() if len(seq) >= 3]
        result.crop_jitter = float(np.mean(jitters)) if jitters else None
        result.mesh_jitter = _mesh_jitter(meshes)
        if self.tracking == "mesh":
            result.notes.append(f"detector ran on {locate.follower.detected} of {locate.follower.frames} frames")
        return result

    def photo(self, path: Path) -> TargetQuality:
        result = TargetQuality(path.name)
        rgb = read_photo(path)
        found = self.engine.detect(rgb[None], clock=self.clock)
        faces = [TrackedFace(n, box, lm, lm, float(score), False)
                 for n, (box, lm, score) in enumerate(zip(found.boxes, found.landmarks, found.scores))]
        self.swap(rgb[None], [TrackedFrame(0, faces)], 0, result, {}, {})
        return result


def swap_cost(engine: FaceSwapper, identity: dict, clip: Path) -> dict[str, float]:
    """ms per face of the swapper's ``swap`` call at batch 1 and 16, on faces of ``clip``."""
    frames = np.stack([f for _, f in zip(range(BATCH), iter_frames(clip))])
    found = engine.detect(frames)
    if len(found) == 0:
        return {}
    index = np.resize(np.arange(len(found)), BATCH)
    aligned = engine.crops(frames, found.frame_index[index], found.landmarks[index], ("ffhq_512", FACE_SIZE))
    clock = StageClock()
    engine.swapper.swap(aligned[:1], [identity], clock)  # warm-up
    out = {}
    for batch, repeats in ((1, 8), (BATCH, 2)):
        started = time.perf_counter()
        for _ in range(repeats):
            engine.swapper.swap(aligned[:batch], [identity], clock)
        out[f"ms_per_face_batch_{batch}"] = round((time.perf_counter() - started) * 1000 / (repeats * batch), 1)
    return out


def run_quality_bench(config: BenchConfig, swapper: str | None, max_frames: int, judge_every: int,
                      targets: list[str] | None = None, tracking: str = "mesh") -> dict:
    media = shared_dir() / "media"
    source = config.source or media / SOURCE
    judge = Judge()
    with bench_setup(replace(config, clip=media / CLIPS[0], frames=None)) as setup:
        client = SwapstreamClient(setup.url)
        try:
            choice = choose_swapper(swapper, [s["model"] for s in setup.model_sources if s["kind"] == "real"])
            engine = FaceSwapper(client, create_swapper(choice.name, client), config.device)
            notes: list[str] = []
            identity = engine.source_identity([source], notes)
            rgb = read_photo(source)
            found = engine.detect(rgb[None])
            largest = int(np.argmax(np.prod(found.boxes[:, 2:] - found.boxes[:, :2], axis=1)))
            person = judge.descriptors(rgb, found.boxes[largest:largest + 1])[0]
            run = QualityRun(engine, identity, person, judge, judge_every, tracking)
            rows = []
            for name in targets or [*CLIPS, *PHOTOS]:
                path = Path(name) if Path(name).is_file() else media / name
                started = time.perf_counter()
                result = run.photo(path) if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp") \
                    else run.clip(path, max_frames)
                row = result.row()
                row["seconds"] = round(time.perf_counter() - started, 1)
                rows.append(row)
            cost = swap_cost(engine, identity, media / CLIPS[0])
        finally:
            client.close()
    return {"swapper": choice.name, "why": choice.reason, "source": source.name, "max_frames": max_frames,
            "tracking": tracking,
            "judge_every": judge_every, "targets": rows, "cost": cost, "notes": notes + run.clock.notes()}


def quality_summary_text(results: dict) -> str:
    lines = [f"{results['why']}; source {results['source']}; dlib judge: same person below {SAME_PERSON}",
             f"{'target':<40} {'faces':>5} {'judged':>6} {'source':>6} {'d swap':>6} {'d orig':>6} {'bg max':>6} "
             f"{'crop j':>7} {'mesh j':>7} {'seam dE':>7}"]
    show = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for r in results["targets"]:
        share = r["judged_source_share"]
        lines.append(f"{r['target']:<40} {r['faces']:>5} {r['judged_faces']:>6} "
                     f"{'-' if share is None else f'{share:.0%}':>6} {show(r['distance_swapped'], '.3f'):>6} "
                     f"{show(r['distance_untouched'], '.3f'):>6} {r['background_change_max']:>6} "
                     f"{show(r['crop_jitter'], '.4f'):>7} {show(r['mesh_jitter'], '.4f'):>7} "
                     f"{show(r['seam_delta_e'], '.1f'):>7}")
    if results["cost"]:
        lines.append("swapper cost: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in results["cost"].items()))
    lines += results["notes"]
    return "\n".join(lines)


def write_quality_results(results: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "quality.json"
    path.write_text(json.dumps(results, indent=2))
    return [path]
