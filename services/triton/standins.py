"""Stand-in networks: tiny, deterministic ONNX models with the real models' I/O contracts.

Each has a documented behaviour that a test can check end to end:

- ``arcface_simswap``: raw embedding = P_id · (the 112x112 input average-pooled to 8x8 per channel), with
  a fixed seeded matrix P_id [192, 512]; different faces give different embeddings.
- ``simswap_256``: output = clip(target de-normalised to [0,1] + 0.25·tanh(source · P_swap), 0, 1) per face, with a
  fixed seeded matrix P_swap [512, 3]: a colour shift per channel derived from the identity embedding.
- ``gfpgan_1.4``: the identity (returns its input).
- ``bisenet``: ignores the pixels; in FFHQ-512 template coordinates it labels an ellipse of skin
  (centre ``SKIN_CENTRE``, semi-axes ``SKIN_AXES``), a mouth box ``MOUTH_BOX`` inside it, background elsewhere.

Every stand-in carries the metadata ``swapstream.standin = true`` so the repository builder can tell it
from a real file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from swapstream.services.triton.onnx_graph import Graph

STANDIN_KEY = "swapstream.standin"
SEED = 20261121
SWAP_SHIFT = 0.25
SKIN_CENTRE = (256.0, 300.0)   # (x, y) in the FFHQ-512 crop
SKIN_AXES = (150.0, 200.0)
MOUTH_BOX = (200, 345, 312, 400)  # x1, y1, x2, y2: around the template's mouth corners at y ~ 371


def identity_projection() -> np.ndarray:
    return np.random.default_rng(SEED).standard_normal((192, 512)).astype(np.float32)


def swap_projection() -> np.ndarray:
    return np.random.default_rng(SEED + 1).standard_normal((512, 3)).astype(np.float32)


def swap_shift(embedding: np.ndarray) -> np.ndarray:
    """The per-channel colour shift (in [0,1] units) the swap stand-in applies for ``embedding``."""
    return SWAP_SHIFT * np.tanh(np.asarray(embedding, np.float32) @ swap_projection())


def parser_labels(size: int = 512) -> np.ndarray:
    """The [size,size] class map the parser stand-in produces (1 skin, 11 mouth, 0 background)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    skin = ((xs - SKIN_CENTRE[0]) / SKIN_AXES[0]) ** 2 + ((ys - SKIN_CENTRE[1]) / SKIN_AXES[1]) ** 2 <= 1.0
    x1, y1, x2, y2 = MOUTH_BOX
    mouth = (xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)
    return np.where(mouth, 11, np.where(skin, 1, 0)).astype(np.int64)


def _dims(shape) -> list:
    """The manifest's shape with a dynamic first dimension named K (a fixed batch of 1 stays fixed)."""
    return ["K" if shape[0] == -1 else shape[0]] + list(shape[1:])


def _io(entry, which: str, index: int = 0):
    spec = getattr(entry, which)[index]
    return spec.name, _dims(spec.shape)


def _arcface(entry) -> onnx.ModelProto:
    g = Graph("arcface_standin")
    name, shape = _io(entry, "inputs")
    x = g.input(name, "float32", shape)
    pooled = g.op("AveragePool", x, kernel_shape=[14, 14], strides=[14, 14])  # [K,3,8,8]
    flat = g.op("Flatten", pooled, axis=1)
    out, _ = _io(entry, "outputs")
    g.output(g.op("MatMul", flat, g.const(identity_projection())), out, "float32", [shape[0], 512])
    return g.model("stand-in for the SimSwap ArcFace", {STANDIN_KEY: "true"})


def _simswap(entry) -> onnx.ModelProto:
    g = Graph("simswap_standin")
    target_spec = next(spec for spec in entry.inputs if len(spec.shape) == 4)
    source_spec = next(spec for spec in entry.inputs if len(spec.shape) == 2)
    target = g.input(target_spec.name, "float32", _dims(target_spec.shape))
    source = g.input(source_spec.name, "float32", _dims(source_spec.shape))
    rgb = g.add(g.mul(target, g.const(np.reshape(entry.std, (1, 3, 1, 1)))),
                g.const(np.reshape(entry.mean, (1, 3, 1, 1))))
    if entry.color == "BGR":
        rgb = g.op("Gather", rgb, g.const([2, 1, 0], "int64"), axis=1)
    shift = g.mul(g.op("Tanh", g.op("MatMul", source, g.const(swap_projection()))), g.const(SWAP_SHIFT))
    shifted = g.add(rgb, g.op("Unsqueeze", shift, g.const([2, 3], "int64")))
    out, shape = _io(entry, "outputs")
    g.output(g.op("Clip", shifted, g.const(0.0), g.const(1.0)), out, "float32", shape)
    return g.model("stand-in for SimSwap: colour shift from the identity", {STANDIN_KEY: "true"})


def _gfpgan(entry) -> onnx.ModelProto:
    g = Graph("gfpgan_standin")
    name, shape = _io(entry, "inputs")
    x = g.input(name, "float32", shape)
    out, _ = _io(entry, "outputs")
    g.output(x, out, "float32", shape)
    return g.model("stand-in for GFPGAN: the identity", {STANDIN_KEY: "true"})


def _bisenet(entry) -> onnx.ModelProto:
    g = Graph("bisenet_standin")
    name, shape = _io(entry, "inputs")
    x = g.input(name, "float32", shape)
    size = shape[-1]
    labels = parser_labels(size)
    # A constant [1,19,S,S] would make the file 20 MB; keep the class map and one-hot it in-graph.
    onehot = g.op("OneHot", g.const(labels, "int64"), g.const([19], "int64"), g.const([0.0, 1.0]), axis=0)
    background_bias = np.eye(19, dtype=np.float32)[0].reshape(19, 1, 1)  # ties never leave a pixel unlabelled
    scores = g.add(g.mul(onehot, g.const(4.0)), g.const(background_bias))
    out, _ = _io(entry, "outputs")
    shape_k = g.op("Concat", g.dim(x, 0), g.const([1, 1, 1], "int64"), axis=0)
    g.output(g.op("Tile", g.op("Unsqueeze", scores, g.const([0], "int64")), shape_k), out, "float32",
             [shape[0], 19, size, size])
    return g.model("stand-in for BiSeNet: skin ellipse and mouth box", {STANDIN_KEY: "true"})


BUILDERS = {"arcface_simswap": _arcface, "simswap_256": _simswap, "gfpgan_1.4": _gfpgan, "bisenet": _bisenet}


def is_standin(path: Path) -> bool:
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not an ONNX file at all
        return False
    return any(p.key == STANDIN_KEY and p.value == "true" for p in model.metadata_props)


def write_standins(manifest: dict, out_dir: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Writes the stand-in of each model in ``names`` (default: all that have one) under its real file name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for key in names or list(BUILDERS):
        path = out_dir / manifest[key].file
        onnx.save(BUILDERS[key](manifest[key]), str(path))
        written[key] = path
    return written
