"""Repository rules: apps never import other apps nor a sibling module's private names; `switchyard`
stays a namespace package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APPS = {"api": "switchyard.api", "worker-llm": "switchyard.worker_llm", "worker-vision": "switchyard.worker_vision",
        "worker-recsys": "switchyard.worker_recsys", "worker-shadow": "switchyard.worker_shadow"}
# Heavy stacks stay where they are needed (folders or files): they are in the shared lockfile, and
# Pants only puts a requirement into the artifacts of targets that import it. onnxruntime: the V2
# backends both model workers share; Feast (recsys venv only, numpy 2): one module of the recsys worker.
HEAVY = {
    "nvidia.dali": ("apps/worker-vision",),
    "onnxruntime": ("apps/worker-vision", "apps/worker-recsys", "libs/common/switchyard/common/v2/backends.py"),
    "feast": ("apps/worker-recsys/switchyard/worker_recsys/features.py",),
}


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


@pytest.mark.parametrize("app", sorted(APPS))
def test_no_module_imports_a_private_name_of_its_app(app: str) -> None:
    """A ``_name`` is its module's own: a sibling that needs it gets a public name (or its own copy)."""
    pkg = APPS[app]
    bad: set[tuple[str, str]] = set()
    for f in (ROOT / "apps" / app).rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level > 0 or node.module == pkg or (node.module or "").startswith(pkg + ".")):
                bad.update((str(f.relative_to(ROOT)), f"{node.module}.{a.name}") for a in node.names if a.name.startswith("_"))
    assert not bad, f"private names imported across modules: {sorted(bad)}"


def test_every_app_is_listed() -> None:
    assert {p.name for p in (ROOT / "apps").iterdir() if p.is_dir()} == set(APPS)


def test_switchyard_is_a_namespace_package() -> None:
    assert not list(ROOT.glob("*/*/switchyard/__init__.py"))


@pytest.mark.parametrize("module", sorted(HEAVY))
def test_heavy_stacks_only_where_needed(module: str) -> None:
    owners = [ROOT / o for o in HEAVY[module]]
    files = [f for d in ("apps", "libs") for f in (ROOT / d).rglob("*.py") if not any(f == o or o in f.parents for o in owners)]
    assert files
    bad = sorted(str(f.relative_to(ROOT)) for f in files if any(m == module or m.startswith(module + ".") for m in _imports(f)))
    assert not bad, f"{module} imported outside {', '.join(HEAVY[module])}: {bad}"
