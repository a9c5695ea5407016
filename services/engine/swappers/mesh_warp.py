"""The mesh swap's geometry, pure numpy + OpenCV, in FFHQ-512 aligned-crop space.

A source face (its aligned 512 crop, the *texture*, and its 468-point Face Mesh) is drawn onto a target face's mesh:
every triangle of the source mesh is mapped affinely onto the same triangle of the target mesh, whose inner points
first move part of the way to the source's (``with_source_shape``: the face's proportions are much of who it is).
The triangles are rasterised into one label image (far triangles first, so the near side of a turned head covers the
far side; triangles that face away from the camera in the target are dropped), which gives a dense target -> source
map for a single ``cv2.remap``. The warped face is blurred to the target's sharpness (a small or soft face gets a soft
paste), colour matched to the target's skin (LAB mean and spread, then its shading), and a quarter of its expression
lines give way to the target's. The mask that blends it in is the target's face oval, feathered, with holes where the target
must show through: its mouth (lips and interior: the target's mouth moves and no source lips are pasted), its eyes and
lids (blinks and gaze are the target's; the mesh does not follow blinks), and wherever the source showed hair instead
of skin. All per-pixel work is done inside the face's box, not the crop.
"""
from __future__ import annotations

import cv2
import numpy as np

SIZE = 512       # the FFHQ-512 crop side
POINTS = 468     # Face Mesh landmarks
MAX_TRIANGLES = 2 * POINTS  # a planar triangulation of n points has at most 2n - 5 triangles

# Face Mesh landmark indices (MediaPipe's topology). Rings are in order around their contour.
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148,
             176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
LIPS_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95)
LIPS_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)
EYE_RIGHT = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
EYE_LEFT = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
BROW_RIGHT = (70, 63, 105, 66, 107, 55, 65, 52, 53, 46)
BROW_LEFT = (300, 293, 334, 296, 336, 285, 295, 282, 283, 276)
NOSE = (168, 6, 197, 195, 5, 4, 1, 19, 94, 2, 98, 327, 129, 358, 49, 279)
CHEEK_RIGHT, CHEEK_LEFT, FOREHEAD, CHIN = 234, 454, 10, 152
# Facing points of the upper and lower inner lip and eyelids, corner to corner: closed, each pair meets.
_CLOSING_PAIRS = (
    ((191, 80, 81, 82, 13, 312, 311, 310, 415), (95, 88, 178, 87, 14, 317, 402, 318, 324)),
    ((246, 161, 160, 159, 158, 157, 173), (7, 163, 144, 145, 153, 154, 155)),
    ((466, 388, 387, 386, 385, 384, 398), (249, 390, 373, 374, 380, 381, 382)),
)

# Tuned on the shared media (see the README's mesh swapper section); sizes in 512-crop pixels.
OVAL_INSET = 10         # the blend mask starts this far inside the face oval ...
FEATHER_SIGMA = 7.0     # ... and fades out over about 2.5 sigma
HOLE_GROW = 3           # mouth and eye holes grow by this much (the mesh's inner-lip corners lag wide openings)
HOLE_SIGMA = 2.0
SHADING_SIGMA = 24.0    # the target's shading is matched at scales above this (0: global colour match only)
CONTRAST_RANGE = (0.8, 1.25)  # the colour match may change the source's spread by at most this factor
SKIN_DISTANCE = 3.0     # a source pixel further than this (Mahalanobis, LAB) from its cheeks' skin is not skin
RIM_WIDTH = 8           # hair is what is not skin and reaches this close to the source's face oval
EYE_GROW = 6            # eye holes grow by this much: the target's lids and lashes, so its blinks show
# The target's detail coarser than this (px) replaces CREASE_SHARE of the source's outside the features (grown by
# CREASE_FEATURES px): the source's expression lines (a smile's folds) fade and the target's come through. More
# costs identity: vid01's mean dlib distance 0.49 with none, 0.51 at a quarter, 0.54 at half, 0.61 all (judged the
# source in 10 %); img09 judged the source 3 of 3 at a quarter, 2 of 3 at half.
CREASE_SIGMA = 3.0
CREASE_SHARE = 0.25
CREASE_FEATURES = 6
DETAIL_SIGMA = 1.5      # sharpness is the detail finer than this relative to that finer than 4x it
BLUR_STEPS = (0.7, 1.0, 1.4, 2.0, 2.8, 4.0, 5.6, 8.0, 11.0, 16.0)
_MARGIN = int(3 * FEATHER_SIGMA) + 2
# How far the target mesh's inner points move towards the source's (fitted onto it in 3-D). dlib's judge, mean
# distance to the source (0.6 = same person) on vid01, vid03, img03: 0 -> 0.61, 0.49, 0.62 (vid01 judged the source in
# 10 % of frames); 0.5 -> 0.48, 0.45, 0.53 (100 %). With the target's lips kept (the mask's mouth hole is the outer
# lip ring) the source's mouth can no longer tear, so more of its shape comes through: 0.8 on vid01, vid04, img03,
# img07 0.49, 0.49, 0.55, 0.55 against 0.49, 0.51, 0.53, 0.55 at 0.5.
SOURCE_SHAPE = 0.8
# Points that stay the target's: the outline (no seam, the target's jaw and hair edge) and the eye and lip rings, the
# mask's holes through which the target's eyes and mouth show.
_TARGET_POINTS = np.array(sorted(set(FACE_OVAL + EYE_RIGHT + EYE_LEFT + LIPS_INNER + LIPS_OUTER)))


class Box:
    """The part of the crop one face's per-pixel work is done in: [x0, x0 + w) x [y0, y0 + h) of the crop, worked on
    at ``scale`` (its *work* pixels: sw x sh; 1: the crop's own pixels)."""

    def __init__(self, mesh: np.ndarray, margin: int, scale: float = 1.0):
        low = np.floor(mesh[:, :2].min(axis=0)).astype(int) - margin
        high = np.ceil(mesh[:, :2].max(axis=0)).astype(int) + margin + 1
        self.x0, self.y0 = np.clip(low, 0, SIZE)
        x1, y1 = np.clip(high, 0, SIZE)
        self.w, self.h = max(int(x1 - self.x0), 0), max(int(y1 - self.y0), 0)
        self.scale = scale
        self.sw, self.sh = (self.w, self.h) if scale == 1 else (max(round(self.w * scale), 1),
                                                                 max(round(self.h * scale), 1))

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y0 + self.h), slice(self.x0, self.x0 + self.w)

    def to_work(self, xy: np.ndarray) -> np.ndarray:
        """Crop pixel coordinates -> work pixel coordinates (pixel centres at integers, as ``cv2.resize`` maps)."""
        if self.scale == 1:
            return xy - [self.x0, self.y0]
        return (xy - [self.x0 - 0.5, self.y0 - 0.5]) * [self.sw / self.w, self.sh / self.h] - 0.5

    def points(self, mesh: np.ndarray, ring) -> np.ndarray:
        """The ring's points in work pixels, with 4 fractional bits (OpenCV's ``shift=4``)."""
        return np.round(self.to_work(mesh[list(ring), :2]) * 16).astype(np.int32)

    def fill(self, polygons: list[np.ndarray]) -> np.ndarray:
        image = np.zeros((self.sh, self.sw), np.uint8)
        cv2.fillPoly(image, polygons, 255, lineType=cv2.LINE_AA, shift=4)
        return image

    def shrink(self, image: np.ndarray) -> np.ndarray:
        """The box's part of a crop-sized ``image``, in work pixels."""
        part = image[self.slices]
        return part if self.scale == 1 else cv2.resize(part, (self.sw, self.sh), interpolation=cv2.INTER_AREA)

    def grow(self, image: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
        """A work-pixel ``image`` back at the box's crop pixels."""
        return image if self.scale == 1 else cv2.resize(image, (self.w, self.h), interpolation=interpolation)


WHOLE = Box(np.array([[0, 0], [SIZE - 1, SIZE - 1]], np.float32), 0)


def _disc(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)


def triangulate(mesh: np.ndarray) -> np.ndarray:
    """Triangles over a mesh: [MAX_TRIANGLES, 3] point indices, padded with -1.

    Delaunay over the mesh's x, y with its lips and eyelids closed first, so that no triangle bridges an open mouth
    or eye: the same topology serves a source with an open mouth and a target with a closed one.
    """
    points = np.asarray(mesh, np.float64)[:, :2].copy()
    for upper, lower in _CLOSING_PAIRS:
        middle = (points[list(upper)] + points[list(lower)]) / 2
        points[list(upper)] = middle - [0, 0.05]
        points[list(lower)] = middle + [0, 0.05]
    points = points.astype(np.float32)
    low, high = points.min(axis=0) - 2, points.max(axis=0) + 2
    subdivision = cv2.Subdiv2D((int(low[0]), int(low[1]), int(high[0] - low[0]) + 2, int(high[1] - low[1]) + 2))
    lookup = {}
    for index, point in enumerate(points):
        lookup.setdefault((float(point[0]), float(point[1])), index)
        subdivision.insert((float(point[0]), float(point[1])))
    triangles = []
    for corners in subdivision.getTriangleList().reshape(-1, 3, 2).astype(np.float32):
        found = [lookup.get((float(x), float(y))) for x, y in corners]
        if None not in found:  # triangles touching Subdiv2D's outer helper vertices are not the face's
            triangles.append(found)
    out = np.full((MAX_TRIANGLES, 3), -1, np.int32)
    out[:len(triangles)] = triangles
    return out


def mesh_pose(meshes: np.ndarray) -> np.ndarray:
    """[K,468,3] meshes -> [K,2] (yaw, pitch) in degrees, from the depth difference of the cheeks and of the
    forehead and chin (0, 0: facing the camera). From the mesh alone, in crop space: what the swapper has (the
    engine's ``head_pose`` needs the frame's camera)."""
    meshes = np.asarray(meshes, np.float64).reshape(-1, POINTS, 3)
    across = meshes[:, CHEEK_LEFT] - meshes[:, CHEEK_RIGHT]
    down = meshes[:, CHIN] - meshes[:, FOREHEAD]
    yaw = np.degrees(np.arctan2(across[:, 2], across[:, 0]))
    pitch = np.degrees(np.arctan2(down[:, 2], down[:, 1]))
    return np.stack([yaw, pitch], axis=1).astype(np.float32)


def with_source_shape(target_mesh: np.ndarray, source_mesh: np.ndarray, share: float = SOURCE_SHAPE
                      ) -> np.ndarray:
    """The target mesh with its inner points moved ``share`` of the way to the source mesh fitted onto it in 3-D
    (Umeyama's least-squares similarity over all points: the target's position, size and head pose, the source's
    proportions); its outline, eyes and inner lips stay where they are. In 3-D so that a turned head gets the
    source's face turned the same way, not a frontal one flattened onto it."""
    source = np.asarray(source_mesh, np.float64)
    target = np.asarray(target_mesh, np.float64)
    s, t = source - source.mean(axis=0), target - target.mean(axis=0)
    u, spread, vt = np.linalg.svd(t.T @ s)
    sign = np.array([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])  # a rotation, never a mirror
    rotation = (u * sign) @ vt
    scale = float((spread * sign).sum() / max(float((s * s).sum()), 1e-9))
    fitted = scale * s @ rotation.T + target.mean(axis=0)
    weight = np.full((POINTS, 1), share)
    weight[_TARGET_POINTS] = 0
    return (target + weight * (fitted - target)).astype(np.float32)


def _filled_features(box: Box, mesh: np.ndarray) -> np.ndarray:
    """Eyes, brows, nose and lips of a mesh, filled: what is never cheek or forehead."""
    parts = [cv2.convexHull(box.points(mesh, ring))
             for ring in (EYE_RIGHT, EYE_LEFT, BROW_RIGHT, BROW_LEFT, LIPS_OUTER, NOSE)]
    return box.fill(parts)


def _features(box: Box, mesh: np.ndarray, grow: int) -> np.ndarray:
    """``_filled_features`` grown by ``grow`` px."""
    return cv2.dilate(_filled_features(box, mesh), _disc(grow))


def source_skin(texture: np.ndarray, mesh: np.ndarray) -> np.ndarray:
    """[512,512] uint8: 255 where the source face shows skin or its features, 0 outside its oval and on hair.

    Skin is modelled by the LAB mean and covariance of the oval without its features (the middle half of it by
    lightness, so that hair and shadow do not widen it). Hair comes in from outside: the non-skin patches that
    touch the oval's rim (a fringe, sideburns, a beard's edge) are not pasted; creases and shadows inside are.
    """
    oval = WHOLE.fill([WHOLE.points(mesh, FACE_OVAL)])
    inside = oval > 127
    cheeks = inside & (_features(WHOLE, mesh, 6) == 0)
    lab = cv2.cvtColor(texture, cv2.COLOR_RGB2LAB).astype(np.float32)
    samples = lab[cheeks]
    if len(samples) < 100:
        return oval
    low, high = np.percentile(samples[:, 0], [25, 75])
    core = samples[(samples[:, 0] >= low) & (samples[:, 0] <= high)]
    covariance = np.cov(core, rowvar=False) * 4.0 + np.eye(3) * 4.0  # the middle half understates the spread
    delta = lab - core.mean(axis=0)
    distance = np.sqrt(np.einsum("hwi,ij,hwj->hw", delta, np.linalg.inv(covariance), delta))
    other = cv2.morphologyEx(((distance > SKIN_DISTANCE) & cheeks).astype(np.uint8), cv2.MORPH_OPEN,
                             np.ones((5, 5), np.uint8))
    rim = inside & (cv2.erode(oval, _disc(RIM_WIDTH)) == 0)
    count, labels = cv2.connectedComponents(other, connectivity=8)
    touching = np.unique(labels[rim & (other > 0)])
    hair = np.isin(labels, touching[touching > 0]).astype(np.uint8)
    hair = cv2.dilate(hair, np.ones((5, 5), np.uint8))
    return np.where(hair > 0, 0, oval).astype(np.uint8)


def _signed_area(corners: np.ndarray) -> np.ndarray:
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    return 0.5 * ((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))


def facing_away(source_mesh: np.ndarray, target_mesh: np.ndarray, triangles: np.ndarray) -> float:
    """The share of the source mesh's area whose triangles face away from the camera in the target."""
    triangles = triangles[triangles[:, 0] >= 0]
    src_area = _signed_area(source_mesh[triangles][:, :, :2].astype(np.float64))
    dst_area = _signed_area(target_mesh[triangles][:, :, :2].astype(np.float64))
    away = np.sign(src_area) != np.sign(dst_area)
    return float(np.abs(src_area[away]).sum() / max(np.abs(src_area).sum(), 1e-9))


def warp_map(box: Box, source_mesh: np.ndarray, target_mesh: np.ndarray, triangles: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense map from the box's pixels to source-texture pixels for ``cv2.remap``: (map_x, map_y [h,w] float32,
    -1 where no triangle lands; covered [h,w] bool)."""
    triangles = triangles[triangles[:, 0] >= 0]
    src = source_mesh[triangles][:, :, :2].astype(np.float64)
    dst = box.to_work(target_mesh[triangles][:, :, :2].astype(np.float64))
    src_area, dst_area = _signed_area(src), _signed_area(dst)
    facing = np.sign(src_area) == np.sign(dst_area)
    keep = np.abs(dst_area) > 1e-2
    triangles, src, dst, dst_area, facing = triangles[keep], src[keep], dst[keep], dst_area[keep], facing[keep]
    # The affine taking a triangle's target corners to its source corners, by the adjugate of [x y 1] rows.
    x, y = dst[:, :, 0], dst[:, :, 1]
    cofactor = np.stack([y[:, [1, 2, 0]] - y[:, [2, 0, 1]],
                         x[:, [2, 0, 1]] - x[:, [1, 2, 0]],
                         x[:, [1, 2, 0]] * y[:, [2, 0, 1]] - x[:, [2, 0, 1]] * y[:, [1, 2, 0]]], axis=1)
    affine = np.einsum("tkc,tcd->tkd", cofactor, src) / (2 * dst_area)[:, None, None]  # [T,3(x,y,1),2]
    depth = target_mesh[triangles][:, :, 2].mean(axis=1)
    labels = np.zeros((box.sh, box.sw), np.int32)
    corners = np.round(dst * 16).astype(np.int32)
    # Triangles facing away first (they fill slivers the mesh's noise folded; on a turned head the near side covers
    # them), then far to near, so that a nearer triangle overwrites a farther one.
    order = np.lexsort((-depth, facing))
    for t, points in zip(order.tolist(), corners[order]):
        cv2.fillConvexPoly(labels, points, t + 1, cv2.LINE_8, 4)
    # Label 0 (no triangle) maps every pixel to (-1, -1): outside the texture; so do the triangles facing away that
    # no nearer one covered (on a turned head's far cheek their squeezed texture tears into a sawtooth).
    affine[~facing] = [[0, 0], [0, 0], [-1, -1]]
    coefficients = np.concatenate([[[[0, 0], [0, 0], [-1, -1]]], affine]).astype(np.float32)
    xs = np.arange(box.sw, dtype=np.float32)[None, :]
    ys = np.arange(box.sh, dtype=np.float32)[:, None]
    map_x = coefficients[:, 0, 0][labels] * xs + coefficients[:, 1, 0][labels] * ys + coefficients[:, 2, 0][labels]
    map_y = coefficients[:, 0, 1][labels] * xs + coefficients[:, 1, 1][labels] * ys + coefficients[:, 2, 1][labels]
    return map_x, map_y, np.concatenate([[False], facing])[labels]


def _feather(mask: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian-like blur at a cost independent of ``sigma`` (OpenCV's stack blur)."""
    size = 2 * int(round(3 * sigma)) + 1
    return cv2.stackBlur(mask, (size, size))


def colour_match(warped: np.ndarray, target: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``warped`` with its LAB mean and spread over ``region`` (uint8 mask) moved to ``target``'s over the same
    pixels; the spread ratio is clipped to CONTRAST_RANGE so that a flat or noisy patch cannot blow it up.

    Skin moves all the way; greyer pixels (brows, lashes, stubble) keep their colour in proportion: moved as the
    skin is, a dark brow under a skin tone less yellow than the source's would turn blue."""
    if cv2.countNonZero(region) < 100:
        return warped
    source_lab = cv2.cvtColor(warped, cv2.COLOR_RGB2LAB)
    s_mean, s_std = (v.reshape(3) for v in cv2.meanStdDev(source_lab, mask=region))
    t_mean, t_std = (v.reshape(3) for v in cv2.meanStdDev(cv2.cvtColor(target, cv2.COLOR_RGB2LAB), mask=region))
    ratio = np.clip(t_std / np.maximum(s_std, 1e-3), *CONTRAST_RANGE)
    shift = t_mean - s_mean * ratio
    lightness, a, b = cv2.split(source_lab.astype(np.float32))
    chroma = cv2.magnitude(a - 128, b - 128)
    skin_chroma = max(float(np.hypot(s_mean[1] - 128, s_mean[2] - 128)), 1.0)
    weight = np.clip(chroma * (1 / skin_chroma), 0.5, 1.0)
    a += weight * ((ratio[1] - 1) * a + shift[1])
    b += weight * ((ratio[2] - 1) * b + shift[2])
    matched = cv2.merge([lightness * ratio[0] + shift[0], a, b])
    return cv2.cvtColor(cv2.convertScaleAbs(matched), cv2.COLOR_LAB2RGB)  # all >= 0: only the saturation acts


def _smooth_inside(image: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """Normalised convolution at a quarter of the resolution: the blur of ``image`` over ``weight`` > 0 only,
    extended over the rest (the face's features take their surroundings' value)."""
    h, w = weight.shape
    small = (max(w // 4, 1), max(h // 4, 1))
    weight = cv2.resize(weight, small, interpolation=cv2.INTER_AREA)
    image = cv2.resize(image, small, interpolation=cv2.INTER_AREA).astype(np.float32) * weight[..., None]
    size = 2 * int(round(3 * sigma / 4)) + 1
    blurred = cv2.GaussianBlur(image, (size, size), sigma / 4)
    norm = cv2.GaussianBlur(weight, (size, size), sigma / 4)[..., None]
    return cv2.resize(blurred / np.maximum(norm, 1e-3), (w, h), interpolation=cv2.INTER_LINEAR)


def match_shading(face: np.ndarray, target: np.ndarray, region: np.ndarray, sigma: float = SHADING_SIGMA
                  ) -> np.ndarray:
    """``face`` plus the slowly varying difference between ``target`` and it over the skin ``region``: the
    target's light and its skin tone across the face (forehead to chin), so that no seam is left at the mask's
    edge; features and texture (finer than SHADING_SIGMA) stay the source's."""
    weight = (region > 0).astype(np.float32)
    if weight.sum() < 100:
        return face
    difference = _smooth_inside(target, weight, sigma) - _smooth_inside(face, weight, sigma)
    return cv2.add(face, difference, dtype=cv2.CV_8U)  # rounded and saturated


def _detail(grey: np.ndarray, region: np.ndarray) -> float:
    """Mean absolute fine detail (the image less its blur at DETAIL_SIGMA) over ``region``."""
    fine = cv2.absdiff(grey, _feather(grey, DETAIL_SIGMA))
    coarse = cv2.absdiff(grey, _feather(grey, 4 * DETAIL_SIGMA))
    return float(cv2.mean(fine, mask=region)[0]) / max(float(cv2.mean(coarse, mask=region)[0]), 1e-3)


def match_sharpness(face: np.ndarray, target: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``face`` blurred (the least of BLUR_STEPS) until its fine detail over ``region`` is no more than ``target``'s:
    a small or soft target face (upscaled into the 512 crop) gets a paste as soft as itself, not a sharp photo."""
    if cv2.countNonZero(region) < 100:
        return face
    wanted = _detail(cv2.cvtColor(target, cv2.COLOR_RGB2GRAY).astype(np.float32), region)
    grey = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY).astype(np.float32)
    if _detail(grey, region) <= wanted:
        return face
    # The least step that is soft enough, by bisection: the detail falls as the blur grows.
    low, high = 0, len(BLUR_STEPS) - 1
    while low < high:
        middle = (low + high) // 2
        if _detail(_feather(grey, BLUR_STEPS[middle]), region) <= wanted:
            high = middle
        else:
            low = middle + 1
    return _feather(face, BLUR_STEPS[low])


def transfer_creases(face: np.ndarray, target: np.ndarray, keep: np.ndarray, sigma: float = CREASE_SIGMA
                     ) -> np.ndarray:
    """``face`` with CREASE_SHARE of its detail coarser than CREASE_SIGMA replaced by ``target``'s, less where
    ``keep`` (uint8, 255: the features, which stay the source's)."""
    face32 = face.astype(np.float32)
    difference = cv2.GaussianBlur(target.astype(np.float32) - face32, (0, 0), sigma)  # one blur: it is linear
    weight = (CREASE_SHARE / 255) * (255 - keep.astype(np.float32))[..., None]
    return cv2.convertScaleAbs(face32 + weight * difference)  # all >= 0 after rounding: only the saturation acts


def half_size(image: np.ndarray) -> np.ndarray:
    """A crop-sized texture or skin mask at half its size."""
    return cv2.resize(image, (SIZE // 2, SIZE // 2), interpolation=cv2.INTER_AREA)


def _hole(inside: np.ndarray, grow: int, sigma: float) -> np.ndarray:
    """A hole of the mask: ``inside`` all target, fading out ``grow`` px further."""
    return np.maximum(_feather(cv2.dilate(inside, _disc(grow)), sigma), inside)


def swap_face(target: np.ndarray, target_mesh: np.ndarray, texture: np.ndarray, source_mesh: np.ndarray,
              triangles: np.ndarray, skin: np.ndarray, face: np.ndarray, mask: np.ndarray, keep_eyes: bool = True,
              max_away: float = 1.0, scale: float = 1.0, half: tuple[np.ndarray, np.ndarray] | None = None) -> bool:
    """One face, written over the face's box only: ``face`` (the target's copy, [512,512,3] uint8) and ``mask``
    ([512,512] uint8, zeros) for the engine's blend. False (both left as they are) when more than ``max_away`` of
    the source mesh would face away (a folded profile).

    ``scale`` < 1: the per-pixel work is done at that scale of the crop and the result enlarged back: for a face
    the crop enlarged from a smaller one in its frame, the crop's extra pixels hold no detail the frame will show.
    ``half``: ``texture`` and ``skin`` at half size (``half_size``), if the caller keeps them."""
    box = Box(target_mesh, _MARGIN, scale)
    if box.w < 8 or box.h < 8:
        return False
    if facing_away(source_mesh, target_mesh, triangles) > max_away:  # the target's own turn, before any reshaping
        return False
    map_x, map_y, covered = warp_map(box, source_mesh, with_source_shape(target_mesh, source_mesh), triangles)
    if scale <= 0.5:  # sample a half-size texture: the full one would alias at this minification
        texture, skin = half or (half_size(texture), half_size(skin))
        map_x, map_y = (map_x + 0.5) * 0.5 - 0.5, (map_y + 0.5) * 0.5 - 0.5  # -1 (outside) stays outside
    warped = cv2.remap(texture, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    # Outside the texture (no triangle: -1) the skin is 0, so the mask is 0 there.
    warped_skin = cv2.remap(skin, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    here = box.shrink(target)
    px = (lambda size: size) if scale == 1 else (lambda size: max(1, round(size * scale)))  # a size in work pixels
    oval = box.fill([box.points(target_mesh, FACE_OVAL)])
    solid = np.minimum(oval, warped_skin)
    region = cv2.threshold(solid, 127, 255, cv2.THRESH_BINARY)[1]
    features = _filled_features(box, target_mesh)  # grown by 4 px here, by CREASE_FEATURES for the creases
    region[cv2.dilate(features, _disc(px(4))) > 0] = 0
    inner = cv2.erode(solid, _disc(px(OVAL_INSET)))
    warped = match_sharpness(warped, here, cv2.threshold(inner, 127, 255, cv2.THRESH_BINARY)[1])
    matched = colour_match(warped, here, region)
    if SHADING_SIGMA:
        matched = match_shading(matched, here, region, SHADING_SIGMA * scale)
    base = _feather(inner, FEATHER_SIGMA * scale)
    matched = transfer_creases(matched, here, _feather(cv2.dilate(features, _disc(px(CREASE_FEATURES))),
                                                       CREASE_SIGMA * scale), CREASE_SIGMA * scale)
    hole = _hole(box.fill([box.points(target_mesh, LIPS_OUTER)]), px(HOLE_GROW), HOLE_SIGMA * scale)
    if keep_eyes:
        eyes = box.fill([box.points(target_mesh, EYE_RIGHT), box.points(target_mesh, EYE_LEFT)])
        hole = np.maximum(hole, _hole(eyes, px(EYE_GROW), EYE_GROW / 2 * scale))
    mask[box.slices] = box.grow(cv2.multiply(base, cv2.bitwise_not(hole), scale=1 / 255))
    # ``face`` holds the target: only the covered pixels change
    if scale == 1:
        np.copyto(face[box.slices], matched, where=covered[..., None])
    else:
        covered_here = box.grow(covered.view(np.uint8), cv2.INTER_NEAREST).view(bool)
        np.copyto(face[box.slices], box.grow(np.where(covered[..., None], matched, here)), where=covered_here[..., None])
    return True
