"""``swapstream bench quality`` against the session Triton: a shared photo and the first frames of a clip."""
from __future__ import annotations

import json
import subprocess
import sys


def test_quality_bench_judges_the_mesh_swap_and_sees_the_background_untouched(triton, triton_repository, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "swapstream.services.cli", "bench", "quality", "--triton", triton.grpc_url,
         "--repository", str(triton_repository), "--swapper", "mesh", "--frames", "12", "--judge-every", "6",
         "--targets", "img09_group3_glasses_voc.jpg", "vid03_square_480_expressions.mp4", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "quality.json").read_text())
    photo, clip = results["targets"]
    assert results["swapper"] == "mesh" and "asked for" in results["why"]
    assert photo["faces"] == photo["judged_faces"] == 3 and clip["frames"] == 12 and clip["judged_faces"] == 2
    for row in (photo, clip):
        assert row["judged_source_share"] >= 2 / 3
        assert row["distance_swapped"] < row["distance_untouched"] - 0.2
        assert row["background_change_max"] == 0
        assert 0 < row["seam_delta_e"] < 30
    assert 0 < clip["crop_jitter"] < 0.05 and 0 < clip["mesh_jitter"] < 0.05
    assert results["cost"]["ms_per_face_batch_1"] > 0 and results["cost"]["ms_per_face_batch_16"] > 0
    assert "vid03_square_480_expressions.mp4" in done.stdout and "judged" in done.stdout


def test_detector_mode_finds_each_batch_meshes_once_for_the_swap_and_the_record():
    """Without tracked meshes the mesh swap and the mesh-jitter record share one facemesh call per batch."""
    from types import SimpleNamespace

    import numpy as np

    from swapstream.benchmarks.quality import QualityRun, TargetQuality
    from swapstream.services.engine.swappers.mesh import MeshSwapper
    from swapstream.services.engine.tracking import TrackedFace, TrackedFrame

    calls = []

    def facemesh(crops):
        calls.append(len(crops))
        return np.full((len(crops), 468, 3), 100, np.float32), np.zeros(len(crops), np.float32)  # no face: untouched

    client = SimpleNamespace(facemesh=facemesh)
    engine = SimpleNamespace(
        client=client, swapper=MeshSwapper(client),
        aligner=lambda frames, index, matrices: np.zeros((len(index), 512, 512, 3), np.uint8),
        tracked_meshes=lambda aligned, chosen, matrices, clock: None,  # detector mode
        blender=lambda frames, faces, masks, index, matrices: frames.copy())
    run = QualityRun(engine, {}, np.zeros(128, np.float32), judge=None, judge_every=1000)
    landmarks5 = np.array([[200, 220], [280, 220], [240, 260], [210, 300], [270, 300]], np.float32)
    face = lambda track: TrackedFace(track, np.array([150, 150, 330, 360], np.float32), landmarks5, landmarks5,  # noqa: E731
                                     0.9, False)
    frames = np.zeros((2, 480, 480, 3), np.uint8)
    meshes: dict = {}
    run.swap(frames, [TrackedFrame(0, [face(1)]), TrackedFrame(1, [face(1)])], 1, TargetQuality("x"), {}, meshes)
    assert calls == [2]
    assert len(meshes[1]) == 2 and meshes[1][0].shape == (468, 2)
