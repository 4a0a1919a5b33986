"""Each part of tlsmta is entered through its ``__init__``: the rest of its modules are private."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tlsmta"
PARTS = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())


def _part(path: Path) -> str | None:
    relative = path.relative_to(PACKAGE).parts
    return relative[0] if len(relative) > 1 else None


def _cross_part_imports(source: str, here: str | None, name: str) -> list[str]:
    """Imports of another part that do not go through its ``__init__`` or a public module of it."""
    wrong = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom) or node.level or not (node.module or "").startswith("tlsmta."):
            continue
        dotted = node.module.split(".")
        if dotted[1] not in PARTS or dotted[1] == here:
            continue
        if any(name.startswith("_") for name in dotted[2:]) or any(a.name.startswith("_") for a in node.names):
            wrong.append(f"{name}:{node.lineno}: from {node.module} import "
                         + ", ".join(a.name for a in node.names))
    return wrong


def test_parts_import_each_other_only_through_their_public_names() -> None:
    wrong = [line for path in sorted(PACKAGE.rglob("*.py"))
             for line in _cross_part_imports(path.read_text(), _part(path), str(path.relative_to(PACKAGE.parent)))]
    assert wrong == []


def test_the_check_finds_an_import_of_a_private_module() -> None:
    source = "from tlsmta.storage._spool import Spool\nfrom tlsmta.storage import _ids\nfrom tlsmta.storage import Spool\n"
    assert len(_cross_part_imports(source, "inbound", "x.py")) == 2
    assert _cross_part_imports(source, "storage", "x.py") == []  # a part's own modules are its business


@pytest.mark.parametrize("part", PARTS)
def test_each_part_exports_what_its_all_names(part: str) -> None:
    """``__all__`` lists only names the part really has, each from the part's own modules."""
    module = importlib.import_module(f"tlsmta.{part}")
    exported = getattr(module, "__all__", [])
    assert all(hasattr(module, name) for name in exported)
    for name in exported:
        origin = getattr(getattr(module, name), "__module__", f"tlsmta.{part}")
        if isinstance(origin, str) and origin.startswith("tlsmta."):
            assert origin.startswith(f"tlsmta.{part}.") or origin.startswith("tlsmta.errors") or origin == f"tlsmta.{part}", (
                f"tlsmta.{part} exports {name} from {origin}")


@pytest.mark.parametrize("part", PARTS)
def test_private_modules_are_marked(part: str) -> None:
    """A module is private (``_name.py``) unless it is an entry point or a namespace others import."""
    public = {p.stem for p in (PACKAGE / part).glob("*.py") if not p.stem.startswith("_")}
    assert public <= {"tap", "cli", "client_session", "server_session"}
