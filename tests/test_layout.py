"""The import rule: one namespace (``swapstream``), dependencies pointing one way, tests imported by tests only."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Each room may import the rooms listed after it, never one before it (the CLI delegates to all, bench included).
# ``http`` assembles the service's app: the job queue (``jobs``), the pages (``web``) and the live streams (``live``).
# ``options`` (the options table) is at the bottom: every room reads it, it imports nothing of ours.
LAYERS = ["swapstream.services.cli", "swapstream.benchmarks", "swapstream.services.http", "swapstream.services.jobs",
          "swapstream.services.web", "swapstream.services.live", "swapstream.services.engine", "swapstream.services.triton",
          "swapstream.pipelines", "swapstream.services.options"]
FOLDERS = {"pipelines": "swapstream.pipelines", "services": "swapstream.services", "benchmarks": "swapstream.benchmarks"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join([FOLDERS[parts[0]], *parts[1:]]).removesuffix(".__init__")


def imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def layer(module: str) -> int | None:
    return next((i for i, prefix in enumerate(LAYERS) if module == prefix or module.startswith(prefix + ".")), None)


SOURCES = sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py")
                 if "backends" not in p.parts)  # the backend runs inside Triton's stub, not as our package


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_and_stay_in_the_namespace(path):
    module = module_name(path)
    own = 0 if module == "swapstream.services" else layer(module)  # the package itself: only its docstring
    assert own is not None, f"{path} belongs to no room of {LAYERS}"
    for name in imported_modules(path):
        top = name.split(".")[0]
        assert top not in ("services", "pipelines", "benchmarks", "tests"), \
            f"{path} imports {name}: import the project as swapstream.*; tests are imported by tests only"
        other = layer(name)
        assert other is None or other >= own, f"{path} ({LAYERS[own]}) imports {name} ({LAYERS[other]}): upward"


def test_the_rule_sees_an_upward_import(tmp_path):
    upward = tmp_path / "upward.py"
    upward.write_text("from swapstream.services.http.app import create_app\n")
    assert layer(imported_modules(upward)[0]) < layer("swapstream.services.engine.swapper")


@pytest.mark.parametrize("path", sorted((ROOT / "tests").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_tests_share_code_through_helpers_only(path):
    for name in imported_modules(path):
        parts = name.split(".")
        assert not (parts[0] == "tests" and len(parts) > 1 and parts[1] != "helpers"), \
            f"{path} imports {name}: put what tests share in tests/helpers/"
