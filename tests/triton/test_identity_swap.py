"""``identity`` and ``swap`` over gRPC with the stand-ins: shapes, K = 0, K > 1, and their known behaviour."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from swapstream.services.triton import standins
from swapstream.services.triton.glue import FEATHER_PX, swap_coverage
from swapstream.services.triton.model_store import load_manifest
from tests.helpers.media import aligned_faces

MANIFEST = load_manifest()


def expected_embedding(faces: np.ndarray) -> np.ndarray:
    """The arcface stand-in's documented behaviour, computed here from its definition."""
    spec = MANIFEST["arcface_simswap"]
    x = (faces.astype(np.float32) * spec.scale - spec.mean) / spec.std
    pooled = x.reshape(len(x), 8, 14, 8, 14, 3).mean(axis=(2, 4)).transpose(0, 3, 1, 2).reshape(len(x), -1)
    raw = pooled @ standins.identity_projection()
    return raw / np.linalg.norm(raw, axis=1, keepdims=True)


def test_identity_embeddings(client):
    faces = aligned_faces("img07_group6_t1.jpg", "arcface_112_v2", 112, client)
    embeddings = client.identity(faces)
    assert embeddings.shape == (6, 512) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embeddings, expected_embedding(faces), atol=2e-4)
    assert np.abs(embeddings[0] - embeddings[1]).max() > 0.01  # different people, different embeddings


def test_identity_of_no_face(client):
    assert client.identity(np.zeros((0, 112, 112, 3), np.uint8)).shape == (0, 512)


def test_swap_of_no_face(client):
    faces, masks = client.swap(np.zeros((0, 512, 512, 3), np.uint8), np.ones(512, np.float32))
    assert faces.shape == (0, 512, 512, 3) and masks.shape == (0, 512, 512)


@pytest.fixture(scope="module")
def swapped(client):
    faces = aligned_faces("img07_group6_t1.jpg", "ffhq_512", 512, client)[:4]
    embedding = client.identity(aligned_faces("img01_single_frontal_obama.jpg", "arcface_112_v2", 112, client))[0]
    out, masks = client.swap(faces, embedding)
    return faces, embedding, out, masks


def _regions():
    labels = standins.parser_labels(512)
    coverage = swap_coverage(MANIFEST["simswap_256"])[0, 0]
    grow = np.ones((2 * FEATHER_PX + 3,) * 2, np.uint8)
    skin = (labels > 0).astype(np.uint8)
    mouth = (labels == 11).astype(np.uint8)
    return {
        "swapped": (cv2.erode(skin, grow) > 0) & (cv2.dilate(mouth, grow) == 0) & (coverage == 1.0),
        "mouth": cv2.erode(mouth, np.ones((11, 11), np.uint8)) > 0,
        "outside_mask": cv2.dilate(skin, grow) == 0,
        "outside_swap": coverage == 0.0,
    }


def test_swap_shapes(swapped):
    faces, _, out, masks = swapped
    assert out.shape == (4, 512, 512, 3) and out.dtype == np.uint8
    assert masks.shape == (4, 512, 512) and masks.dtype == np.uint8


def test_swap_mask_is_the_feathered_face_area(swapped):
    masks = swapped[3]
    regions = _regions()
    assert (masks[:, regions["swapped"]] == 255).all()
    assert (masks[:, regions["outside_mask"]] == 0).all()
    assert np.unique(masks).size > 20  # feathered, not binary


def assert_colour_shifted(out, faces, embedding):
    """Inside the face area (away from the mouth) the stand-in's shift for ``embedding`` is present."""
    inside = _regions()["swapped"]
    expected = np.clip(faces.astype(np.float32) + standins.swap_shift(embedding) * 255.0, 0, 255)
    # Two bilinear resamples (512 -> 256 -> 512) blur the face a little: compare means, then pixels loosely.
    np.testing.assert_allclose(out[:, inside].mean(axis=1), expected[:, inside].mean(axis=1), atol=2.0)
    assert np.median(np.abs(out[:, inside].astype(np.float32) - expected[:, inside])) < 6


def test_swap_shifts_colour_inside_and_keeps_mouth_and_outside(swapped):
    faces, embedding, out, _ = swapped
    regions = _regions()
    assert np.abs(standins.swap_shift(embedding)).max() * 255 > 5  # the check would be empty with a tiny shift
    assert_colour_shifted(out, faces, embedding)
    mouth_diff = np.abs(out[:, regions["mouth"]].astype(np.int16) - faces[:, regions["mouth"]])
    assert mouth_diff.max() <= 1  # the original mouth is blended back over the swap
    assert (out[:, regions["outside_swap"]] == faces[:, regions["outside_swap"]]).all()


def test_swap_depends_on_the_source_identity(client, swapped):
    faces, embedding, out, _ = swapped
    other = client.identity(aligned_faces("img03_single_frontal_rose_leslie.jpg", "arcface_112_v2", 112, client))[0]
    out_other, _ = client.swap(faces[:1], other)
    assert_colour_shifted(out_other, faces[:1], other)
    assert np.abs(out_other[0].astype(np.int16) - out[0]).max() > 10


def test_swap_with_one_identity_per_face(client, swapped):
    """Two identities in one call: each face gets the colour shift of its own source embedding."""
    faces, embedding, out, _ = swapped
    other = client.identity(aligned_faces("img03_single_frontal_rose_leslie.jpg", "arcface_112_v2", 112, client))[0]
    per_face = np.stack([embedding, other, other, embedding])
    out_mixed, _ = client.swap(faces, per_face)
    for face, identity in enumerate(per_face):
        assert_colour_shifted(out_mixed[face:face + 1], faces[face:face + 1], identity)
    assert np.abs(standins.swap_shift(other) - standins.swap_shift(embedding)).max() * 255 > 10
    assert (out_mixed[[0, 3]] == out[[0, 3]]).all()  # the same as with that identity for all faces
    with pytest.raises(ValueError, match="3 source embeddings for 4 faces"):
        client.swap(faces, per_face[:3])
