"""The packages import in one direction only (docs/architecture.md, "Layers"), so no import cycle can form."""
from __future__ import annotations

import ast
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
#: Package (import name under `autodetr.`) -> layer, bottom up, as docs/architecture.md lists them.
LAYERS = {
    **{name: 1 for name in ("errors", "atomic_io", "paths", "devices", "locking", "parallel", "boxes", "boxes_torch",
                            "plans", "prediction_files", "pretrained", "model_files")},
    "slicer_markups": 2, "preprocessing": 3, "evaluation": 4, "planners": 5,
    "model": 6, "losses": 6, "detector": 6, "inference": 7, "training": 8, "demo": 9, "phantom": 9,
}
#: Source folder -> import name of its package.
SOURCES = {"autodetr": "autodetr", "planners": "autodetr.planners", "preprocessing": "autodetr.preprocessing",
           "inference": "autodetr.inference"}


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "autodetr" and len(parts) > 1 else None


def imports() -> list[tuple[str, str, str]]:
    """(file, importing package, imported package) of every `from autodetr... import` in product code."""
    found = []
    for folder, prefix in SOURCES.items():
        for path in sorted((REPOSITORY / folder).rglob("*.py")):
            module = ".".join([prefix, *path.relative_to(REPOSITORY / folder).with_suffix("").parts])
            source = package_of(module)
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module] if node.module != "autodetr" else [f"autodetr.{a.name}" for a in node.names]
                    for name in names:
                        target = package_of(name)
                        if source and target and target != source:
                            found.append((str(path.relative_to(REPOSITORY)), source, target))
    return found


def test_every_package_has_a_layer() -> None:
    packages = {p for _, source, target in imports() for p in (source, target)}
    assert packages <= set(LAYERS), sorted(packages - set(LAYERS))


def test_packages_import_only_from_their_layer_or_below() -> None:
    upward = [f"{path}: {source} (layer {LAYERS[source]}) imports {target} (layer {LAYERS[target]})"
              for path, source, target in imports() if LAYERS.get(target, 0) > LAYERS.get(source, 0)]
    assert not upward, "\n".join(upward)
