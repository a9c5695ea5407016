"""Face templates, similarity fit, DALI alignment and DALI paste-back, checked against OpenCV."""

from __future__ import annotations


import cv2
import numpy as np
import pytest
from nvidia.dali import Pipeline

from swapstream.pipelines.align import (
    BACKENDS,
    Aligner,
    BatchedPipeline,
    Box,
    align_faces,
    dali_warp_matrix,
    footprint,
    geometry_backend,
    pipeline_kwargs,
    warp_graph,
)
from swapstream.pipelines.blend import Blender, _composite, blend_faces, paste_graph
from swapstream.pipelines.templates import (
    arcface_112_v1,
    estimate_similarity,
    ffhq_512,
    template_points,
)

from tests.helpers.media import MEDIA, SHARED  # noqa: E402
YUNET = SHARED / "models" / "face_detection_yunet_2023mar.onnx"


def read_rgb(name: str) -> np.ndarray:
    image = cv2.imread(str(MEDIA / name), cv2.IMREAD_COLOR)
    assert image is not None, f"cannot read {MEDIA / name}"
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def yunet_landmarks(rgb: np.ndarray) -> np.ndarray:
    """(n, 5, 2) landmarks from the real YuNet through OpenCV, best score first."""
    h, w = rgb.shape[:2]
    detector = cv2.FaceDetectorYN.create(str(YUNET), "", (w, h), 0.6, 0.3, 5000)
    _, faces = detector.detect(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if faces is None:
        return np.zeros((0, 5, 2))
    faces = faces[np.argsort(-faces[:, 14])]
    return faces[:, 4:14].reshape(-1, 5, 2).astype(np.float64)


def cv_align(frame: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    return cv2.warpAffine(
        frame, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


def cv_paste(frames, faces, masks, frame_index, matrices) -> np.ndarray:
    """Reference paste-back: whole-frame inverse warps with OpenCV, composited in order (the face
    with its border repeated, the mask zero outside the crop: facefusion's paste_back)."""
    out = frames.astype(np.float64)
    h, w = frames.shape[1:3]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    for face, mask, i, m in zip(faces, masks, frame_index, matrices):
        back = cv2.warpAffine(face, m, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
        alpha = cv2.warpAffine(mask, m, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        alpha = alpha[..., None] / 255.0
        out[i] = np.rint(out[i] * (1 - alpha) + back * alpha)
    return out.astype(np.uint8)


def cv_mask_support(masks, frame_index, matrices, shape, margin: int = 2) -> np.ndarray:
    """Boolean (N,H,W): where OpenCV's warped-back masks are non-zero, dilated by `margin`."""
    n, h, w = shape
    support = np.zeros((n, h, w), dtype=np.uint8)
    for mask, i, m in zip(masks, frame_index, matrices):
        nonzero = (mask > 0).astype(np.uint8) * 255
        warped = cv2.warpAffine(nonzero, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        support[i] |= (warped > 0).astype(np.uint8)
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    return np.stack([cv2.dilate(s, kernel) > 0 for s in support])


def similarity(scale: float, angle_deg: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array(
        [[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty]]
    )


def feathered_ellipse(size: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot((xx - size / 2) / (0.38 * size), (yy - size * 0.55) / (0.45 * size))
    return (np.clip((1.0 - r) / 0.2, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def group_photo() -> np.ndarray:
    return read_rgb("img07_group6_t1.jpg")


@pytest.fixture(scope="module", params=BACKENDS)
def aligner512(request) -> Aligner:
    """Each test taking it runs on both geometry backends: DALI's (the GPU's, run here on the CPU) and OpenCV's."""
    return Aligner(512, "cpu", max_batch_size=8, backend=request.param)


# ---- templates and similarity ----------------------------------------------------------------


def test_templates_are_facefusion_normalised_points_in_pixels():
    np.testing.assert_allclose(template_points("ffhq_512", 512), ffhq_512)
    np.testing.assert_allclose(template_points("arcface_112_v1", 224), 2 * arcface_112_v1)
    assert ffhq_512.shape == arcface_112_v1.shape == (5, 2)
    np.testing.assert_allclose(ffhq_512[0], [0.37691676 * 512, 0.46864664 * 512])
    for t in (ffhq_512 / 512, arcface_112_v1 / 112):
        # YuNet order: right eye (image left), left eye, nose, right mouth corner, left mouth corner.
        assert t[0, 0] < t[2, 0] < t[1, 0] and t[3, 0] < t[2, 0] < t[4, 0]
        assert max(t[0, 1], t[1, 1]) < t[2, 1] < min(t[3, 1], t[4, 1])
    with pytest.raises(ValueError, match="unknown face template"):
        template_points("ffhq_1024", 1024)


def test_similarity_recovers_an_exact_transform_like_opencv():
    truth = similarity(0.37, -23.0, 41.5, -12.25)
    src = np.array([[210.3, 330.8], [380.1, 322.4], [300.7, 420.0], [240.2, 505.5], [365.9, 498.1]])
    dst = src @ truth[:, :2].T + truth[:, 2]
    estimated = estimate_similarity(src, dst)
    assert estimated.shape == (2, 3) and estimated.dtype == np.float64
    np.testing.assert_allclose(estimated, truth, atol=1e-9)
    opencv, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)
    np.testing.assert_allclose(estimated, opencv, atol=1e-4)  # OpenCV refines iteratively


def test_similarity_is_the_least_squares_optimum_on_noisy_landmarks(group_photo):
    landmarks = yunet_landmarks(group_photo)
    assert len(landmarks) == 6, "the README lists 6 faces in img07"
    for points in landmarks:
        m = estimate_similarity(points, ffhq_512)
        # Linear least squares over (a, b, tx, ty) with M = [[a, -b, tx], [b, a, ty]].
        x, y = points[:, 0], points[:, 1]
        one, zero = np.ones(5), np.zeros(5)
        design = np.concatenate([np.stack([x, -y, one, zero], 1), np.stack([y, x, zero, one], 1)])
        target = np.concatenate([ffhq_512[:, 0], ffhq_512[:, 1]])
        (a, b, tx, ty), *_ = np.linalg.lstsq(design, target, rcond=None)
        np.testing.assert_allclose(m, [[a, -b, tx], [b, a, ty]], rtol=1e-9, atol=1e-7)
        assert m[0, 0] > 0, "an upright face maps without turning upside down"


def test_similarity_rejects_degenerate_points():
    with pytest.raises(ValueError, match="same point"):
        estimate_similarity(np.ones((5, 2)), ffhq_512)
    with pytest.raises(ValueError, match="shape"):
        estimate_similarity(np.ones((5, 3)), ffhq_512)


# ---- alignment -------------------------------------------------------------------------------


def test_align_matches_opencv_on_real_faces(group_photo, aligner512):
    second = read_rgb("img09_group3_glasses_voc.jpg")
    frames = np.zeros((2, 886, 1280, 3), np.uint8)
    frames[0] = group_photo
    frames[1, : second.shape[0], : second.shape[1]] = second
    index, matrices = [], []
    for i, frame in enumerate(frames):
        for points in yunet_landmarks(frame):
            index.append(i)
            matrices.append(estimate_similarity(points, ffhq_512))
    assert index.count(0) == 6 and index.count(1) == 3

    crops = aligner512(frames, np.array(index), np.stack(matrices))

    assert crops.shape == (9, 512, 512, 3) and crops.dtype == np.uint8
    for crop, i, m in zip(crops, index, matrices):
        diff = np.abs(crop.astype(int) - cv_align(frames[i], m, 512))
        assert diff.mean() < 0.3, diff.mean()
        assert np.percentile(diff, 99.9) <= 3 and diff.max() <= 8


def test_aligned_face_lands_on_the_template():
    photo = read_rgb("img01_single_frontal_obama.jpg")
    (points,) = yunet_landmarks(photo)
    matrix = estimate_similarity(points, ffhq_512)
    crop = align_faces(photo[None], np.array([0]), matrix[None], 512)[0]
    found = yunet_landmarks(crop)
    assert len(found) >= 1
    expected = points @ matrix[:, :2].T + matrix[:, 2]
    # YuNet on the crop re-finds the landmarks where the transform put them (detector jitter
    # of a few pixels), and those are near the template (least-squares residual).
    assert np.abs(found[0] - expected).max() < 12
    assert np.abs(found[0] - ffhq_512).max() < 20


@pytest.mark.parametrize("x, y", [(100, 20), (60, 150), (30, 40)])
def test_align_puts_a_bright_dot_where_opencv_does(aligner512, x, y):
    frame = np.zeros((1, 300, 400, 3), np.uint8)
    frame[0, y, x] = 255
    # Magnified, so that a half-pixel convention error would move the dot by ~0.75 px.
    matrix = similarity(2.5, 13.0, 20.0, -10.0)
    crop = aligner512(frame, np.array([0]), matrix[None])[0].astype(float).sum(-1)
    reference = cv_align(frame[0], matrix, 512).astype(float).sum(-1)
    yy, xx = np.mgrid[:512, :512]
    centroid = np.array([(crop * xx).sum(), (crop * yy).sum()]) / crop.sum()
    ref_centroid = np.array([(reference * xx).sum(), (reference * yy).sum()]) / reference.sum()
    assert np.abs(centroid - (matrix @ [x, y, 1])).max() < 0.25
    assert np.abs(centroid - ref_centroid).max() < 0.25


@pytest.mark.parametrize("backend", BACKENDS)
def test_aligner_takes_any_number_of_faces(group_photo, backend):
    aligner = Aligner(64, "cpu", max_batch_size=4, backend=backend)
    frames = np.stack([group_photo, group_photo[::-1].copy()])
    rng = np.random.default_rng(7)
    matrices = np.stack(
        [
            similarity(rng.uniform(0.2, 0.6), rng.uniform(-30, 30), rng.uniform(-300, 0), rng.uniform(-200, 0))
            for _ in range(9)
        ]
    )
    index = np.array([0, 1, 1, 0, 0, 1, 0, 1, 1])

    empty = aligner(frames, np.zeros(0, int), np.zeros((0, 2, 3)))
    assert empty.shape == (0, 64, 64, 3) and empty.dtype == np.uint8
    many = aligner(frames, index, matrices)  # more faces than max_batch_size: several runs
    assert many.shape == (9, 64, 64, 3)
    for k in (0, 5, 8):
        single = aligner(frames, index[k : k + 1], matrices[k : k + 1])
        np.testing.assert_array_equal(single[0], many[k])
        assert np.abs(many[k].astype(int) - cv_align(frames[index[k]], matrices[k], 64)).mean() < 0.5
    with pytest.raises(ValueError, match="out of range"):
        aligner(frames, np.array([2]), matrices[:1])


def test_gpu_graphs_put_the_warp_on_the_gpu():
    # No GPU here: define the graphs without building them, and check where DALI places them.
    for graph in (lambda: [warp_graph("gpu", 512)], lambda: paste_graph("gpu")):
        pipe = Pipeline(**pipeline_kwargs("gpu", 4, device_id=0))
        with pipe:
            outputs = graph()
        assert [out.device for out in outputs] == ["gpu"] * len(outputs)
    assert pipeline_kwargs("cpu", 4)["device_id"] is None
    assert pipeline_kwargs("gpu", 4, device_id=1)["device_id"] == 1
    with pytest.raises(ValueError, match="device"):
        Aligner(512, "cuda")


def test_the_geometry_runs_on_dali_on_the_gpu_and_on_opencv_on_the_cpu():
    assert geometry_backend("gpu") == "dali" and geometry_backend("cpu") == "opencv"
    assert geometry_backend("cpu", "dali") == "dali"
    with pytest.raises(ValueError, match="OpenCV geometry runs on the CPU"):
        geometry_backend("gpu", "opencv")
    with pytest.raises(ValueError, match="backend must be one of"):
        geometry_backend("cpu", "numpy")
    assert Aligner(64).backend == Blender().backend == "opencv"


# ---- paste-back ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def paste_case(group_photo, aligner512):
    """Three frames: two faces in frame 0 (they overlap once pasted), one in frame 1, none in 2."""
    frames = np.stack([group_photo, np.ascontiguousarray(group_photo[:, ::-1]), group_photo // 2])
    landmarks = yunet_landmarks(group_photo)
    index = np.array([0, 0, 1])
    matrices = np.stack(
        [
            estimate_similarity(landmarks[0], ffhq_512),
            estimate_similarity(landmarks[0] + [25.0, 10.0], ffhq_512),
            estimate_similarity(landmarks[1] * [-1, 1] + [group_photo.shape[1] - 1, 0], ffhq_512),
        ]
    )
    crops = aligner512(frames, index, matrices)
    faces = np.ascontiguousarray(255 - crops)  # a visible "swap": inverted colours
    masks = np.stack([feathered_ellipse(512)] * 3)
    return frames, faces, masks, index, matrices


@pytest.mark.parametrize("backend", BACKENDS)
def test_paste_back_matches_opencv(paste_case, backend):
    frames, faces, masks, index, matrices = paste_case
    before = frames.copy()

    out = Blender("cpu", backend=backend)(frames, faces, masks, index, matrices)

    np.testing.assert_array_equal(frames, before)  # input untouched
    reference = cv_paste(frames, faces, masks, index, matrices)
    # OpenCV's INTER_LINEAR weights are multiples of 1/32: up to ~4 levels off at sharp edges.
    diff = np.abs(out.astype(int) - reference)
    assert diff.mean() < 0.05 and np.percentile(diff, 99.9) <= 2 and diff.max() <= 6
    changed = (out != frames).any(-1)
    assert changed[0].sum() > 5000 and changed[1].sum() > 5000
    np.testing.assert_array_equal(out[2], frames[2])  # a frame without faces passes through
    outside = ~cv_mask_support(masks, index, matrices, frames.shape[:3])
    np.testing.assert_array_equal(out[outside], frames[outside])


def test_align_then_paste_back_restores_the_frame(group_photo, aligner512):
    (points, *_) = yunet_landmarks(group_photo)
    matrix = estimate_similarity(points, ffhq_512)[None]
    crops = aligner512(group_photo[None], np.array([0]), matrix)
    masks = np.full((1, 512, 512), 255, np.uint8)

    out = blend_faces(group_photo[None], crops, masks, np.array([0]), matrix)[0]

    box = footprint(matrix[0], 512, *group_photo.shape[:2])
    inner = (slice(box.y0 + 4, box.y1 - 4), slice(box.x0 + 4, box.x1 - 4))
    diff = np.abs(out[inner].astype(int) - group_photo[inner])
    assert diff.mean() < 1.5, diff.mean()


@pytest.mark.parametrize("backend", BACKENDS)
def test_paste_back_of_a_face_partly_outside_the_frame(group_photo, backend):
    frame = group_photo[None, :300, :400].copy()
    face = np.full((1, 128, 128, 3), 200, np.uint8)
    mask = np.full((1, 128, 128), 255, np.uint8)
    matrix = similarity(0.8, 20.0, 30.0, 60.0)[None]  # the crop covers the frame's top-left corner
    box = footprint(matrix[0], 128, 300, 400)
    assert box.x0 == 0 and box.y0 == 0 and box.x1 < 400 and box.y1 < 300

    out = Blender("cpu", max_batch_size=2, backend=backend)(frame, face, mask, np.array([0]), matrix)

    reference = cv_paste(frame, face, mask, np.array([0]), matrix)
    assert np.abs(out.astype(int) - reference).max() <= 6
    assert (out[0, 5, 5] == 200).all()


def test_paste_back_with_no_faces_returns_equal_frames(group_photo):
    frames = group_photo[None]
    no_faces = np.zeros((0, 512, 512, 3), np.uint8)
    no_masks = np.zeros((0, 512, 512), np.uint8)
    out = blend_faces(frames, no_faces, no_masks, np.zeros(0, int), np.zeros((0, 2, 3)))
    assert out is not frames
    np.testing.assert_array_equal(out, frames)
    with pytest.raises(ValueError, match="masks"):
        blend_faces(frames, np.zeros((1, 64, 64, 3), np.uint8), np.zeros((1, 32, 32), np.uint8), [0], [np.eye(2, 3)])


# ---- the faster paths against the ones they replaced -------------------------------------------


def test_align_over_the_face_boxes_equals_the_whole_frame_warp(group_photo):
    """Aligning hands DALI only each face's footprint in its frame. The same DALI warp over whole frames (as it
    ran before) gives the same crops within 1 level: the matrix moved by the box's corner rounds differently in
    float32. A crop reaching past the frame's edge is zero there in both; one wholly outside is all zero."""
    frames = np.stack([group_photo, np.ascontiguousarray(group_photo[::-1])])
    landmarks = yunet_landmarks(group_photo)
    upside_down = landmarks[0] * [1, -1] + [0, group_photo.shape[0] - 1]
    index = np.array([0] * len(landmarks) + [1, 1, 0])
    matrices = np.stack([estimate_similarity(points, ffhq_512) for points in landmarks]
                        + [estimate_similarity(upside_down, ffhq_512), similarity(2.0, 10.0, -100.0, 40.0),
                           similarity(1.0, 0.0, 5000.0, 5000.0)])
    whole_frames = BatchedPipeline(lambda images_on: warp_graph("cpu", 512, images_on), "cpu", 8)
    (reference,) = whole_frames.run(images=[frames[i] for i in index],
                                    matrices=[dali_warp_matrix(m) for m in matrices])
    reference = np.stack(reference)

    crops = Aligner(512, "cpu", max_batch_size=8, backend="dali")(frames, index, matrices)

    diff = np.abs(crops.astype(int) - reference)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())
    assert (crops[-2] == 0).any() and (crops[-2] > 0).any()  # partly outside the frame
    assert not crops[-1].any() and not reference[-1].any()  # wholly outside


def _composite_per_pixel(frame, face, mask, box):
    """The composite as it ran before: float32 over each touched pixel, gathered by a boolean index."""
    region = frame[box.y0 : box.y1, box.x0 : box.x1]
    touched = mask > 0
    m = mask[touched].astype(np.float32)[:, None] / 255.0
    base = region[touched].astype(np.float32)
    pasted = face[touched].astype(np.float32)
    region[touched] = np.clip(np.rint(base + (pasted - base) * m), 0, 255).astype(np.uint8)


def test_composite_over_the_mask_rows_equals_the_per_pixel_one(group_photo):
    rng = np.random.default_rng(3)
    box = Box(200, 100, 200 + 300, 100 + 260)
    face = rng.integers(0, 256, (*box.shape, 3), dtype=np.uint8)
    mask = np.zeros(box.shape, np.uint8)
    mask[20:250, 30:280] = cv2.resize(feathered_ellipse(256), (250, 230))
    mask[100:120, 40:60] = 255
    expected, out = group_photo.copy(), group_photo.copy()
    _composite_per_pixel(expected, face, mask, box)

    _composite(out, face, mask, box)

    np.testing.assert_array_equal(out, expected)
    assert (out != group_photo).any()
    _composite(out, face, np.zeros_like(mask), box)  # an empty mask changes nothing
    np.testing.assert_array_equal(out, expected)


def test_downscaler_sizes_and_chunks_like_an_area_resize(group_photo):
    from swapstream.pipelines.resize import Downscaler

    frames = np.stack([group_photo, group_photo[::-1], group_photo // 2])
    small = Downscaler(640, "cpu", max_batch_size=2)(frames)  # 3 frames: two DALI runs

    assert small.shape == (3, 443, 640, 3) and small.dtype == np.uint8
    for frame, out in zip(frames, small):
        reference = cv2.resize(frame, (640, 443), interpolation=cv2.INTER_AREA)
        assert np.abs(out.astype(int) - reference).mean() < 2.0  # antialiased linear against pixel-area averaging
    assert Downscaler(2000)(frames) is frames  # small enough already: not copied
