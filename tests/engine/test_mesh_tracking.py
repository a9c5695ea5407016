"""Mesh-driven tracking on real frames through the session Triton (``detect`` + ``facemesh``): the detector runs on
few frames, faces entering or lost are found again, and the swap follows the tracked, smoothed mesh."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from swapstream.benchmarks.media import iter_frames
from swapstream.services.engine import selection
from swapstream.services.engine.clock import StageClock
from swapstream.services.engine.mesh_tracking import DETECT_EVERY, DETECTION_IOU, VideoLocator, five_points
from swapstream.services.engine.swapper import FaceSwapper
from swapstream.services.engine.swappers.mesh import MeshSwapper
from swapstream.services.engine.tracking import FaceTracker, box_iou, crop_jitter
from tests.helpers.judge import SAME_PERSON, distances_to, judge
from tests.helpers.media import MEDIA, frames_of, read_rgb

SOURCE = "img01_single_frontal_obama.jpg"
VID01 = "vid01_talking_head_1280x720_audio.mp4"
FRAMES = 30


@pytest.fixture(scope="module")
def engine(client) -> FaceSwapper:
    return FaceSwapper(client, MeshSwapper(client))


@pytest.fixture(scope="module")
def vid03() -> np.ndarray:
    return frames_of(MEDIA / "vid03_square_480_expressions.mp4")[:FRAMES]


def locate_all(engine, frames, mode="mesh", batch=16):
    """Per frame: (detector ran, faces located); the locator's follower counts the detector's frames."""
    locate = VideoLocator(engine, mode, score_threshold=0.6, clock=StageClock())
    out = []
    for start in range(0, len(frames), batch):
        for n in range(start, min(start + batch, len(frames))):
            before = locate.follower.detected
            found = locate(frames[n:n + 1])
            out.append((locate.follower.detected > before, found))
    return out


def test_the_detector_runs_on_few_frames_and_the_mesh_stands_for_its_points(engine, vid03):
    mesh = locate_all(engine, vid03)
    detector = locate_all(engine, vid03, "detector")
    ran = [n for n, (detected, _) in enumerate(mesh) if detected]
    assert ran == list(range(0, FRAMES, DETECT_EVERY))
    errors = []
    for (_, followed), (_, found) in zip(mesh, detector):
        assert len(followed) == len(found) == 1
        assert not np.isnan(followed.meshes).any()
        inter_ocular = np.linalg.norm(found.landmarks[0, 0] - found.landmarks[0, 1])
        errors.append(np.linalg.norm(followed.landmarks[0] - found.landmarks[0], axis=-1) / inter_ocular)
    # the mesh's five points (with the face's measured offset) stay where YuNet puts its own: measured 1-3 % of the
    # eye distance on average, at most 13 % (a smile changing the mouth corners' offset between two detections)
    assert np.mean(errors) < 0.04 and np.max(errors) < 0.2
    # on the frames the detector ran on, the faces are exactly the detector's
    for n in ran:
        np.testing.assert_array_equal(mesh[n][1].landmarks, detector[n][1].landmarks)


def test_a_face_entering_mid_clip_is_found_at_the_next_detection(engine, vid03):
    face = cv2.resize(read_rgb("img03_single_frontal_rose_leslie.jpg"), (160, 160), interpolation=cv2.INTER_AREA)
    wide = np.zeros((FRAMES, 480, 960, 3), np.uint8)
    wide[:, :, :480] = vid03
    wide[:, :, 480:] = 120
    enters = 13
    wide[enters:, 160:320, 700:860] = face  # a small face: not a scene cut
    located = locate_all(engine, wide)
    counts = [len(found) for _, found in located]
    found_at = next(n for n, c in enumerate(counts) if c == 2)
    assert counts[:enters] == [1] * enters
    assert found_at == 20  # the next frame the detector is due on, then followed
    assert counts[found_at:] == [2] * (FRAMES - found_at)


def test_a_lost_face_makes_the_detector_run_at_once(engine, vid03):
    frames = vid03.copy()
    _, first = locate_all(engine, frames[:1])[0]
    x1, y1, x2, y2 = first.boxes[0].astype(int)
    gone = 14  # not a frame the detector is due on
    frames[gone:gone + 3, max(y1, 0):y2, max(x1, 0):x2] = 128  # the face hidden for 3 frames (no scene cut)
    located = locate_all(engine, frames)
    ran = [n for n, (detected, _) in enumerate(located) if detected]
    assert gone in ran and gone not in range(0, FRAMES, DETECT_EVERY)
    assert [len(found) for _, found in located[gone:gone + 3]] == [0, 0, 0]
    assert len(located[gone + 3][1]) == 1  # found again once it is back (the detector runs while nothing is followed)


def test_a_face_followed_while_another_is_lost_is_reported_once(engine, vid03):
    """Two faces; one is hidden mid-clip, so the detector runs again on that frame: the other face, still followed
    by its mesh and found again by the detector, is one face in that frame, not two (one track, swapped once)."""
    face = cv2.resize(read_rgb("img03_single_frontal_rose_leslie.jpg"), (160, 160), interpolation=cv2.INTER_AREA)
    wide = np.zeros((FRAMES, 480, 960, 3), np.uint8)
    wide[:, :, :480] = vid03
    wide[:, :, 480:] = 120
    gone = 14  # not a frame the detector is due on
    wide[:gone, 160:320, 700:860] = face
    wide[gone + 3:, 160:320, 700:860] = face
    located = locate_all(engine, wide)
    ran = [n for n, (detected, _) in enumerate(located) if detected]
    assert gone in ran and gone not in range(0, FRAMES, DETECT_EVERY)
    counts = [len(found) for _, found in located]
    assert counts[:gone] == [2] * gone and counts[gone:gone + 3] == [1, 1, 1]
    for n, (_, found) in enumerate(located):
        overlap = box_iou(found.boxes, found.boxes) - np.eye(len(found))
        assert not (overlap >= DETECTION_IOU).any(), n


def test_a_scene_cut_makes_the_detector_run_and_starts_a_new_shot(engine, vid03):
    other = np.stack([cv2.resize(f, (480, 270)) for _, f in zip(range(6), iter_frames(MEDIA / VID01))])
    frames = vid03[:12].copy()
    frames[6:, :270] = other[:6]
    frames[6:, 270:] = 0
    located = locate_all(engine, frames)
    assert located[6][0] and located[6][1].new_shot[0]
    assert not any(found.new_shot[0] for n, (_, found) in enumerate(located) if n != 6)


def test_detector_mode_reports_the_scene_cut_too(engine, vid03):
    """Without mesh following, the cut still reaches the tracker (``new_shot``) and comes out with the tracked
    frame, where the picked faces read it."""
    other = np.stack([cv2.resize(f, (480, 270)) for _, f in zip(range(6), iter_frames(MEDIA / VID01))])
    frames = vid03[:12].copy()
    frames[6:, :270] = other[:6]
    frames[6:, 270:] = 0
    located = locate_all(engine, frames, "detector")
    assert [n for n, (_, found) in enumerate(located) if found.new_shot[0]] == [6]
    tracker, tracked = FaceTracker(max_gap=2), []
    for n, (_, found) in enumerate(located):
        tracked += tracker.push(n, found.boxes, found.landmarks, found.scores, new_shot=found.new_shot[0])
    tracked += tracker.flush()
    assert [frame.new_shot for frame in tracked] == [n == 6 for n in range(12)]


def test_the_tracker_smooths_the_mesh_and_fills_its_gaps():
    rng = np.random.default_rng(0)
    base = rng.uniform(100, 300, (468, 3))
    tracker = FaceTracker(max_gap=3)
    out, found = [], {}
    box = np.array([100.0, 100.0, 300.0, 300.0])
    landmarks = np.array([[150, 180], [250, 180], [200, 220], [160, 260], [240, 260]], float)
    for n in range(40):
        meshes = found[n] = (base + rng.normal(0, 1.5, base.shape))[None]
        if n in (20, 21):
            out += tracker.push(n, np.zeros((0, 4)), np.zeros((0, 5, 2)), np.zeros(0), meshes=np.zeros((0, 468, 3)))
            continue
        if n == 30:
            meshes = np.full_like(meshes, np.nan)  # a face with no mesh
        out += tracker.push(n, box[None], landmarks[None], [0.9], meshes=meshes)
    out += tracker.flush()
    faces = [frame.faces[0] for frame in out]
    assert faces[20].filled and faces[20].mesh is not None and faces[30].mesh is None
    smoothed = np.stack([f.mesh for f in faces[5:20]])[:, :5, :2]
    raw_jitter = crop_jitter(base[None, :5, :2] + rng.normal(0, 1.5, (15, 5, 2)))
    assert crop_jitter(smoothed) < 0.5 * raw_jitter
    # The smoothing switch off (--no-smoothing): the swap gets each frame's mesh as the network found it.
    unsmoothed = selection.smoothed(faces, smoothing=False)
    for n in (5, 10, 19):
        assert not np.allclose(faces[n].mesh, found[n][0])
        np.testing.assert_array_equal(unsmoothed[n].mesh, found[n][0])
        np.testing.assert_array_equal(unsmoothed[n].landmarks, faces[n].raw_landmarks)
    with pytest.raises(ValueError, match="one mesh per face"):
        FaceTracker().push(0, box[None], landmarks[None], [0.9], meshes=np.zeros((2, 468, 3)))


def test_the_swap_follows_the_tracked_mesh_and_stays_the_source(engine, vid03):
    identity = engine.source_identity([MEDIA / SOURCE], [])
    person = judge().descriptors(read_rgb(SOURCE), engine.detect(read_rgb(SOURCE)[None]).boxes[:1])[0]
    tracker = FaceTracker(max_gap=2)
    locate = VideoLocator(engine, "mesh", score_threshold=0.6, clock=StageClock())
    tracked = []
    for n in range(12):
        found = locate(vid03[n:n + 1])
        tracked += tracker.push(n, found.boxes, found.landmarks, found.scores, meshes=found.meshes)
    tracked += tracker.flush()
    frame = tracked[7]  # between two detections
    (face,) = frame.faces
    assert face.mesh is not None
    chosen = [(0, face)]
    frames = vid03[7:8]
    swapped = engine.swap_frames(frames, chosen, [identity])
    assert distances_to(person, swapped[0], face.box[None])[0] < SAME_PERSON
    # the warp follows the tracked mesh: moved, the swapped face moves with it
    moved = engine.swap_frames(frames, [(0, type(face)(**{**vars(face), "mesh": face.mesh + [6.0, 0.0, 0.0]}))],
                               [identity])
    changed = np.abs(moved.astype(int) - swapped).max(axis=-1) > 30
    assert changed.sum() > 500
    assert five_points(face.mesh)[0, 0] < five_points(face.mesh)[1, 0]  # image-left eye first, as YuNet's
