"""Progress counts the faces of the frames written so far, not of the batches the swap has run ahead on (a one-face
clip once showed "16 / 216 frames · 32 faces swapped")."""
from __future__ import annotations

from swapstream.benchmarks.media import cut
from swapstream.services.engine.offline import SwapOptions, run_swap
from tests.helpers.engine import simswap_face_swapper
from tests.helpers.media import MEDIA

OBAMA = MEDIA / "img01_single_frontal_obama.jpg"


def test_faces_swapped_follow_the_frames_written(client, tmp_path):
    clip = cut(MEDIA / "vid03_square_480_expressions.mp4", tmp_path / "in.mp4", 24)  # one face in every frame
    seen = []
    summary = run_swap(simswap_face_swapper(client), [OBAMA], clip, tmp_path / "out.mp4",
                       SwapOptions(batch_size=4, audio=False),
                       progress=lambda frames, s: seen.append((s.frames, s.faces_swapped)))
    assert len(seen) == 6 and seen[-1] == (24, 24)
    assert all(faces == frames for frames, faces in seen), seen
    assert (summary.frames, summary.faces_swapped) == (24, 24)
