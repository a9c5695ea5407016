"""Head pose from five landmarks: a generic face projected at known poses is read back."""
import cv2
import numpy as np
import pytest

from swapstream.services.engine.head_pose import FACE_MODEL_MM, camera_matrix, head_pose, rotation_matrix


@pytest.mark.parametrize("yaw, pitch, roll", [(0, 0, 0), (30, 0, 0), (-40, 10, 5), (0, 20, 0), (10, -15, -20),
                                              (60, 0, 0)])
def test_projected_model_gives_its_pose_back(yaw, pitch, roll):
    width, height = 640, 480
    rvec, _ = cv2.Rodrigues(rotation_matrix(yaw, pitch, roll))
    points, _ = cv2.projectPoints(FACE_MODEL_MM, rvec, np.array([[20.0], [-10.0], [600.0]]),
                                  camera_matrix(width, height), None)
    pose = head_pose(points.reshape(5, 2), width, height)
    assert (pose.yaw, pose.pitch, pose.roll) == pytest.approx((yaw, pitch, roll), abs=0.5)


def test_signs_as_seen_in_the_image():
    """Turning right moves the nose right of the eyes' middle; tilting up moves it toward the eyes."""
    width, height = 640, 480
    camera = camera_matrix(width, height)

    def project(yaw, pitch):
        rvec, _ = cv2.Rodrigues(rotation_matrix(yaw, pitch, 0))
        return cv2.projectPoints(FACE_MODEL_MM, rvec, np.array([[0.0], [0.0], [600.0]]), camera, None)[0].reshape(5, 2)

    turned, level = project(30, 0), project(0, 0)
    assert turned[2, 0] - turned[:2, 0].mean() > level[2, 0] - level[:2, 0].mean()
    up = project(0, 20)
    assert up[2, 1] - up[:2, 1].mean() < level[2, 1] - level[:2, 1].mean()
