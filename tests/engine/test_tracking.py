"""Face tracking: id stability, gap filling, One-Euro smoothing, streaming, face selection (no server)."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from swapstream.services.engine.tracking import (BETA, CausalFaceTracker, FaceTracker, LargestTrackSelector,
                                               TrackedFace, crop_jitter, select_largest)
from tests.helpers.media import MEDIA, YUNET_REFERENCE

# 5 points (right eye, left eye, nose, right and left mouth corner) as fractions of a square box.
TEMPLATE = np.array([[0.32, 0.42], [0.68, 0.42], [0.50, 0.60], [0.36, 0.78], [0.64, 0.78]])


def face_at(center, size: float) -> tuple[np.ndarray, np.ndarray]:
    """Box [4] and landmarks [5,2] of a square face of ``size`` pixels centred at ``center``."""
    corner = np.asarray(center, np.float64) - size / 2
    return np.concatenate([corner, corner + size]), corner + TEMPLATE * size


def noisy(box, landmarks, rng, sigma: float):
    return box + rng.normal(0, sigma, 4), landmarks + rng.normal(0, sigma, (5, 2))


def run(tracker: FaceTracker, frames) -> list:
    """``frames``: per frame a list of (box, landmarks) -> every TrackedFrame, via push and flush."""
    out = []
    for index, faces in enumerate(frames):
        boxes = np.array([b for b, _ in faces]).reshape(-1, 4)
        landmarks = np.array([lm for _, lm in faces]).reshape(-1, 5, 2)
        out += tracker.push(index, boxes, landmarks, np.full(len(faces), 0.9))
    return out + tracker.flush()


def by_track(frames) -> dict[int, list[tuple[int, TrackedFace]]]:
    tracks: dict[int, list] = {}
    for frame in frames:
        for face in frame.faces:
            tracks.setdefault(face.track_id, []).append((frame.frame_index, face))
    return tracks


def linear_face(n: int, start, velocity, size: float, rng=None, sigma: float = 0.0):
    faces = []
    for t in range(n):
        box, lm = face_at(np.asarray(start) + t * np.asarray(velocity), size)
        faces.append(noisy(box, lm, rng, sigma) if sigma else (box, lm))
    return faces


# ---------------------------------------------------------------- association


def iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None).prod()
    return inter / ((a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inter)


def assert_follows(tracks, truths, n):
    """Each track covers all n frames and stays on the ground truth it started on."""
    assert len(tracks) == len(truths)
    for track in tracks.values():
        assert [i for i, _ in track] == list(range(n))
        truth = min(truths, key=lambda tr: np.abs(track[0][1].raw_landmarks - tr[0][1]).max())
        for index, face in track:
            assert np.abs(face.raw_landmarks - truth[index][1]).max() < 10, f"id swapped at frame {index}"


@pytest.mark.parametrize("layout", ["passing", "side_by_side"])
def test_two_noisy_faces_keep_their_ids(layout):
    rng = np.random.default_rng(1)
    n, size = 90, 100.0
    if layout == "passing":  # they pass each other 70 px apart vertically, boxes overlapping
        a = linear_face(n, (100, 200), (5, 0), size, rng, 1.5)
        b = linear_face(n, (545, 270), (-5, 0), size, rng, 1.5)
    else:                    # moving together, 10 px between their boxes
        a = linear_face(n, (100, 200), (3, 1), size, rng, 1.5)
        b = linear_face(n, (210, 200), (3, 1), size, rng, 1.5)
    frames = []
    for fa, fb in zip(a, b):  # the detector's order means nothing
        frames.append([fa, fb] if rng.random() < 0.5 else [fb, fa])

    tracks = by_track(run(FaceTracker(), frames))

    assert sorted(tracks) == [0, 1]
    assert_follows(tracks, [a, b], n)
    assert not any(face.filled for track in tracks.values() for _, face in track)


def test_face_crossing_behind_another_keeps_its_id():
    # Face a passes behind face b. YuNet's NMS (IoU 0.3) keeps one box where they overlap, so a is lost
    # for a few frames and reappears on b's other side, far from where it was last seen: the track's
    # predicted position (constant velocity) is what finds it again.
    rng = np.random.default_rng(8)
    n = 60
    a = linear_face(n, (100, 200), (10, 0), 100.0, rng, 1.0)
    b = linear_face(n, (700, 215), (-10, 0), 110.0, rng, 1.0)
    frames = [[fb] if iou(fa[0], fb[0]) > 0.3 else [fa, fb] for fa, fb in zip(a, b)]
    hidden = [t for t, f in enumerate(frames) if len(f) == 1]
    assert 2 <= len(hidden) <= 5 and hidden == list(range(hidden[0], hidden[-1] + 1))

    tracks = by_track(run(FaceTracker(max_gap=5), frames))

    assert sorted(tracks) == [0, 1]
    assert_follows(tracks, [a, b], n)
    behind = next(track for track in tracks.values() if np.allclose(track[0][1].raw_landmarks, a[0][1]))
    assert [index for index, face in behind if face.filled] == hidden


def test_fast_small_face_without_box_overlap_stays_one_track():
    # A 30 px face speeding up to 25 px a frame: consecutive boxes end with IoU 0.09, the prediction holds.
    x = np.cumsum([10.0] * 5 + [min(10.0 + 3 * i, 25.0) for i in range(35)])
    frames = [[face_at((xi, 100), 30.0)] for xi in x]
    assert list(by_track(run(FaceTracker(), frames))) == [0]


def test_box_jump_with_steady_landmarks_stays_one_track():
    # A raised hand makes YuNet's box twice as large for a frame (IoU 0.25): the landmarks still match.
    frames = [[face_at((200, 200), 80.0)] for _ in range(20)]
    box, landmarks = frames[10][0]
    frames[10] = [(np.concatenate([box[:2] - 40, box[2:] + 40]), landmarks)]
    assert list(by_track(run(FaceTracker(), frames))) == [0]


def test_new_face_gets_a_new_id_and_ids_count_from_zero():
    a = linear_face(30, (100, 100), (1, 0), 80.0)
    b = linear_face(30, (400, 300), (0, 1), 80.0)
    frames = [[a[t]] + ([b[t]] if t >= 10 else []) for t in range(30)]
    tracks = by_track(run(FaceTracker(), frames))
    assert sorted(tracks) == [0, 1]
    assert tracks[1][0][0] == 10 and len(tracks[0]) == 30


def test_new_shot_ends_every_track():
    faces = linear_face(20, (100, 150), (1, 0), 90.0)
    tracker = FaceTracker(max_gap=3)
    out = []
    for t, (box, lm) in enumerate(faces):
        if t == 9:  # the face is missed just before the cut: no gap may be filled across it
            out += tracker.push(t, None, None, None)
        else:
            out += tracker.push(t, box[None], lm[None], [0.9], new_shot=t == 10)
    tracks = by_track(out + tracker.flush())
    assert [i for i, _ in tracks[0]] == list(range(9)) and [i for i, _ in tracks[1]] == list(range(10, 20))


# ---------------------------------------------------------------- gaps


def test_gap_inside_a_track_is_filled_by_interpolation():
    rng = np.random.default_rng(2)
    faces = linear_face(30, (100, 150), (4, -1), 90.0, rng, 1.0)
    frames = [[] if 10 <= t < 13 else [f] for t, f in enumerate(faces)]  # missed at 10, 11, 12

    out = run(FaceTracker(max_gap=5), frames)

    assert [len(f.faces) for f in out] == [1] * 30
    assert {face.track_id for f in out for face in f.faces} == {0}
    assert [f.faces[0].filled for f in out] == [10 <= t < 13 for t in range(30)]
    before, after = faces[9], faces[13]
    for t in (10, 11, 12):
        w = (t - 9) / 4
        face = out[t].faces[0]
        np.testing.assert_allclose(face.raw_landmarks, (1 - w) * before[1] + w * after[1])
        assert np.abs(face.landmarks - face.raw_landmarks).max() < 5  # smoothed through the gap too
        assert np.all(face.box[:2] < face.box[2:])


@pytest.mark.parametrize("gap, filled", [(5, True), (6, False)])
def test_gap_up_to_max_gap_is_filled_longer_splits_the_track(gap, filled):
    faces = linear_face(40, (100, 150), (2, 0), 90.0)
    frames = [[] if 15 <= t < 15 + gap else [f] for t, f in enumerate(faces)]

    out = run(FaceTracker(max_gap=5), frames)
    tracks = by_track(out)

    if filled:
        assert list(tracks) == [0] and len(tracks[0]) == 40
        assert sum(face.filled for _, face in tracks[0]) == gap
    else:
        assert sorted(tracks) == [0, 1]
        assert [i for i, _ in tracks[0]] == list(range(15))
        assert [i for i, _ in tracks[1]] == list(range(15 + gap, 40))
        assert all(out[t].faces == [] for t in range(15, 15 + gap))
        assert not any(face.filled for f in out for face in f.faces)


def test_track_end_is_not_extrapolated():
    faces = linear_face(20, (100, 150), (2, 0), 90.0)
    out = run(FaceTracker(max_gap=5), [[f] if t < 12 else [] for t, f in enumerate(faces)])
    assert [len(f.faces) for f in out] == [1] * 12 + [0] * 8


@pytest.mark.parametrize("gap", [3, 7])
def test_causal_tracker_answers_each_frame_at_once_and_holds_a_missed_face(gap):
    faces = linear_face(30, (100, 150), (2, 0), 90.0)
    tracker = CausalFaceTracker(max_gap=5)
    out = []
    for t, face in enumerate(faces):
        missed = 10 <= t < 10 + gap
        boxes, landmarks = (np.zeros((0, 4)), np.zeros((0, 5, 2))) if missed else (face[0][None], face[1][None])
        (frame,) = tracker.push(t, boxes, landmarks, np.full(len(boxes), 0.9))  # final at once: no look-ahead
        out.append(frame)
    held = [f for f in out[10:10 + gap] if f.faces]
    assert len(held) == min(gap, 5) and all(f.faces[0].filled for f in held)
    for frame in held:  # at the last detected position (frame 9), not interpolated towards the future
        np.testing.assert_allclose(frame.faces[0].raw_landmarks, faces[9][1])
    ids = {face.track_id for f in out for face in f.faces}
    assert ids == ({0} if gap <= 5 else {0, 1})  # a face back within the hold keeps its track
    assert all(len(f.faces) == 1 for f in out[10 + gap:])


# ---------------------------------------------------------------- smoothing


def smoothed_and_raw(frames, **kwargs):
    track = by_track(run(FaceTracker(**kwargs), frames))[0]
    return (np.stack([face.landmarks for _, face in track]), np.stack([face.raw_landmarks for _, face in track]),
            np.stack([face.box for _, face in track]))


def test_one_euro_lowers_jitter_on_a_noisy_talking_head():
    rng = np.random.default_rng(3)
    # A slow sway (0.1 face sizes/s) plus detector noise of 0.5 % of the face size.
    t = np.arange(150)
    frames = [[noisy(*face_at((240 + 25 * np.sin(i / 30), 240 + 3 * np.cos(i / 20)), 200.0), rng, 1.0)]
              for i in t]
    smoothed, raw, _ = smoothed_and_raw(frames)
    truth = np.stack([face_at((240 + 25 * np.sin(i / 30), 240 + 3 * np.cos(i / 20)), 200.0)[1] for i in t])

    raw_jitter, smooth_jitter = crop_jitter(raw), crop_jitter(smoothed)
    assert smooth_jitter < 0.6 * raw_jitter
    # Smoothing brings the landmarks closer to the truth, not just steadier.
    assert np.abs(smoothed - truth)[10:].mean() < np.abs(raw - truth)[10:].mean()


@pytest.mark.parametrize("speed", [0.5, 3.0])  # face sizes per second
def test_one_euro_follows_linear_motion_with_bounded_lag(speed):
    size, fps = 200.0, 30.0
    frames = [[f] for f in linear_face(90, (100, 200), (speed * size / fps, 0), size)]
    smoothed, raw, boxes = smoothed_and_raw(frames, fps=fps)
    lag = (raw - smoothed)[45:, :, 0]  # steady state, x only (the motion is horizontal)
    # A first-order low-pass trails a ramp by v / (2 pi cutoff); the One-Euro cutoff grows with v, so the
    # lag stays below size / (2 pi beta) however fast the face moves.
    assert np.all(lag > 0)
    assert lag.max() < size / (2 * math.pi * BETA)
    true_boxes = np.stack([f[0][0] for f in frames])
    assert np.abs(boxes - true_boxes)[45:].max() < size / (2 * math.pi * BETA)


def test_one_euro_follows_a_step_within_a_few_frames():
    size = 200.0
    frames = [[face_at((200 if t < 30 else 250, 200), size)] for t in range(60)]  # 0.25 face size jump
    smoothed, raw, _ = smoothed_and_raw(frames)
    remaining = np.abs(smoothed - raw)[:, :, 0].max(axis=1) / 50.0
    assert remaining[29] < 1e-9
    assert 0 < remaining[30] < 0.5
    assert remaining[35] < 0.05  # a fixed 1 Hz low-pass would still be 39 % away


def test_crop_jitter_is_scale_invariant_and_ignores_steady_motion():
    rng = np.random.default_rng(4)
    base = np.stack([face_at((100 + 3 * t, 100), 100.0)[1] for t in range(300)])
    noise = rng.normal(0, 1.0, base.shape)
    assert crop_jitter(base) < 1e-12
    assert crop_jitter(base + noise) == pytest.approx(crop_jitter(3 * (base + noise)))
    # Noise of standard deviation s per coordinate: E|second difference| = sqrt(6) s sqrt(pi / 2).
    expected = math.sqrt(6) * math.sqrt(math.pi / 2) / (0.36 * 100.0)
    assert crop_jitter(base + noise) == pytest.approx(expected, rel=0.1)


# ---------------------------------------------------------------- streaming


def test_streaming_returns_every_frame_once_in_order_with_bounded_memory():
    rng = np.random.default_rng(5)
    max_gap, n = 4, 120
    a = linear_face(n, (100, 100), (2, 1), 80.0, rng, 1.0)
    b = linear_face(n, (300, 300), (-1, 0), 60.0, rng, 1.0)
    tracker = FaceTracker(max_gap=max_gap)
    seen = []
    for t in range(n):
        faces = ([a[t]] if rng.random() < 0.8 else []) + ([b[t]] if t % 40 < 25 else [])
        faces = [] if 60 <= t < 70 else faces  # nobody in view for a while
        boxes = np.array([f[0] for f in faces]).reshape(-1, 4)
        landmarks = np.array([f[1] for f in faces]).reshape(-1, 5, 2)
        out = tracker.push(t, boxes, landmarks, np.full(len(faces), 0.9))
        assert tracker.held_frames <= max_gap + 1
        assert [f.frame_index for f in out] == ([t - max_gap] if t >= max_gap else [])
        seen += out
    rest = tracker.flush()
    assert [f.frame_index for f in rest] == list(range(n - max_gap, n))
    seen += rest
    assert [f.frame_index for f in seen] == list(range(n))
    assert tracker.held_frames == 0
    assert all(f.faces == [] for f in seen[60:70])  # frames without faces are returned too
    for frame in seen:
        ids = [face.track_id for face in frame.faces]
        assert ids == sorted(set(ids))


def test_frames_without_faces_and_empty_video():
    tracker = FaceTracker(max_gap=2)
    out = []
    for t in range(5):
        out += tracker.push(t, np.zeros((0, 4)), np.zeros((0, 5, 2)), np.zeros(0))
    out += tracker.flush()
    assert [(f.frame_index, f.faces) for f in out] == [(t, []) for t in range(5)]
    assert FaceTracker().flush() == []


def test_push_rejects_skipped_frames_bad_shapes_and_push_after_flush():
    box, lm = face_at((100, 100), 50.0)
    tracker = FaceTracker()
    tracker.push(0, box[None], lm[None], [0.9])
    with pytest.raises(ValueError, match="in order"):
        tracker.push(2, box[None], lm[None], [0.9])
    with pytest.raises(ValueError, match="one box"):
        tracker.push(1, box[None], lm[None], [0.9, 0.8])
    tracker.flush()
    with pytest.raises(RuntimeError):
        tracker.push(1, box[None], lm[None], [0.9])


def test_timestamps_per_frame_drive_the_filter():
    rng = np.random.default_rng(6)
    faces = linear_face(60, (100, 100), (1, 0), 100.0, rng, 1.0)

    def smoothed(timestamps):
        tracker = FaceTracker()
        out = []
        for t, (box, lm) in enumerate(faces):
            out += tracker.push(t, box[None], lm[None], [0.9], timestamp=None if timestamps is None else timestamps[t])
        return np.stack([f.faces[0].landmarks for f in out + tracker.flush()])

    np.testing.assert_allclose(smoothed(None), smoothed(np.arange(60) / 30.0))
    # The same samples 10x further apart in time: the 1 Hz cutoff smooths much less.
    assert crop_jitter(smoothed(np.arange(60) / 3.0)) > 1.5 * crop_jitter(smoothed(None))
    tracker = FaceTracker()
    tracker.push(0, None, None, None, timestamp=1.0)
    with pytest.raises(ValueError, match="increase"):
        tracker.push(1, None, None, None, timestamp=1.0)


# ---------------------------------------------------------------- face selection


def face(track_id: int, size: float) -> TrackedFace:
    box, lm = face_at((200, 200), size)
    return TrackedFace(track_id, box, lm, lm, 0.9, False)


def test_select_largest_per_frame_and_by_track():
    assert select_largest([]) == []
    assert select_largest([face(0, 50), face(1, 80), face(2, 60)])[0].track_id == 1

    rng = np.random.default_rng(7)
    # Two faces of about one size (track 0 first seen larger), then track 1 clearly larger for long.
    sizes = [(104, 100)] + [(100 + rng.normal(0, 3), 102 + rng.normal(0, 3)) for _ in range(59)] + [(100, 160)] * 90
    selector = LargestTrackSelector()
    per_frame, per_track = [], []
    for a, b in sizes:
        faces = [face(0, a), face(1, b)]
        per_frame.append(select_largest(faces)[0].track_id)
        per_track.append(selector(faces)[0].track_id)
    switches = lambda ids: sum(x != y for x, y in zip(ids, ids[1:]))
    assert switches(per_frame[:60]) > 5  # two faces of about one size: per frame choice flickers
    assert switches(per_track[:60]) == 0  # by track it does not
    assert per_track[-1] == 1 and switches(per_track) == 1  # a clearly larger face wins once it stays larger
    assert selector([face(0, 100)])[0].track_id == 0  # the selected face left: take the one present
    assert selector([]) == []


# ---------------------------------------------------------------- real landmarks


@pytest.fixture(scope="module")
def real_detections():
    """YuNet (OpenCV) on the first 120 frames of a real expressions clip: per frame (boxes, landmarks, scores)."""
    capture = cv2.VideoCapture(str(MEDIA / "vid03_square_480_expressions.mp4"))
    detector, frames = None, []
    while len(frames) < 120:
        ok, image = capture.read()
        if not ok:
            break
        if detector is None:
            size = (image.shape[1], image.shape[0])
            detector = cv2.FaceDetectorYN.create(str(YUNET_REFERENCE), "", size, 0.6, 0.3, 5000)
        found = detector.detect(image)[1]
        found = np.zeros((0, 15), np.float32) if found is None else found.astype(np.float64)
        boxes = np.concatenate([found[:, :2], found[:, :2] + found[:, 2:4]], axis=1)
        frames.append((boxes, found[:, 4:14].reshape(-1, 5, 2), found[:, 14]))
    capture.release()
    assert len(frames) == 120
    return frames


def test_smoothing_lowers_jitter_on_real_yunet_landmarks(real_detections):
    tracker = FaceTracker()
    out = []
    for index, (boxes, landmarks, scores) in enumerate(real_detections):
        out += tracker.push(index, boxes, landmarks, scores)
    out += tracker.flush()
    tracks = by_track(out)
    assert list(tracks) == [0] and len(tracks[0]) == 120  # one person, one track, every frame

    smoothed = np.stack([f.landmarks for _, f in tracks[0]])
    raw = np.stack([f.raw_landmarks for _, f in tracks[0]])
    raw_jitter, smooth_jitter = crop_jitter(raw), crop_jitter(smoothed)
    print(f"vid03 crop jitter (inter-ocular fraction): raw {raw_jitter:.4f}, smoothed {smooth_jitter:.4f}")
    assert smooth_jitter < 0.6 * raw_jitter
    inter_ocular = np.median(np.linalg.norm(raw[:, 0] - raw[:, 1], axis=-1))
    assert np.abs(smoothed - raw).mean() < 0.03 * inter_ocular  # still on the face, not frozen
