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
