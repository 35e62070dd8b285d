"""Repository rules: apps never import other apps; `switchyard` stays a namespace package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APPS = {"api": "switchyard.api", "worker-llm": "switchyard.worker_llm"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("app", sorted(APPS))
def test_app_imports_no_other_app(app: str) -> None:
    files = list((ROOT / "apps" / app).rglob("*.py"))
    assert files, f"no sources found for {app} under {ROOT}"
    others = [pkg for name, pkg in APPS.items() if name != app]
    bad = {(str(f.relative_to(ROOT)), m) for f in files for m in _imports(f) if any(m == o or m.startswith(o + ".") for o in others)}
    assert not bad, f"{app} imports another app: {sorted(bad)}"


def test_every_app_is_listed() -> None:
    assert {p.name for p in (ROOT / "apps").iterdir() if p.is_dir()} == set(APPS)


def test_switchyard_is_a_namespace_package() -> None:
    assert not list(ROOT.glob("*/*/switchyard/__init__.py"))
