"""Layers import downward only: data -> retrieval -> artifacts -> nn / coldstart -> models -> evaluation ->
experiment -> serving / spark / cli. Every import counts, including those inside functions (a lazy
import is still a dependency). Each module is placed by the longest matching prefix below."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "recforge"

LAYERS: dict[str, int] = {
    # 0: leaf helpers every layer may use
    "recforge._version": 0,
    "recforge.errors": 0,
    "recforge._io": 0,
    "recforge._toml": 0,
    "recforge._settings": 0,
    "recforge._progress": 0,
    "recforge.threads": 0,
    "recforge.evaluation.metrics": 0,  # pure functions over arrays; models' validation uses them too
    "recforge.data": 1,
    "recforge.retrieval": 2,
    "recforge.artifacts": 3,
    "recforge.nn": 4,
    "recforge.coldstart": 4,
    "recforge.models": 5,
    "recforge.evaluation": 6,
    "recforge.experiment": 7,
    "recforge.train": 7,
    "recforge.tune": 7,
    "recforge.serving": 8,
    "recforge.spark": 8,
    "recforge.cli": 9,
    "recforge.demo": 9,
    "recforge": 9,  # the package root re-exports from every layer; nothing inside may import it
}


def layer(module: str) -> int:
    best = max((prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")), key=len)
    return LAYERS[best]


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[str, int]]:
    """(imported recforge module, line) for every import in the file, resolved to the deepest module."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.startswith("recforge")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("recforge") and not node.level:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (SOURCE.parent / candidate.replace(".", "/")).with_suffix(".py").exists() or (
                    SOURCE.parent / candidate.replace(".", "/")
                ).is_dir()
                found.append((candidate if is_module else node.module, node.lineno))
    return found


def all_modules() -> list[Path]:
    return sorted(SOURCE.rglob("*.py"))


@pytest.mark.parametrize("path", all_modules(), ids=lambda p: module_name(p))
def test_imports_point_downward(path):
    importer = module_name(path)
    upward = [
        f"line {line}: {imported} (layer {layer(imported)})"
        for imported, line in imports_of(path)
        if layer(imported) > layer(importer) and not imported.startswith(importer + ".")
    ]
    assert not upward, f"{importer} (layer {layer(importer)}) imports upward: " + "; ".join(upward)
