"""
The layers written in docs/internals.md hold in the code: no import climbs.

The table is read from the document itself, so the map and the code cannot drift
apart: a new module must be given a layer there, and an import that goes up fails
here (type-only imports may go up only where the document says why).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pixelbyte_async"
DOC = ROOT / "docs" / "internals.md"

#: Type-only references that climb, each explained in docs/internals.md.
ALLOWED_UPWARD_TYPE_HINTS = {("_errors", "_job")}


def layers() -> dict[str, int]:
    """Module or package name → layer, from the ``text`` block of internals.md."""
    block = DOC.read_text().split("```text", 1)[1].split("```", 1)[0]
    table: dict[str, int] = {}
    for line in block.splitlines():
        match = re.match(r"\s*(\d+)\s{2}(.*)", line)
        if not match:
            continue
        layer, rest = int(match[1]), match[2]
        for word in rest.split("  "):
            for name in word.split():
                if re.fullmatch(r"_?_?[a-z_]+_?_?", name) and (
                    (PACKAGE / f"{name}.py").exists() or (PACKAGE / name).is_dir()
                ):
                    table[name] = layer
    return table


def unit_of(path: Path) -> str:
    """The top-level module or package a file belongs to."""
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or 0) + 1))
    return lines


def imports(path: Path, package: Path = PACKAGE) -> list[tuple[str, bool, int]]:
    """(imported top-level unit, type-only?, line) for every import of *path*."""
    tree = ast.parse(path.read_text())
    type_only = _type_checking_lines(tree)
    depth = len(path.relative_to(package).parts) - 1  # 0 for a top-level module
    found: list[tuple[str, bool, int]] = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                up = node.level - 1
                if up > depth:
                    continue
                base = list(path.relative_to(package).parts[: depth - up])
                module = [*base, *(node.module or "").split(".")]
                module = [m for m in module if m]
                if not module:  # "from . import x" at the top: x is a unit
                    targets = [alias.name for alias in node.names]
                else:
                    targets = [module[0]]
            elif node.module and node.module.startswith("pixelbyte_async."):
                targets = [node.module.split(".")[1]]
        elif isinstance(node, ast.Import):
            targets = [
                alias.name.split(".")[1]
                for alias in node.names
                if alias.name.startswith("pixelbyte_async.")
            ]
        found.extend(
            (target.removesuffix(".py"), node.lineno in type_only, node.lineno)
            for target in targets
        )
    return found


def test_every_module_has_a_layer():
    table = layers()
    units = {unit_of(p) for p in PACKAGE.rglob("*.py")} - {"py"}
    missing = sorted(u for u in units if u not in table)
    assert not missing, f"give these a layer in docs/internals.md: {missing}"


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_no_import_climbs(path):
    table = layers()
    unit = unit_of(path)
    for target, type_only, line in imports(path):
        if target == unit or target not in table:
            continue
        if table[target] <= table[unit]:
            continue
        where = f"{path.relative_to(ROOT)}:{line} imports {target}"
        assert type_only, f"{where}, a higher layer"
        assert (unit, target) in ALLOWED_UPWARD_TYPE_HINTS, (
            f"{where} for a type hint: cut it with a Protocol, or explain it in "
            "docs/internals.md and ALLOWED_UPWARD_TYPE_HINTS"
        )


def test_the_checker_sees_every_kind_of_import(tmp_path):
    """Not vacuous: relative, absolute, nested, lazy and type-only imports are seen."""
    package = tmp_path / "pixelbyte_async"
    (package / "_batch").mkdir(parents=True)
    module = package / "_batch" / "_x.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "from .._client import PixelByte\n"
        "from . import _rows\n"
        "import pixelbyte_async._job\n"
        "if TYPE_CHECKING:\n"
        "    from pixelbyte_async._cli import main\n"
        "def later():\n"
        "    from .._wiring import WebhookWiring\n"
    )
    found = imports(module, package)
    assert {(t, type_only) for t, type_only, _ in found} == {
        ("_client", False),
        ("_batch", False),
        ("_job", False),
        ("_cli", True),
        ("_wiring", False),
    }
