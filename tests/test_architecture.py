"""The floor plan holds: docs/ARCHITECTURE.md is the one module map (every module listed, nothing listed that is
gone, no second list in the README), imports point one way, and rooms and modules stay small."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROOMS = ("spinal", "capture", "analyze", "cluster", "monitor")  # the import packages' folders (pyproject's package-dir)
PACKAGE = {"spinal": "spinal", "capture": "spinal.capture", "analyze": "spinal.analyze", "cluster": "spinal.cluster",
           "monitor": "spinal.monitor"}
MODULE_LINES = 320  # "each under ~300 lines": a module past this splits by idea
ROOM_MODULES = 12  # a folder with more modules than this gets sub-rooms


def modules() -> list[Path]:
    """Every Python module of the package, as a path relative to the repository ("analyze/trace.py")."""
    return sorted(p.relative_to(ROOT) for room in ROOMS for p in (ROOT / room).rglob("*.py")
                  if "__pycache__" not in p.parts)


def dotted(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    parts = [PACKAGE[parts[0]], *parts[1:]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def test_the_architecture_map_lists_every_module_and_only_existing_ones():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    listed = {m for m in re.findall(r"`((?:spinal|capture|analyze|cluster|monitor)/[\w/]+\.py)`", text)
              if not m.endswith(("__init__.py", "__main__.py"))}  # a package's __init__ is its room
    have = {str(p) for p in modules() if p.name not in ("__init__.py", "__main__.py")}
    assert not have - listed, f"modules missing from docs/ARCHITECTURE.md: {sorted(have - listed)}"
    assert not listed - have, f"docs/ARCHITECTURE.md lists modules that do not exist: {sorted(listed - have)}"


def test_the_readme_holds_no_second_module_list():
    text = (ROOT / "README.md").read_text()
    named = set(re.findall(r"(?<![\w/])(?:spinal|capture|analyze|cluster|monitor)/[\w/]+\.py", text))
    assert len(named) < 4, f"README.md names modules ({sorted(named)}); the module map is docs/ARCHITECTURE.md"


def _imports(rel: Path) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import in ``rel``, absolute and relative."""
    tree = ast.parse((ROOT / rel).read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = dotted(rel).split(".")
                pkg = pkg[: len(pkg) - node.level + (rel.name == "__init__.py")]
                base = ".".join(pkg + ([base] if base else []))
            out.append((base, [a.name for a in node.names]))
    return out


# who may import whom: a room never reaches up or across (docs/ARCHITECTURE.md, "Imports point one way")
FORBIDDEN = {
    "spinal.analyze": ("spinal.capture", "spinal.cluster", "spinal.monitor", "spinal.cli", "spinal.api"),
    "spinal.capture": ("spinal.analyze", "spinal.cluster", "spinal.monitor", "spinal.cli", "spinal.api"),
    "spinal.cluster": ("spinal.monitor", "spinal.cli", "spinal.api"),
    "spinal.monitor": ("spinal.cluster", "spinal.cli", "spinal.api"),
    "spinal.store": ("spinal.capture", "spinal.analyze", "spinal.cluster", "spinal.monitor", "spinal.cli",
                     "spinal.api"),
}
CORE = ("spinal.config", "spinal.capture_config", "spinal.specs", "spinal.fields", "spinal.errors", "spinal.dtypes", "spinal.blocks", "spinal.checkpoint",
        "spinal.lens", "spinal.text", "spinal.outputs")


def _rules(mod: str) -> tuple[str, ...]:
    if mod in CORE:
        return FORBIDDEN["spinal.store"]
    return next((bad for room, bad in FORBIDDEN.items() if mod == room or mod.startswith(room + ".")), ())


@pytest.mark.parametrize("rel", modules(), ids=str)
def test_imports_point_one_way_and_take_no_private_names(rel):
    mod = dotted(rel)
    for target, names in _imports(rel):
        for bad in _rules(mod):
            assert not (target == bad or target.startswith(bad + ".")), f"{mod} imports {target}"
        if target.startswith("spinal") and target != mod:
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            assert not private, f"{mod} imports private {private} from {target}"


def test_modules_and_rooms_stay_small():
    long = {str(p): n for p in modules() if (n := len((ROOT / p).read_text().splitlines())) > MODULE_LINES}
    assert not long, f"modules over {MODULE_LINES} lines (split by idea): {long}"
    rooms: dict[Path, int] = {}
    for p in modules():
        if p.name not in ("__init__.py", "__main__.py"):
            rooms[p.parent] = rooms.get(p.parent, 0) + 1
    crowded = {str(r): n for r, n in rooms.items() if n > ROOM_MODULES}
    assert not crowded, f"rooms of more than {ROOM_MODULES} modules (give them sub-rooms): {crowded}"
