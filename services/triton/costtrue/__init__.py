"""Cost-true stand-ins: the real networks' published architectures with generated weights.

Same I/O contract as the real files (names, shapes, dtypes, value ranges, fixed batch of 1 where the real
export has one), deterministic seeded weights, so that every benchmark measures the real compute. They are
stand-ins (``swapstream.standin`` metadata), marked ``swapstream.standin.kind = cost-true``; the repository
serves them from a weights folder like any file (``ensure_models`` builds and caches that folder).
"""
from __future__ import annotations

from pathlib import Path

import onnx

from swapstream.services.triton.costtrue import arcface, bisenet, gfpgan, simswap
from swapstream.services.triton.model_store import default_models_dir
from swapstream.services.triton.standins import STANDIN_KEY

KIND_KEY = "swapstream.standin.kind"
KIND = "cost-true"
VERSION = "1"  # bump when an architecture or its initialisation changes: the cache is rebuilt
BUILDERS = {"arcface_simswap": arcface.build, "simswap_256": simswap.build, "gfpgan_1.4": gfpgan.build,
            "bisenet": bisenet.build}


def default_dir() -> Path:
    """A folder inside the models cache (the repository reads only the files directly in a weights folder)."""
    return default_models_dir() / f"cost-true-v{VERSION}"


def is_cost_true(path: Path) -> bool:
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not an ONNX file at all
        return False
    return any(p.key == KIND_KEY and p.value == KIND for p in model.metadata_props)


def build(entry, width: float = 1.0) -> onnx.ModelProto:
    model = BUILDERS[entry.key](entry, width=width)
    for key, value in ((STANDIN_KEY, "true"), (KIND_KEY, KIND), ("swapstream.standin.width", str(width))):
        model.metadata_props.add(key=key, value=value)
    return model


def write(manifest: dict, out_dir: Path, names: list[str] | None = None, width: float = 1.0,
          overwrite: bool = True) -> dict[str, Path]:
    """Writes the cost-true model of each of ``names`` (default: all four) under its real file name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for key in names or list(BUILDERS):
        path = out_dir / manifest[key].file
        if overwrite or not path.is_file():
            partial = path.with_name(f".{path.name}.partial")
            onnx.save(build(manifest[key], width), str(partial))
            partial.replace(path)
        written[key] = path
    return written


def ensure_models(manifest: dict, out_dir: Path | None = None) -> Path:
    """The folder of full-size cost-true models, built on first use (about 0.9 GB, a minute) and cached."""
    folder = out_dir or default_dir()
    write(manifest, folder, overwrite=False)
    return folder
