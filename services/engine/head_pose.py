"""Head pose (yaw, pitch, roll in degrees) from the detector's five landmarks.

A generic 3D face (mm, nose tip at the origin; x to the image's right, y down, z away from the camera)
is fitted to the landmarks with OpenCV's PnP under a pinhole camera whose focal length is the image
width. Five points give a coarse pose: good to a few degrees near frontal, to about ten at 60 degrees.

Signs, as seen in the image: yaw > 0 when the face turns toward the image's right, pitch > 0 when
the face tilts up, roll > 0 when the head leans clockwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# The detector's landmark order: eye on the image's left, eye on the right, nose tip, mouth corners (left, right).
# Proportions of the detector's landmarks on frontal faces of the shared photos: eyes 63 mm apart, the mouth
# 63 mm below the eyes and 57 mm wide, the nose tip 57% of the way down; depths from a mean adult face.
FACE_MODEL_MM = np.array([
    [-31.5, -36.0, 30.0],
    [31.5, -36.0, 30.0],
    [0.0, 0.0, 0.0],
    [-28.5, 27.0, 25.0],
    [28.5, 27.0, 25.0],
], np.float64)


@dataclass(frozen=True)
class HeadPose:
    yaw: float
    pitch: float
    roll: float


def camera_matrix(width: int, height: int) -> np.ndarray:
    return np.array([[width, 0, width / 2], [0, width, height / 2], [0, 0, 1]], np.float64)


def head_pose(landmarks: np.ndarray, width: int, height: int) -> HeadPose:
    """The pose of one face from its [5,2] landmarks in an image of ``width`` x ``height``."""
    points = np.asarray(landmarks, np.float64).reshape(5, 1, 2)
    camera = camera_matrix(width, height)
    # Start from a frontal face at a plausible distance so the iterative fit does not flip behind the camera.
    eye_distance = float(np.linalg.norm(points[1, 0] - points[0, 0])) or 1.0
    start = np.array([[0.0], [0.0], [width * 63.0 / eye_distance]])
    start[:2, 0] = (points[2, 0] - camera[:2, 2]) * start[2, 0] / width
    ok, rvec, _ = cv2.solvePnP(FACE_MODEL_MM, points, camera, None, np.zeros((3, 1)), start,
                               useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        return HeadPose(float("nan"), float("nan"), float("nan"))
    rotation, _ = cv2.Rodrigues(rvec)
    return _euler(rotation)


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """The model-to-camera rotation for a pose (degrees, the signs of the module docstring)."""
    y, p, r = np.radians([yaw, pitch, roll])
    # Turning toward the image's right swings the face's normal (0, 0, -1) toward +x.
    turn = np.array([[np.cos(y), 0, -np.sin(y)], [0, 1, 0], [np.sin(y), 0, np.cos(y)]])
    # Tilting the face up moves the nose (nearest the camera) up the image: -y toward -z.
    tilt = np.array([[1, 0, 0], [0, np.cos(p), np.sin(p)], [0, -np.sin(p), np.cos(p)]])
    lean = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return lean @ turn @ tilt


def _euler(rotation: np.ndarray) -> HeadPose:
    """Inverse of ``rotation_matrix``: R = lean(roll) @ turn(yaw) @ tilt(pitch)."""
    yaw = np.degrees(np.arcsin(np.clip(rotation[2, 0], -1.0, 1.0)))
    pitch = np.degrees(np.arctan2(-rotation[2, 1], rotation[2, 2]))
    roll = np.degrees(np.arctan2(rotation[1, 0], rotation[0, 0]))
    return HeadPose(*(round(float(angle), 1) + 0.0 for angle in (yaw, pitch, roll)))
