"""``detect`` over gRPC agrees with OpenCV's FaceDetectorYN running the official YuNet release."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from swapstream.services.triton import glue
from swapstream.services.triton.glue import DETECT_SIZE, NMS_THRESHOLD, SCORE_THRESHOLD
from tests.helpers.media import SHARED, YUNET_REFERENCE, read_rgb

PHOTOS = ["img01_single_frontal_obama.jpg", "img03_single_frontal_rose_leslie.jpg", "img05_profile_left.jpeg",
          "img07_group6_t1.jpg", "img09_group3_glasses_voc.jpg"]
EXPECTED_FACES = {"img01_single_frontal_obama.jpg": 1, "img03_single_frontal_rose_leslie.jpg": 1,
                  "img05_profile_left.jpeg": 1, "img07_group6_t1.jpg": 6, "img09_group3_glasses_voc.jpg": 3}


def opencv_faces(rgb: np.ndarray, canvas_hw: tuple[int, int]):
    """OpenCV's answer at the scale the detect ensemble uses for a batch whose images are ``canvas_hw``."""
    scale = DETECT_SIZE / max(canvas_hw)
    h, w = rgb.shape[:2]
    size = (round(w * scale), round(h * scale))
    resized = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), size, interpolation=cv2.INTER_LINEAR)
    detector = cv2.FaceDetectorYN.create(str(YUNET_REFERENCE), "", size, SCORE_THRESHOLD, NMS_THRESHOLD, 5000)
    _, faces = detector.detect(resized)
    faces = np.zeros((0, 15), np.float32) if faces is None else faces
    sx, sy = size[0] / w, size[1] / h
    boxes = faces[:, :4] / [sx, sy, sx, sy]
    boxes[:, 2:] += boxes[:, :2]  # x, y, w, h -> x1, y1, x2, y2
    landmarks = faces[:, 4:14].reshape(-1, 5, 2) / [sx, sy]
    return boxes, landmarks


def iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None).prod()
    return inter / ((a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inter)


def assert_agrees(boxes, landmarks, ref_boxes, ref_landmarks):
    assert len(boxes) == len(ref_boxes)
    for ref_box, ref_lm in zip(ref_boxes, ref_landmarks):
        best = int(np.argmax([iou(ref_box, box) for box in boxes]))
        assert iou(ref_box, boxes[best]) >= 0.95
        assert np.abs(landmarks[best] - ref_lm).max() <= 2.0


@pytest.mark.parametrize("photo", PHOTOS)
def test_detect_agrees_with_opencv(client, photo):
    rgb = read_rgb(photo)
    found = client.detect(rgb[None])
    ref_boxes, ref_landmarks = opencv_faces(rgb, rgb.shape[:2])
    assert len(found) == EXPECTED_FACES[photo] == len(ref_boxes)
    assert (found.frame_index == 0).all()
    assert found.scores.min() >= SCORE_THRESHOLD
    assert_agrees(found.boxes, found.landmarks, ref_boxes, ref_landmarks)


def test_batch_of_different_sizes_in_one_call(client, triton):
    images = [read_rgb(p) for p in PHOTOS]
    canvas = (max(i.shape[0] for i in images), max(i.shape[1] for i in images))
    # The padding is not black: it holds a real face (the Obama photo), which IMAGE_SIZES must hide.
    filler = cv2.resize(images[0], canvas[::-1])
    batch = np.stack([filler] * len(images))
    for slot, image in zip(batch, images):
        slot[:image.shape[0], :image.shape[1]] = image
    sizes = np.array([i.shape[:2] for i in images], np.int32)

    runs = _execution_count(triton, "detect")
    found = client.detect(batch, image_sizes=sizes)
    assert _execution_count(triton, "detect") == runs + 1  # one batched run (YuNet inside detect) for the 5 images

    for index, image in enumerate(images):
        mine = found.frame_index == index
        assert_agrees(found.boxes[mine], found.landmarks[mine], *opencv_faces(image, canvas))
        assert (found.boxes[mine][:, :2] < image.shape[1::-1]).all()

    unmasked = client.detect(batch)  # without IMAGE_SIZES the filler faces in the padding are found too
    assert len(unmasked) > len(found)


def test_no_face_is_an_empty_answer(client):
    found = client.detect(np.full((2, 360, 640, 3), 127, np.uint8))
    assert len(found) == 0
    assert found.boxes.shape == (0, 4) and found.landmarks.shape == (0, 5, 2) and found.frame_index.shape == (0,)


def test_thresholds_and_size_are_per_call(client):
    rgb = read_rgb("img07_group6_t1.jpg")
    assert len(client.detect(rgb[None], score_threshold=0.99)) < 6
    small = client.detect(rgb[None], detect_size=320)
    assert_agrees(small.boxes, small.landmarks, *_opencv_at_size(rgb, 320))


def _opencv_at_size(rgb, size):
    scale = DETECT_SIZE / size
    return opencv_faces(rgb, (round(max(rgb.shape[:2]) * scale),) * 2)


def _execution_count(triton, model: str) -> int:
    stats = grpcclient.InferenceServerClient(triton.grpc_url).get_inference_statistics(model, as_json=True)
    return int(stats["model_stats"][0].get("execution_count", 0))


def test_the_folded_graph_finds_what_the_three_steps_found(client):
    """``detect`` is pre-processing, YuNet and post-processing folded into one graph: the same detections as the
    three graphs run one after the other (as the ensemble ran them), to 1e-3 px and 1e-5 in score."""
    import onnxruntime as ort

    def session(model):
        return ort.InferenceSession(model if isinstance(model, str) else model.SerializeToString(),
                                    providers=["CPUExecutionProvider"])

    pre, post = session(glue.detect_preprocess()), session(glue.detect_postprocess())
    network = session(str(SHARED / "models" / "yunet_s_dynamic.onnx"))
    images = np.stack([cv2.resize(read_rgb(p), (640, 480)) for p in PHOTOS])
    detector_input, padded, scale, valid = pre.run(None, {"IMAGES": images})
    feed = dict(zip([o.name for o in network.get_outputs()], network.run(None, {"input": detector_input})))
    feed.update(PADDED_SIZE=padded, SCALE=scale, VALID_SIZES=valid)
    boxes, scores, landmarks, frame_index = post.run(None, feed)
    found = client.detect(images)
    assert len(found) == len(boxes) >= 12
    np.testing.assert_array_equal(found.frame_index, frame_index)
    np.testing.assert_allclose(found.boxes, boxes, atol=1e-3)
    np.testing.assert_allclose(found.landmarks, landmarks, atol=1e-3)
    np.testing.assert_allclose(found.scores, scores, atol=1e-5)
