"""The Triton model ``facemesh``: FFHQ-512 face crops in, 468 landmarks in those crops' pixels and a presence out.

One ONNX graph: the crop's fixed window resized to the network's 192 (RGB in [0,1]), the converted network, then
its landmarks mapped back to the 512 crop and its logit turned into a probability.

The window: MediaPipe runs the network on a square 1.5x the face's box, rotated to the eye line, and then again
on the square its first mesh gives. An FFHQ-512 crop is already rotated to the eye line and scaled to the face,
so one fixed square of it stands in for both passes. Measured on 43 real faces of the shared photos and clips
(against the two-pass mesh mapped into each crop, in 512-crop pixels): the whole crop (centre 256,256) 5.1 px
mean; the chosen square (centre 256,304, side 512: the crop lowered by 48 px, black below) 4.5 px mean, 3.5
median, 8.6 at the 95th percentile, within 0.3 px of the best of 245 squares tried; a second pass on it 3.9;
two-pass against three-pass (MediaPipe's own spread) 2.5.
"""
from __future__ import annotations

import onnx
import onnx.compose

from swapstream.services.triton.onnx_graph import Graph

FACE_SIZE = 512                 # FFHQ-512 crops, as the ``swap`` model takes them
NETWORK_SIZE = 192
WINDOW = (0, 48, 512)           # x0, y0 (top-left edge, crop pixels) and side of the square the network sees
LANDMARKS = 468
NETWORK_INPUT = "input_1"
NETWORK_LANDMARKS, NETWORK_LOGIT = "conv2d_20", "conv2d_30"


def _preprocess(g: Graph, faces: str) -> str:
    """FACES uint8 [K,512,512,3] -> the window at 192x192, RGB in [0,1], NHWC."""
    x0, y0, side = WINDOW
    before = [max(0, -y0), max(0, -x0)]
    after = [max(0, y0 + side - FACE_SIZE), max(0, x0 + side - FACE_SIZE)]
    padded = g.op("Pad", faces, g.const([0, *before, 0, 0, *after, 0], "int64")) if any(before + after) else faces
    top, left = y0 + before[0], x0 + before[1]
    window = g.op("Slice", padded, g.const([top, left], "int64"), g.const([top + side, left + side], "int64"),
                  g.const([1, 2], "int64"))
    # Bilinear without antialiasing, as MediaPipe's own crop (an affine warp) is; in float, so that nothing is
    # rounded before the network.
    sizes = g.op("Concat", g.dim(faces, 0), g.const([NETWORK_SIZE, NETWORK_SIZE, 3], "int64"), axis=0)
    small = g.op("Resize", g.cast(window, "float32"), "", "", sizes, mode="linear",
                 coordinate_transformation_mode="half_pixel")
    return g.mul(small, g.const(1 / 255))


def _postprocess(g: Graph, raw_landmarks: str, logit: str) -> None:
    """Network outputs -> LANDMARKS [K,468,3] in 512-crop pixels (pixel centres at integers, as every landmark
    of the project), PRESENCE [K] in 0..1."""
    x0, y0, side = WINDOW
    scale = side / NETWORK_SIZE
    points = g.op("Reshape", raw_landmarks, g.const([-1, LANDMARKS, 3], "int64"))
    # The network's x, y count from the crop's top-left edge: the edge of pixel 0 is -0.5 in pixel coordinates.
    offset = g.const([x0 - 0.5, y0 - 0.5, 0.0])
    g.output(g.add(g.mul(points, g.const([scale, scale, scale])), offset), "LANDMARKS", "float32",
             ["K", LANDMARKS, 3])
    g.output(g.op("Sigmoid", g.op("Reshape", logit, g.const([-1], "int64"))), "PRESENCE", "float32", ["K"])


def model(network: onnx.ModelProto) -> onnx.ModelProto:
    """The served ``facemesh`` graph: pre-processing, the converted ``network`` (inlined), post-processing."""
    network = onnx.compose.add_prefix(network, "network/")
    g = Graph("facemesh")
    faces = g.input("FACES", "uint8", ["K", FACE_SIZE, FACE_SIZE, 3])
    g.op("Identity", _preprocess(g, faces), out=f"network/{NETWORK_INPUT}")
    g.nodes.extend(network.graph.node)
    g.initializers.extend(network.graph.initializer)
    _postprocess(g, f"network/{NETWORK_LANDMARKS}", f"network/{NETWORK_LOGIT}")
    return g.model("swapstream facemesh: FFHQ-512 crops -> 468 landmarks in crop pixels, face presence",
                   {p.key: p.value for p in network.metadata_props})
