"""A small Kustomize renderer for the tests: what deploy/kubernetes uses of Kustomize, and nothing else.

``kubectl kustomize`` is not in Debian, so the tests render the kustomizations themselves (and compare with
``kubectl kustomize`` where it is installed). Supported: ``resources`` (files and kustomization folders),
``configMapGenerator`` with ``files`` (only with ``generatorOptions.disableNameSuffixHash``), and ``patches``
written as JSON 6902 operations (add, remove, replace) with a ``target``. Anything else is an error, so a
kustomization that uses more fails here instead of rendering differently from Kustomize.
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

KNOWN_FIELDS = {"apiVersion", "kind", "resources", "configMapGenerator", "generatorOptions", "patches"}


class KustomizeError(ValueError):
    pass


def render(folder: Path) -> list[dict]:
    """The objects ``kubectl kustomize folder`` prints, in the order of their resources."""
    folder = Path(folder)
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(spec) - KNOWN_FIELDS
    if unknown:
        raise KustomizeError(f"{folder}/kustomization.yaml uses {sorted(unknown)}, which this renderer does not do")
    objects: list[dict] = []
    for entry in spec.get("resources", []):
        path = (folder / entry).resolve()
        objects += render(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    generators = spec.get("configMapGenerator", [])
    if generators and not spec.get("generatorOptions", {}).get("disableNameSuffixHash"):
        raise KustomizeError(f"{folder}: generated names with a hash suffix are not supported")
    objects += [_config_map(folder, generator) for generator in generators]
    for patch in spec.get("patches", []):
        targets = [o for o in objects if _matches(o, patch["target"])]
        if len(targets) != 1:
            raise KustomizeError(f"{folder}: patch target {patch['target']} matches {len(targets)} objects")
        for operation in yaml.safe_load(patch["patch"]):
            _apply(targets[0], operation)
    return objects


def _config_map(folder: Path, generator: dict) -> dict:
    data = {}
    for item in generator["files"]:
        key, _, path = item.rpartition("=")
        data[key or Path(path).name] = (folder / path).read_text()
    metadata = {"name": generator["name"]} | ({"namespace": generator["namespace"]} if "namespace" in generator else {})
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}


def _matches(obj: dict, target: dict) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    wanted = {"group": group, "version": version, "kind": obj["kind"], "name": obj["metadata"]["name"]}
    return all(wanted[key] == value for key, value in target.items())


def _apply(obj: dict, operation: dict) -> None:
    *parents, last = [part.replace("~1", "/").replace("~0", "~") for part in operation["path"].split("/")[1:]]
    node = obj
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    op = operation["op"]
    value = copy.deepcopy(operation.get("value"))
    if isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        if op == "add":
            node.insert(index, value)
        elif op == "remove":
            del node[index]
        elif op == "replace":
            node[index] = value
        else:
            raise KustomizeError(f"unsupported patch operation {op!r}")
    elif op in ("add", "replace"):
        if op == "replace" and last not in node:
            raise KustomizeError(f"replace of a missing path {operation['path']}")
        node[last] = value
    elif op == "remove":
        del node[last]
    else:
        raise KustomizeError(f"unsupported patch operation {op!r}")
