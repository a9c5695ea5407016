"""The glue steps of the ensembles, written as small ONNX graphs so they run wherever the networks run.

Each builder returns an ``onnx.ModelProto`` whose input and output names are the ones its
``model_repository/<name>/config.pbtxt`` declares. Normalisations come from the model manifest
(``services/model_manifest.yaml``), so a real network and its stand-in are fed the same way.
"""
from __future__ import annotations

import numpy as np
import onnx

from swapstream.pipelines.templates import estimate_similarity, template_points
from onnx import version_converter

from swapstream.services.triton.onnx_graph import IR_VERSION, OPSET, Graph, fold

DETECT_SIZE = 640
SCORE_THRESHOLD = 0.6
NMS_THRESHOLD = 0.3
YUNET_STRIDES = (8, 16, 32)
MAX_FACES_PER_IMAGE = 1000

FACE_SIZE = 512        # aligned faces enter and leave ``swap`` at FFHQ-512
SWAP_SIZE = 256        # SimSwap works at 256 in its own template (ArcFace-112 scaled)
FEATHER_PX = 8         # blur radius of the face-area mask at 512
MOUTH_FEATHER_PX = 4
COVERAGE_FEATHER_PX = 12

# BiSeNet face-parsing classes (CelebAMask-HQ order, as facefusion's face masker uses them).
PARSER_CLASSES = ["background", "skin", "left-eyebrow", "right-eyebrow", "left-eye", "right-eye", "glasses",
                  "left-ear", "right-ear", "earring", "nose", "mouth", "upper-lip", "lower-lip", "neck",
                  "necklace", "cloth", "hair", "hat"]
FACE_AREA_CLASSES = ["skin", "left-eyebrow", "right-eyebrow", "left-eye", "right-eye", "glasses", "nose",
                     "mouth", "upper-lip", "lower-lip"]
MOUTH_CLASSES = ["mouth"]  # the inside of the mouth: teeth and tongue come from the original face


def _nchw(g: Graph, faces_nhwc_uint8: str) -> str:
    """uint8 [K,H,W,3] RGB -> float [K,3,H,W] RGB 0..255."""
    return g.op("Transpose", g.cast(faces_nhwc_uint8, "float32"), perm=[0, 3, 1, 2])


def _normalise(g: Graph, rgb_255: str, spec) -> str:
    """float [K,3,H,W] RGB 0..255 -> what the network ``spec`` (a manifest entry) expects."""
    x = rgb_255
    if spec.color == "BGR":
        x = g.op("Gather", x, g.const([2, 1, 0], "int64"), axis=1)
    x = g.mul(x, g.const(spec.scale))
    x = g.sub(x, g.const(np.reshape(spec.mean, (1, 3, 1, 1))))
    return g.div(x, g.const(np.reshape(spec.std, (1, 3, 1, 1))))


def _to_255(g: Graph, x: str, output_range: str) -> str:
    """A network's image output ([0,1] or [-1,1]) -> float 0..255."""
    if output_range == "[-1,1]":
        x = g.mul(g.add(g.op("Clip", x, g.const(-1.0), g.const(1.0)), g.const(1.0)), g.const(127.5))
    elif output_range == "[0,1]":
        x = g.mul(g.op("Clip", x, g.const(0.0), g.const(1.0)), g.const(255.0))
    else:
        raise ValueError(f"unsupported image output range {output_range!r}")
    return x


def _to_uint8(g: Graph, x: str) -> str:
    return g.cast(g.op("Clip", g.op("Round", x), g.const(0.0), g.const(255.0)), "uint8")


def _blur(g: Graph, mask: str, radius: int) -> str:
    """Separable Gaussian blur of a [K,1,H,W] mask (sigma = radius / 2)."""
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (taps / (radius / 2.0)) ** 2)
    kernel /= kernel.sum()
    horizontal = g.op("Conv", mask, g.const(kernel.reshape(1, 1, 1, -1)), pads=[0, radius, 0, radius])
    return g.op("Conv", horizontal, g.const(kernel.reshape(1, 1, -1, 1)), pads=[radius, 0, radius, 0])


def _expand_to_items(g: Graph, constant: np.ndarray, like: str) -> str:
    """Broadcast a constant with leading dimension 1 to the item count (dim 0) of ``like``."""
    shape = g.op("Concat", g.dim(like, 0), g.const(constant.shape[1:], "int64"), axis=0)
    return g.op("Expand", g.const(constant), shape)


# ---------------------------------------------------------------------------------------------- detect

def detect_preprocess() -> "onnx.ModelProto":
    """IMAGES uint8 [N,H,W,3] RGB -> YuNet input (BGR 0..255, longest side DETECT_SIZE, padded to /32)."""
    g = Graph("detect_preprocess")
    images = g.input("IMAGES", "uint8", ["N", "H", "W", 3])
    size = g.input("DETECT_SIZE", "int32", [1], default=[DETECT_SIZE])
    given_sizes = g.input("IMAGE_SIZES", "int32", ["M", 2], default=np.zeros((0, 2)))

    n, h, w = (g.dim(images, axis) for axis in (0, 1, 2))
    hf, wf = g.cast(h, "float32"), g.cast(w, "float32")
    scale = g.div(g.cast(size, "float32"), g.op("Max", hf, wf))
    new_h = g.cast(g.op("Round", g.mul(hf, scale)), "int64")
    new_w = g.cast(g.op("Round", g.mul(wf, scale)), "int64")

    # Resize the uint8 frames first (half_pixel linear without antialiasing is cv2.resize INTER_LINEAR),
    # then convert only the small result.
    sizes = g.op("Concat", n, new_h, new_w, g.const([3], "int64"), axis=0)
    small = g.op("Resize", images, "", "", sizes, mode="linear", coordinate_transformation_mode="half_pixel")
    resized = g.op("Gather", _nchw(g, small), g.const([2, 1, 0], "int64"), axis=1)  # RGB -> BGR
    thirty_two = g.const([32], "int64")
    pad_h = g.op("Mod", g.sub(thirty_two, g.op("Mod", new_h, thirty_two)), thirty_two)
    pad_w = g.op("Mod", g.sub(thirty_two, g.op("Mod", new_w, thirty_two)), thirty_two)
    pads = g.op("Concat", g.const([0, 0, 0, 0, 0, 0], "int64"), pad_h, pad_w, axis=0)
    g.output(g.op("Pad", resized, pads), "DETECTOR_INPUT", "float32", ["N", 3, "Hp", "Wp"])
    g.output(g.op("Concat", g.add(new_h, pad_h), g.add(new_w, pad_w), axis=0), "PADDED_SIZE", "int64", [2])
    g.output(g.op("Concat", g.div(g.cast(new_w, "float32"), wf), g.div(g.cast(new_h, "float32"), hf), axis=0),
             "SCALE", "float32", [2])

    # Each image's own (h, w): the rows given in IMAGE_SIZES, else the whole padded batch size.
    whole = g.op("Expand", g.op("Unsqueeze", g.op("Concat", hf, wf, axis=0), g.const([0], "int64")),
                 g.op("Concat", n, g.const([2], "int64"), axis=0))
    stacked = g.op("Concat", g.cast(given_sizes, "float32"), whole, axis=0)
    g.output(g.op("Slice", stacked, g.const([0], "int64"), n, g.const([0], "int64")),
             "VALID_SIZES", "float32", ["N", 2])
    return g.model("swapstream detect pre-processing")


def _decode_stride(g: Graph, stride: int, padded_size: str):
    """Boxes [N,A,4] (x1,y1,x2,y2), scores [N,A], landmarks [N,A,5,2] of one YuNet stride."""
    s = g.const(float(stride))
    rows = g.op("Div", g.op("Slice", padded_size, g.const([0], "int64"), g.const([1], "int64")),
                g.const([stride], "int64"))
    cols = g.op("Div", g.op("Slice", padded_size, g.const([1], "int64"), g.const([2], "int64")),
                g.const([stride], "int64"))
    count = g.op("Squeeze", g.mul(rows, cols), g.const([0], "int64"))
    index = g.op("Range", g.const(0, "int64"), count, g.const(1, "int64"))
    col = g.cast(g.op("Mod", index, cols), "float32")
    row = g.cast(g.div(index, cols), "float32")

    squeeze_last = g.const([2], "int64")
    cls = g.op("Clip", g.op("Squeeze", f"cls_{stride}", squeeze_last), g.const(0.0), g.const(1.0))
    obj = g.op("Clip", g.op("Squeeze", f"obj_{stride}", squeeze_last), g.const(0.0), g.const(1.0))
    scores = g.op("Sqrt", g.mul(cls, obj))

    b0, b1, b2, b3 = g.op("Split", f"bbox_{stride}", axis=2, num_outputs=4, n_out=4)
    cx = g.mul(g.add(g.op("Squeeze", b0, squeeze_last), col), s)
    cy = g.mul(g.add(g.op("Squeeze", b1, squeeze_last), row), s)
    half_w = g.mul(g.op("Exp", g.op("Squeeze", b2, squeeze_last)), g.const(stride / 2.0))
    half_h = g.mul(g.op("Exp", g.op("Squeeze", b3, squeeze_last)), g.const(stride / 2.0))
    corners = [g.sub(cx, half_w), g.sub(cy, half_h), g.add(cx, half_w), g.add(cy, half_h)]
    boxes = g.op("Concat", *[g.op("Unsqueeze", c, squeeze_last) for c in corners], axis=2)

    grid = g.op("Unsqueeze", g.op("Concat", *[g.op("Unsqueeze", v, g.const([1], "int64")) for v in (col, row)],
                                  axis=1), g.const([0, 2], "int64"))  # [1,A,1,2]
    kps = g.op("Reshape", f"kps_{stride}", g.const([0, 0, 5, 2], "int64"))
    landmarks = g.mul(g.add(kps, grid), s)
    return boxes, scores, landmarks


def detect_postprocess() -> "onnx.ModelProto":
    """YuNet's 12 outputs -> BOXES, SCORES, LANDMARKS, FRAME_INDEX after threshold and per-image NMS."""
    g = Graph("detect_postprocess")
    for kind, width in (("cls", 1), ("obj", 1), ("bbox", 4), ("kps", 10)):
        for stride in YUNET_STRIDES:
            g.input(f"{kind}_{stride}", "float32", ["N", f"A{stride}", width])
    padded_size = g.input("PADDED_SIZE", "int64", [2])
    scale = g.input("SCALE", "float32", [2])
    valid_sizes = g.input("VALID_SIZES", "float32", ["N", 2])
    score_threshold = g.input("SCORE_THRESHOLD", "float32", [1], default=[SCORE_THRESHOLD])
    nms_threshold = g.input("NMS_THRESHOLD", "float32", [1], default=[NMS_THRESHOLD])

    parts = [_decode_stride(g, stride, padded_size) for stride in YUNET_STRIDES]
    boxes = g.div(g.op("Concat", *[p[0] for p in parts], axis=1), g.op("Concat", scale, scale, axis=0))
    scores = g.op("Concat", *[p[1] for p in parts], axis=1)
    landmarks = g.div(g.op("Concat", *[p[2] for p in parts], axis=1), scale)

    # Drop faces whose centre lies outside the image's own area (the caller's padding).
    x1, y1, x2, y2 = g.op("Split", boxes, axis=2, num_outputs=4, n_out=4)
    centre_x = g.op("Squeeze", g.mul(g.add(x1, x2), g.const(0.5)), g.const([2], "int64"))
    centre_y = g.op("Squeeze", g.mul(g.add(y1, y2), g.const(0.5)), g.const([2], "int64"))
    valid_h, valid_w = g.op("Split", valid_sizes, axis=1, num_outputs=2, n_out=2)
    inside = g.op("And", g.op("Less", centre_x, valid_w), g.op("Less", centre_y, valid_h))
    scores = g.op("Where", inside, scores, g.const(0.0))

    selected = g.op("NonMaxSuppression", boxes, g.op("Unsqueeze", scores, g.const([1], "int64")),
                    g.const([MAX_FACES_PER_IMAGE], "int64"), nms_threshold, score_threshold)
    image = g.op("Gather", selected, g.const(0, "int64"), axis=1)
    anchor = g.op("Gather", selected, g.const(2, "int64"), axis=1)
    flat = g.add(g.mul(image, g.dim(scores, 1)), anchor)
    g.output(g.op("Gather", g.op("Reshape", boxes, g.const([-1, 4], "int64")), flat, axis=0),
             "BOXES", "float32", ["K", 4])
    g.output(g.op("Gather", g.op("Reshape", scores, g.const([-1], "int64")), flat, axis=0),
             "SCORES", "float32", ["K"])
    g.output(g.op("Gather", g.op("Reshape", landmarks, g.const([-1, 5, 2], "int64")), flat, axis=0),
             "LANDMARKS", "float32", ["K", 5, 2])
    g.output(g.cast(image, "int32"), "FRAME_INDEX", "int32", ["K"])
    return g.model("swapstream detect post-processing: YuNet decoding, threshold, NMS")


DETECT_PASSED_ON = ("PADDED_SIZE", "SCALE", "VALID_SIZES")  # from pre- to post-processing, around the network


def detect_folded(yunet: onnx.ModelProto) -> "onnx.ModelProto":
    """The whole ``detect``: ``detect_preprocess``, YuNet and ``detect_postprocess`` as one graph, one run.

    As an ensemble of three, each step ran in its own Python-backend process here, and the float32 detector input
    (47 MB for 16 frames at 640) and YuNet's outputs were copied between them. The same operations in one graph
    give the same detections (tests/triton/test_detect.py)."""
    network = version_converter.convert_version(yunet, OPSET)
    network.ir_version = IR_VERSION
    (network_input,) = network.graph.input
    with_input = fold(detect_preprocess(), network, [("DETECTOR_INPUT", network_input.name)],
                      keep=DETECT_PASSED_ON, prefixes=("pre/", "yunet/"))
    links = [(v.name, v.name) for v in network.graph.output] + [(name, name) for name in DETECT_PASSED_ON]
    return fold(with_input, detect_postprocess(), links, prefixes=("", "post/"))


# -------------------------------------------------------------------------------------------- identity

def identity_preprocess(arcface) -> "onnx.ModelProto":
    g = Graph("identity_preprocess")
    faces = g.input("FACES", "uint8", ["K", arcface.size, arcface.size, 3])
    g.output(_normalise(g, _nchw(g, faces), arcface), "FACES_NORMALISED", "float32",
             ["K", 3, arcface.size, arcface.size])
    return g.model("swapstream identity pre-processing")


def identity_postprocess() -> "onnx.ModelProto":
    g = Graph("identity_postprocess")
    raw = g.input("EMBEDDING_RAW", "float32", ["K", 512])
    norm = g.op("Max", g.op("ReduceL2", raw, g.const([1], "int64"), keepdims=1), g.const(1e-12))
    g.output(g.div(raw, norm), "EMBEDDING", "float32", ["K", 512])
    return g.model("swapstream identity post-processing: L2 normalisation")


# ------------------------------------------------------------------------------------------------ swap

def swap_matrix(swapper) -> np.ndarray:
    """2x3 similarity from FFHQ-512 crop pixels to the swapper's own crop (e.g. ArcFace-112 at 256)."""
    return estimate_similarity(template_points("ffhq_512", FACE_SIZE), template_points(swapper.template, swapper.size))


def _sampling_grid(matrix_out_to_in: np.ndarray, out_size: int, in_size: int) -> np.ndarray:
    """GridSample grid [1,out,out,2] (align_corners=0) reading pixel M·(x,y) of the input for each output pixel."""
    ys, xs = np.mgrid[0:out_size, 0:out_size].astype(np.float64)
    points = np.stack([xs, ys, np.ones_like(xs)], axis=-1) @ matrix_out_to_in.T
    return ((2.0 * points + 1.0) / in_size - 1.0)[None].astype(np.float32)


def _invert(matrix: np.ndarray) -> np.ndarray:
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def swap_coverage(swapper) -> np.ndarray:
    """[1,1,512,512] weight of the swapper's crop in FFHQ-512: 1 inside, falling to 0 at its border."""
    points = _sampling_grid(swap_matrix(swapper), FACE_SIZE, swapper.size)[0]
    pixels = (points + 1.0) * swapper.size / 2.0  # distance in swapper pixels from the crop's edges
    distance = np.minimum(pixels, swapper.size - pixels).min(axis=-1)
    return np.clip(distance / COVERAGE_FEATHER_PX, 0.0, 1.0)[None, None].astype(np.float32)


def swap_preprocess(swapper, parser) -> "onnx.ModelProto":
    """FACES (FFHQ-512) + SOURCE_EMBEDDING -> the parser's input and the swapper's inputs (one resample).

    SOURCE_EMBEDDING is [K,512], one identity per face, or [1,512]: the same identity for all K (broadcast).
    """
    g = Graph("swap_preprocess")
    faces = g.input("FACES", "uint8", ["K", FACE_SIZE, FACE_SIZE, 3])
    embedding = g.input("SOURCE_EMBEDDING", "float32", ["E", 512])
    rgb = _nchw(g, faces)
    g.output(_normalise(g, rgb, parser), "PARSER_INPUT", "float32", ["K", 3, FACE_SIZE, FACE_SIZE])

    grid = _sampling_grid(_invert(swap_matrix(swapper)), swapper.size, FACE_SIZE)
    crop = g.op("GridSample", rgb, _expand_to_items(g, grid, faces), mode="linear", padding_mode="zeros",
                align_corners=0)
    g.output(_normalise(g, crop, swapper), "SWAPPER_TARGET", "float32", ["K", 3, swapper.size, swapper.size])
    source = g.op("Expand", embedding, g.op("Concat", g.dim(faces, 0), g.const([512], "int64"), axis=0))
    g.output(source, "SWAPPER_SOURCE", "float32", ["K", 512])
    return g.model("swapstream swap pre-processing")


def _class_table(names: list[str]) -> np.ndarray:
    return np.array([1.0 if c in names else 0.0 for c in PARSER_CLASSES], dtype=np.float32)


PARSER_LABELS = "labels"


def with_parser_labels(parser: onnx.ModelProto) -> onnx.ModelProto:
    """The face parser with its argmax inside: uint8 class labels [K,H,W] instead of 19 float32 score planes.

    The scores are 76x larger (20 MB per face at 512). Passed between ensemble steps they cost more than the
    network itself: 65 ms per face through the embedded Python backend, against 1.7 ms for the whole parser.
    """
    model = onnx.ModelProto()
    model.CopyFrom(parser)
    graph = model.graph
    (scores,) = graph.output
    dims = scores.type.tensor_type.shape.dim
    batch = dims[0].dim_param or dims[0].dim_value
    graph.node.extend([
        onnx.helper.make_node("ArgMax", [scores.name], ["swapstream_label_index"], axis=1, keepdims=0),
        onnx.helper.make_node("Cast", ["swapstream_label_index"], [PARSER_LABELS], to=onnx.TensorProto.UINT8),
    ])
    del graph.output[:]
    graph.output.append(onnx.helper.make_tensor_value_info(
        PARSER_LABELS, onnx.TensorProto.UINT8, [batch, dims[2].dim_value, dims[3].dim_value]))
    return model


def swap_merge(swapper, restorer) -> "onnx.ModelProto":
    """Swapped 256 crop back into the 512 face, original mouth over it; the restorer's input and MASKS."""
    g = Graph("swap_merge")
    faces = g.input("FACES", "uint8", ["K", FACE_SIZE, FACE_SIZE, 3])
    swapped = g.input("SWAPPED", "float32", ["K", 3, swapper.size, swapper.size])
    parser_labels = g.input("LABELS", "uint8", ["K", FACE_SIZE, FACE_SIZE])
    original = _nchw(g, faces)

    grid = _sampling_grid(swap_matrix(swapper), FACE_SIZE, swapper.size)
    swapped_512 = g.op("GridSample", _to_255(g, swapped, swapper.output_range), _expand_to_items(g, grid, faces),
                       mode="linear", padding_mode="border", align_corners=0)
    coverage = g.const(swap_coverage(swapper))
    merged = g.add(g.mul(original, g.sub(g.const(1.0), coverage)), g.mul(swapped_512, coverage))

    labels = g.op("Unsqueeze", g.op("Cast", parser_labels, to=onnx.TensorProto.INT64), g.const([1], "int64"))
    mouth = _blur(g, g.op("Gather", g.const(_class_table(MOUTH_CLASSES)), labels, axis=0), MOUTH_FEATHER_PX)
    merged = g.add(g.mul(merged, g.sub(g.const(1.0), mouth)), g.mul(original, mouth))
    g.output(_normalise(g, merged, restorer), "RESTORER_INPUT", "float32", ["K", 3, FACE_SIZE, FACE_SIZE])

    face_area = _blur(g, g.op("Gather", g.const(_class_table(FACE_AREA_CLASSES)), labels, axis=0), FEATHER_PX)
    mask = g.op("Squeeze", g.mul(face_area, coverage), g.const([1], "int64"))
    g.output(_to_uint8(g, g.mul(mask, g.const(255.0))), "MASKS", "uint8", ["K", FACE_SIZE, FACE_SIZE])
    return g.model("swapstream swap merge: back to 512, mouth blend, face-area mask")


def swap_postprocess(restorer) -> "onnx.ModelProto":
    g = Graph("swap_postprocess")
    restored = g.input("RESTORED", "float32", ["K", 3, FACE_SIZE, FACE_SIZE])
    rgb = _to_uint8(g, _to_255(g, restored, restorer.output_range))
    g.output(g.op("Transpose", rgb, perm=[0, 2, 3, 1]), "FACES_OUT", "uint8", ["K", FACE_SIZE, FACE_SIZE, 3])
    return g.model("swapstream swap post-processing")
