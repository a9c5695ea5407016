"""Faces picked by pointing at them (pick_time, pick_points, pick_sources): only they change, followed through a
clip across a cut by their look; a point on no face is refused before anything runs. Real media, the session's
Triton, the stand-in swap (its colour shift tells which identity a face got)."""
from __future__ import annotations

import numpy as np
import pytest

from swapstream.benchmarks.media import ffmpeg
from swapstream.services import options
from swapstream.services.engine.cuts import CutDetector
from swapstream.services.engine.errors import ErrorCode, SwapInputError
from swapstream.services.engine.offline import SwapOptions, run_swap
from swapstream.services.engine.picking import requested
from swapstream.services.engine.selection import FaceSelector, Pick, Picks
from swapstream.services.engine.tracking import TrackedFace, TrackedFrame
from swapstream.services.triton import standins
from tests.helpers.engine import simswap_face_swapper, source_embedding
from tests.helpers.media import MEDIA, frames_of, read_rgb

OBAMA = MEDIA / "img01_single_frontal_obama.jpg"
ROSE = MEDIA / "img03_single_frontal_rose_leslie.jpg"
GROUP = MEDIA / "img07_group6_t1.jpg"
PANEL, HALF, FPS = 240, 8, 30  # the clip: two 240x240 panels side by side, 8 frames, a cut, 8 frames


@pytest.fixture(scope="module")
def swapper(client):
    return simswap_face_swapper(client)


@pytest.fixture(scope="module")
def two_people_with_a_cut(tmp_path_factory):
    """vid03's person on the left and vid01's on the right; after a cut at frame 16 they change sides, so the
    tracker carries each side's track over to the other person."""
    out = tmp_path_factory.mktemp("pick") / "two.mp4"
    panel = f"scale={PANEL}:{PANEL},setsar=1"
    ffmpeg("-i", str(MEDIA / "vid03_square_480_expressions.mp4"), "-i", str(MEDIA / "vid01_talking_head_1280x720_audio.mp4"),
           "-filter_complex",
           f"[0:v]trim=end_frame={2 * HALF},setpts=PTS-STARTPTS,{panel},split[a1][a2];"
           f"[1:v]trim=end_frame={2 * HALF},setpts=PTS-STARTPTS,crop=480:480:530:0,{panel},split[b1][b2];"
           f"[a1]trim=end_frame={HALF}[a1t];[b1]trim=end_frame={HALF}[b1t];"
           f"[a2]trim=start_frame={HALF},setpts=PTS-STARTPTS[a2t];[b2]trim=start_frame={HALF},setpts=PTS-STARTPTS[b2t];"
           "[a1t][b1t]hstack[s1];[b2t][a2t]hstack[s2];[s1][s2]concat=n=2:v=1:a=0[out]",
           "-map", "[out]", "-r", str(FPS), "-c:v", "libx264", "-crf", "12", "-preset", "veryfast",
           "-pix_fmt", "yuv420p", str(out))
    return out


def inner(box) -> tuple[slice, slice]:
    """The middle of a face box (cheeks, nose): what the swap surely changes."""
    x1, y1, x2, y2 = (int(v) for v in box)
    w, h = x2 - x1, y2 - y1
    return slice(y1 + h // 4, y2 - h // 4), slice(x1 + w // 4, x2 - w // 4)


def change(before: np.ndarray, after: np.ndarray, box) -> float:
    region = inner(box)
    return float(np.abs(after[region].astype(int) - before[region].astype(int)).mean())


# ------------------------------------------------------------------------------------------------ the options

def test_points_and_photo_numbers_parse_from_the_cli_and_the_api():
    assert options.points("320,180") == ((320.0, 180.0),)
    assert options.points("[[320, 180], [10.5, 0]]") == ((320.0, 180.0), (10.5, 0.0))
    assert options.points("[320, 180]") == ((320.0, 180.0),)
    assert options.indices("1,0") == options.indices("[1, 0]") == (1, 0)
    for bad in ("", "320", "[[1, 2, 3]]", "[[-1, 5]]", "[[NaN, 1]]", "[]", "[[1, true]]", str([[1, 1]] * 33)):
        with pytest.raises(ValueError, match="expected X,Y"):
            options.points(bad)
    for bad in ("a", "[-1]", "[0.5]", "[]"):
        with pytest.raises(ValueError, match="expected 0,1"):
            options.indices(bad)


@pytest.mark.parametrize("faces, points, sources, words", [
    ("all", None, "[0]", "give pick_points too"),
    ("largest", "[[1, 1]]", None, "leave faces at all"),
    ("all", "[[1, 1], [50, 50]]", "[0]", "1 photo numbers for 2 pick_points"),
    ("all", "[[1, 1]] x", None, "pick_points: expected X,Y"),
])
def test_pick_options_that_do_not_fit_together_are_refused(faces, points, sources, words):
    with pytest.raises(SwapInputError, match=words) as refused:
        requested(faces, None, points, sources)
    assert refused.value.code == ErrorCode.BAD_OPTION


# ------------------------------------------------------------------------------------------------- a photo

def test_only_the_picked_faces_of_the_group_change_each_into_its_own_source(swapper, client, tmp_path):
    group = read_rgb(GROUP.name)
    boxes = client.detect(group[None]).boxes
    assert len(boxes) == 6
    left, right = int(np.argmin(boxes[:, 0])), int(np.argmax(boxes[:, 0]))
    centre = lambda box: [float((box[0] + box[2]) / 2), float((box[1] + box[3]) / 2)]  # noqa: E731
    out = tmp_path / "picked.png"
    summary = run_swap(swapper, [OBAMA, ROSE], GROUP, out, SwapOptions(
        pick_points=f"[{centre(boxes[left])}, {centre(boxes[right])}]", pick_sources="[1, 0]"))
    result = read_rgb(str(out))
    assert summary.faces_swapped == 2
    changed = [change(group, result, box) for box in boxes]
    assert all((c > 8) == (i in (left, right)) for i, c in enumerate(changed)), changed
    outside = np.ones(group.shape[:2], bool)
    for box in boxes[[left, right]]:
        x1, y1, x2, y2 = box.astype(int)
        outside[max(y1 - 40, 0):y2 + 40, max(x1 - 40, 0):x2 + 40] = False
    assert np.abs(result[outside].astype(int) - group[outside]).max() <= 2  # nothing else moved
    # Each picked face took its own source's colour shift: the left face ROSE's (photo 1), the right OBAMA's.
    for index, photo in ((left, ROSE), (right, OBAMA)):
        region = inner(boxes[index])
        observed = (result[region].astype(float) - group[region]).mean(axis=(0, 1))
        shifts = {p: standins.swap_shift(source_embedding(swapper, [p])) * 255 for p in (OBAMA, ROSE)}
        nearest = min(shifts, key=lambda p: np.abs(shifts[p] - observed).sum())
        assert nearest == photo, (index, observed, shifts)


def test_a_point_on_no_face_is_refused_before_anything_is_written(swapper, tmp_path):
    out = tmp_path / "none.png"
    with pytest.raises(SwapInputError, match=r"point 1 \(5, 5\) is on no face in the photo: the faces there are at") \
            as refused:
        run_swap(swapper, [OBAMA], GROUP, out, SwapOptions(pick_points="[[5, 5]]"))
    assert refused.value.code == ErrorCode.PICK_ON_NO_FACE and not out.exists()


# -------------------------------------------------------------------------------------------------- a clip

def test_the_picked_person_alone_changes_through_the_clip_and_across_the_cut(swapper, client, two_people_with_a_cut,
                                                                           tmp_path):
    clip = two_people_with_a_cut
    before = frames_of(clip)
    pick_frame = HALF + 4  # after the cut: vid03's person is on the right now
    found = client.detect(before[pick_frame][None])
    (picked,) = [box for box in found.boxes if box[0] >= PANEL]
    point = [float((picked[0] + picked[2]) / 2), float((picked[1] + picked[3]) / 2)]
    out = tmp_path / "picked.mp4"
    summary = run_swap(swapper, [OBAMA], clip, out, SwapOptions(batch_size=4, pick_time=pick_frame / FPS,
                                                                pick_points=f"[{point}]"))
    after = frames_of(out)
    assert len(after) == 2 * HALF and summary.faces_swapped == 2 * HALF, str(summary)
    assert "1 cuts" in str(summary)
    for index in range(0, 2 * HALF, 2):
        boxes = client.detect(before[index][None]).boxes
        assert len(boxes) == 2, index
        person_on_right = index >= HALF  # vid03's person, the one picked
        for box in boxes:
            on_right = box[0] >= PANEL
            amount = change(before[index], after[index], box)
            if on_right == person_on_right:
                assert amount > 8, (index, amount)
            else:
                assert amount < 3, (index, amount)  # codec noise only


def test_the_pick_time_must_be_inside_the_video(swapper, two_people_with_a_cut, tmp_path):
    with pytest.raises(SwapInputError, match=r"pick_time: 9 s is past the end of the video \(0.53 s\)") as refused:
        run_swap(swapper, [OBAMA], two_people_with_a_cut, tmp_path / "out.mp4",
                 SwapOptions(pick_time=9, pick_points="[[10, 10]]"))
    assert refused.value.code == ErrorCode.BAD_OPTION and not (tmp_path / "out.mp4").exists()


# ------------------------------------------------------------------------------------ the selection, alone

def test_a_track_carried_across_a_cut_to_another_person_loses_the_pick():
    """Two tracks that keep their places while the people change sides at a cut in the middle of a batch (as a
    tracker does when the faces are where the old ones were): the pick follows the person, not the track."""
    colour = {"A": 60, "B": 200}
    people = lambda index: ("A", "B") if index < 10 else ("B", "A")  # noqa: E731  (left, right)
    frames = np.stack([np.concatenate([np.full((64, 64, 3), colour[p], np.uint8) for p in people(i)], axis=1)
                       for i in range(16)])
    boxes = [np.array([8.0, 8, 56, 56]), np.array([72.0, 8, 120, 56])]
    nose = [np.tile([32.0, 32], (5, 1)), np.tile([96.0, 32], (5, 1))]

    def embed(batch, positions, landmarks):  # the look of a face: which person's colour is under its nose
        values = [batch[p, int(lm[2, 1]), int(lm[2, 0]), 0] for p, lm in zip(positions, landmarks)]
        return np.array([[1.0, 0.0] if v == colour["A"] else [0.0, 1.0] for v in values])

    tracked = [TrackedFrame(i, [TrackedFace(t, boxes[t], nose[t], nose[t], 0.9, False) for t in (0, 1)],
                            new_shot=i == 10) for i in range(16)]  # the cut, as the tracker passes it on
    picks = Picks(12, 0.4, [Pick((96.0, 32.0), boxes[1], np.array([1.0, 0.0]), 0)])  # A, on the right at frame 12
    selector = FaceSelector("all", True, 0.5, embed=embed, picks=picks)
    chosen = selector(frames[:8], tracked[:8]) + [(p + 8, f) for p, f in selector(frames[8:], tracked[8:])]
    assert [(p, f.track_id) for p, f in chosen] == [(i, 0 if i < 10 else 1) for i in range(16)]
    assert selector.cuts == 1


def test_the_picked_frame_is_found_among_the_frames_a_trimmed_run_reads():
    """Two faces that look alike (the look cannot tell them apart): the point decides, from the frame it was made on,
    which a run reading only frames 2, 3, ... (start, fps) numbers 10, not 12."""
    frames = np.zeros((14, 64, 128, 3), np.uint8)
    boxes = [np.array([8.0, 8, 56, 56]), np.array([72.0, 8, 120, 56])]
    same = np.tile([32.0, 32], (5, 1))
    tracked = [TrackedFrame(i, [TrackedFace(t, boxes[t], same, same, 0.9, False) for t in (0, 1)]) for i in range(14)]
    picks = Picks(12, 0.4, [Pick((96.0, 32.0), boxes[1], np.array([1.0, 0.0]), 0)])
    selector = FaceSelector("all", True, 0.5, embed=lambda f, p, lm: np.tile([1.0, 0.0], (len(p), 1)), picks=picks)
    selector.frames_kept(np.arange(2, 16))
    chosen = selector(frames, tracked)
    assert [f.track_id for _, f in chosen] == [0] * 10 + [1] * 4  # the right face from the picked frame on


def test_the_cuts_of_the_shared_clips_are_found_and_nothing_else():
    for clip, cuts in (("vid04_multi_small_faces_cuts_audio.mp4", [20, 82, 211]),
                       ("vid03_square_480_expressions.mp4", [])):
        detector = CutDetector()
        assert [i for i, frame in enumerate(frames_of(MEDIA / clip)) if detector(frame)] == cuts, clip
