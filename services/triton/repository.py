"""Assembles a runnable Triton model repository from ``model_repository/`` and the weights on disk.

``model_repository/`` in git holds only the configs. Building a runtime repository puts a
``1/model.onnx`` beside each config: the real weights where a verified file is found in a models
folder, else the stand-in; the glue graphs built from the manifest; nothing for the ensembles.
The result runs in the embedded server and, built with ``link="copy"``, in NVIDIA's container.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import onnx

from swapstream.services.triton import batching, costtrue, facemesh, glue, standins
from swapstream.services.triton.model_store import ModelEntry, ModelVerificationError, default_models_dir, load_manifest, verify
from swapstream.services.triton.server import EmbeddedTriton

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_REPOSITORY = PROJECT_ROOT / "model_repository"

# Triton model folder -> manifest key of the network it serves.
NETWORKS = {"yunet": "yunet", "arcface": "arcface_simswap", "simswap": "simswap_256", "gfpgan": "gfpgan_1.4",
            "bisenet": "bisenet"}
# Networks served with a reduction appended to their graph (``model.onnx`` is then written, never linked).
REDUCED = {"bisenet": glue.with_parser_labels}
# Models built from a network with its glue folded into its graph: folder -> (network folder, builder).
FOLDED = {"detect": ("yunet", glue.detect_folded)}
# Networks converted from a file inside an installed wheel when the repository is built (cached): folder -> builder.
CONVERTED = {"facemesh": facemesh.build}
REQUIRED_REAL = {"yunet"}  # a detector stand-in would find no faces: the real YuNet is small and in shared/


def shared_dir() -> Path:
    """``$SWAPSTREAM_SHARED``, else the ``shared`` folder beside the checkout."""
    env = os.environ.get("SWAPSTREAM_SHARED")
    return Path(env) if env else PROJECT_ROOT.parent / "shared"


def default_weight_dirs() -> list[Path]:
    return [default_models_dir(), shared_dir() / "models"]


COST_TRUE = "cost-true"


def weight_dirs_for(models: str | Path | None) -> list[Path]:
    """The weights folders a ``--models`` value means: a folder; ``cost-true``: the cost-true stand-ins (built
    and cached on first use), then the default folders (for the real YuNet); nothing: the default folders."""
    if models is None:
        return default_weight_dirs()
    if str(models) == COST_TRUE:
        return [costtrue.ensure_models(load_manifest()), *default_weight_dirs()]
    return [Path(models)]


@dataclass(frozen=True)
class ModelSource:
    model: str
    kind: str          # "real", "stand-in", "cost-true" (a stand-in with the real architecture), "converted",
                       # "glue", "folded" (a network with its glue in one graph) or "ensemble"
    detail: str        # the weights' path, or what was built


class RepositoryError(RuntimeError):
    pass


def _glue_builders(manifest: dict[str, ModelEntry]) -> dict:
    swapper, parser, restorer = manifest["simswap_256"], manifest["bisenet"], manifest["gfpgan_1.4"]
    return {
        "identity_preprocess": lambda: glue.identity_preprocess(manifest["arcface_simswap"]),
        "identity_postprocess": glue.identity_postprocess,
        "swap_preprocess": lambda: glue.swap_preprocess(swapper, parser),
        "swap_merge": lambda: glue.swap_merge(swapper, restorer),
        "swap_postprocess": lambda: glue.swap_postprocess(restorer),
    }


_VERIFIED_CACHE = Path.home() / ".cache" / "swapstream" / "verified.json"


def _remembered(path: Path, what: str, check) -> bool:
    """``check()``, remembered when it passes per (path, size, mtime, what): a restart redoes no slow check."""
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{what}"
    try:
        cache = json.loads(_VERIFIED_CACHE.read_text())
    except (OSError, ValueError):
        cache = {}
    if cache.get(key):
        return True
    if not check():
        return False
    cache = {k: v for k, v in cache.items() if Path(k.rsplit(":", 3)[0]).exists()}  # files since removed go
    cache[key] = True
    try:
        _VERIFIED_CACHE.parent.mkdir(parents=True, exist_ok=True)
        _VERIFIED_CACHE.write_text(json.dumps(cache))
    except OSError:
        pass  # a read-only home only costs a re-check next time
    return True


def _verified(entry: ModelEntry, path: Path) -> bool:
    """Size + sha256 check (300 MB files: remembered)."""
    def check() -> bool:
        try:
            verify(entry, path)
        except ModelVerificationError:
            return False
        return True
    return _remembered(path, entry.sha256, check)


def _weights(entry: ModelEntry, weight_dirs: list[Path]) -> tuple[str, Path | None]:
    """("real", path) for a verified file, ("stand-in" or "cost-true", path) for a generated one, else ("absent", None)."""
    for folder in weight_dirs:
        path = folder / entry.file
        if not path.is_file():
            continue
        if _verified(entry, path):
            return "real", path
        if standins.is_standin(path):
            return ("cost-true" if costtrue.is_cost_true(path) else "stand-in"), path
        raise RepositoryError(
            f"{path} is neither the pinned {entry.key} ({entry.bytes} bytes, sha256 {entry.sha256[:12]}...) "
            f"nor a swapstream stand-in. Delete it and run `swapstream models fetch {entry.key}`.")
    return "absent", None


def real_networks(weight_dirs: list[Path] | None = None) -> set[str]:
    """The Triton models a repository built from ``weight_dirs`` serves with their real, verified weights (what
    choosing the default swapper needs, also for a running Triton that shares these folders)."""
    manifest = load_manifest()
    weight_dirs = weight_dirs if weight_dirs is not None else default_weight_dirs()
    return {name for name, key in NETWORKS.items() if _weights(manifest[key], weight_dirs)[0] == "real"}


def _place(source: Path, target: Path, link: str) -> None:
    if link == "copy":
        shutil.copy2(source, target)
    else:
        target.symlink_to(source.resolve())


def build_repository(out_dir: Path, weight_dirs: list[Path] | None = None, *, link: str = "symlink",
                     manifest: dict[str, ModelEntry] | None = None) -> list[ModelSource]:
    """Writes the runtime repository into ``out_dir`` (created, must be empty) and says where each model came from."""
    manifest = manifest or load_manifest()
    weight_dirs = weight_dirs if weight_dirs is not None else default_weight_dirs()
    builders = _glue_builders(manifest)
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = []
    for config in sorted(CONFIG_REPOSITORY.glob("*/config.pbtxt")):
        name = config.parent.name
        version_dir = out_dir / name / "1"
        version_dir.mkdir(parents=True)
        shutil.copy2(config, out_dir / name / "config.pbtxt")
        target = version_dir / "model.onnx"
        if name in builders:
            onnx.save(builders[name](), str(target))
            sources.append(ModelSource(name, "glue", "built from services/glue.py"))
        elif name in FOLDED:
            network, fold = FOLDED[name]
            path = _required_real(manifest[NETWORKS[network]], weight_dirs)
            onnx.save(fold(onnx.load(str(path))), str(target))
            sources.append(ModelSource(name, "folded", f"{path} with its glue from services/glue.py, one graph"))
        elif name in CONVERTED:
            try:
                model, how = CONVERTED[name]()
            except facemesh.FaceMeshUnavailable as error:
                raise RepositoryError(str(error)) from error
            onnx.save(model, str(target))
            sources.append(ModelSource(name, "converted", how))
        elif name in NETWORKS:
            entry = manifest[NETWORKS[name]]
            kind, path = _weights(entry, weight_dirs)
            if name in REQUIRED_REAL and kind == "absent":
                raise _absent(entry, weight_dirs)
            reduce = REDUCED.get(name, lambda model: model)
            if kind == "absent":
                onnx.save(reduce(standins.BUILDERS[entry.key](entry)), str(target))
                sources.append(ModelSource(name, "stand-in", f"generated stand-in for {entry.file}"))
            elif name in REDUCED:
                onnx.save(reduce(onnx.load(str(path))), str(target))
                sources.append(ModelSource(name, kind, f"{path}, with its argmax appended"))
            else:
                batched, note = _with_dynamic_batch(path)
                if batched is None:
                    _place(path, target, link)
                else:
                    onnx.save(batched, str(target))
                sources.append(ModelSource(name, kind, f"{path}{note}"))
        elif 'platform: "ensemble"' in config.read_text():
            sources.append(ModelSource(name, "ensemble", "steps: " + ", ".join(_ensemble_steps(config))))
        else:
            raise RepositoryError(f"model_repository/{name} is neither glue, a network nor an ensemble")
    return sources


def _required_real(entry: ModelEntry, weight_dirs: list[Path]) -> Path:
    kind, path = _weights(entry, weight_dirs)
    if kind == "absent":
        raise _absent(entry, weight_dirs)
    return path


def _absent(entry: ModelEntry, weight_dirs: list[Path]) -> RepositoryError:
    return RepositoryError(
        f"{entry.file} ({entry.key}) not found in {', '.join(map(str, weight_dirs))}. "
        f"Run `swapstream models fetch {entry.key}` or set SWAPSTREAM_SHARED.")


def _with_dynamic_batch(path: Path) -> tuple[onnx.ModelProto | None, str]:
    """A network whose file has a fixed batch of 1, rewritten to take K faces in one run where the rewrite
    holds (checked: 2 items in one run equal 2 runs of one); else None and one run per face."""
    model = onnx.load(str(path))
    if not batching.fixed_batch_one(model):
        return None, ""
    try:
        rewritten = batching.dynamic_batch(model)
        if rewritten is None:
            return None, " (fixed batch of 1: the batch is folded into its convolutions; one run per face)"
        same = _remembered(path, f"batch-rewrite-{batching.VERSION}",
                           lambda: batching.batch_matches(model, rewritten, batch=2))
    except Exception as error:  # noqa: BLE001 - an export the rewrite does not fit is served as it is
        return None, f" (fixed batch of 1: a dynamic batch does not fit this graph: {error}; one run per face)"
    if not same:
        return None, " (fixed batch of 1: a dynamic batch changed its outputs; one run per face)"
    return rewritten, " (batch made dynamic; verified: 2 faces in one run = 2 runs of one)"


def _ensemble_steps(config: Path) -> list[str]:
    return re.findall(r'model_name:\s*"([^"]+)"', config.read_text())


def describe(sources: list[ModelSource]) -> str:
    width = max(len(s.model) for s in sources)
    return "\n".join(f"  {s.model:<{width}}  {s.kind:<9}  {s.detail}" for s in sources)


@contextmanager
def embedded_triton(weight_dirs: list[Path] | None = None, *, announce: bool = True, **server_options):
    """Builds a runtime repository in a temporary folder and runs the embedded Triton on it.

    Yields ``(server, sources)``; ``server_options`` go to ``EmbeddedTriton`` (address, ports ...).
    With ``announce``, says on stderr which networks are stand-ins.
    """
    with tempfile.TemporaryDirectory(prefix="swapstream-repository-") as tmp:
        sources = build_repository(Path(tmp), weight_dirs)
        standin_models = [s.model for s in sources if s.kind == "stand-in"]
        if announce and standin_models:
            print(f"note: stand-ins serve {', '.join(standin_models)} (real weights absent: "
                  "`swapstream models fetch`); --swapper simswap on them only tints faces by a known colour shift",
                  file=sys.stderr)
        cost_true = [s.model for s in sources if s.kind == "cost-true"]
        if announce and cost_true:
            print(f"note: cost-true stand-ins serve {', '.join(cost_true)}: the real architectures with untrained "
                  "weights, so the real compute and meaningless faces", file=sys.stderr)
        with EmbeddedTriton(Path(tmp), **server_options) as server:
            yield server, sources
