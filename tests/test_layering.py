"""The house's import directions, read from the source (no import is executed).

`erase/` holds the methods; the increment maths lives in `delta/`; nothing outside `erase/`
imports it back (compose, export, inspect, generate read increments through `delta/`), and the
store core never imports torch.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sepme_engine

ENGINE = Path(sepme_engine.__file__).parent


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _modules(sub: str = "") -> list[Path]:
    return sorted((ENGINE / sub).rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ENGINE)))
def test_only_erase_imports_erase(path: Path) -> None:
    rel = path.relative_to(ENGINE)
    if rel.parts[0] == "erase":
        return
    # the registry's names (erase/__init__.py, nothing heavy) tell config.toml's method tables
    # from typos; config.py may read them
    allowed = (
        {"sepme_engine.erase", "sepme_engine.erase.names"} if rel.name == "config.py" else set()
    )
    bad = sorted(
        n
        for n in _imports(path)
        if (n == "sepme_engine.erase" or n.startswith("sepme_engine.erase.")) and n not in allowed
    )
    assert not bad, f"{rel} imports {bad}: move what it needs into delta/ or models/"


@pytest.mark.parametrize("path", _modules("store"), ids=lambda p: p.name)
def test_store_core_never_imports_torch(path: Path) -> None:
    bad = sorted(
        n for n in _imports(path) if n.split(".")[0] in ("torch", "diffusers", "transformers")
    )
    assert not bad, f"store/{path.name} imports {bad}"


def test_nothing_imports_the_cli() -> None:
    for path in _modules():
        bad = [n for n in _imports(path) if n.split(".")[0] in ("sepme_cli", "typer", "rich")]
        assert not bad, f"{path.relative_to(ENGINE)} imports {bad}"
