"""The quality judge: dlib's face-recognition ResNet, a model swapstream never swaps with.

A face is described by dlib's 128-D descriptor (its own 5-point landmarks inside a given box, its own alignment);
two descriptors closer than ``SAME_PERSON`` are the same person by dlib's rule. ``dlib-bin`` and
``face_recognition_models`` are test and benchmark dependencies only (the ``test`` extra).
"""
from __future__ import annotations

from functools import cached_property

import numpy as np

SAME_PERSON = 0.6  # dlib's threshold on the descriptor distance


class JudgeUnavailable(RuntimeError):
    """dlib or its model files are not installed."""


class Judge:
    def __init__(self):
        try:
            import dlib
            import face_recognition_models as models
        except ImportError as error:
            raise JudgeUnavailable(f"the quality judge needs dlib-bin and face_recognition_models ({error}); "
                                   "install them with: pip install -e '.[test]'") from None
        self._dlib = dlib
        self._models = models
        self._shape = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
        self._net = dlib.face_recognition_model_v1(models.face_recognition_model_location())

    @cached_property
    def _shape68(self):
        """dlib's 68-point predictor (about 100 MB), loaded on the first ``eye_openness``: most uses never ask."""
        return self._dlib.shape_predictor(self._models.pose_predictor_model_location())

    def descriptors(self, rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """[K,128] descriptors of the faces in ``boxes`` ([K,4] x1, y1, x2, y2) of one RGB image."""
        image = np.ascontiguousarray(rgb, dtype=np.uint8)
        out = np.zeros((len(boxes), 128), np.float32)
        for k, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, np.float64)):
            box = self._dlib.rectangle(int(round(x1)), int(round(y1)), int(round(x2)), int(round(y2)))
            out[k] = np.array(self._net.compute_face_descriptor(image, self._shape(image, box)), np.float32)
        return out

    def eye_openness(self, rgb: np.ndarray, box) -> float:
        """The eye aspect ratio of the face in ``box`` (x1, y1, x2, y2), dlib's 68 points, both eyes averaged: the
        lids' distance over the eye's width, about 0.3 open and under 0.2 closed."""
        image = np.ascontiguousarray(rgb, dtype=np.uint8)
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        shape = self._shape68(image, self._dlib.rectangle(x1, y1, x2, y2))
        points = np.array([[p.x, p.y] for p in shape.parts()], np.float64)
        ratios = [(np.linalg.norm(e[1] - e[5]) + np.linalg.norm(e[2] - e[4])) / (2 * np.linalg.norm(e[0] - e[3]))
                  for e in (points[36:42], points[42:48])]
        return float(np.mean(ratios))

    @staticmethod
    def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Euclidean distances between descriptors (broadcasting)."""
        return np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32), axis=-1)
