"""infra/grafana: the committed dashboards and provisioning are what switchyard.devstack.dashboards
generates; every panel query parses (promtool) and reads only docs/metrics.md's names; every
dashboard type-checks against Grafana 11.6's own schema (@grafana/schema, tsc --strict)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]

from switchyard.devstack import dashboards
from switchyard.devstack.metrics_contract import SETUP_HINT, check_expressions, contract_metrics, find_promtool, metric_names, unknown_metrics

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "infra" / "grafana"
SCHEMA_CHECK = Path("infra/grafana/schema-check")
# Grafana's query macros, replaced by what Grafana would put there so promtool can parse the query.
MACROS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def rendered() -> dict[str, str]:
    return {name: dashboards.render_dashboard(name) for name in dashboards.DASHBOARDS}


def all_queries() -> dict[str, str]:
    out = {}
    for name, text in rendered().items():
        for i, (title, expr) in enumerate(dashboards.panel_queries(text)):
            for macro, value in MACROS.items():
                expr = expr.replace(macro, value)
            out[f"{name}/{i}/{title}"] = expr
    return out


def test_committed_files_are_what_the_generator_writes() -> None:
    files = dashboards.render_all()
    stale = [rel for rel, text in files.items() if not (GRAFANA / rel).is_file() or (GRAFANA / rel).read_text() != text]
    assert stale == [], "regenerate: python -m switchyard.devstack.dashboards"
    committed = {str(p.relative_to(GRAFANA)) for p in (GRAFANA / "dashboards").glob("*.json")}
    assert committed == {rel for rel in files if rel.startswith("dashboards/")}, "a dashboard JSON the generator does not write"


def test_dashboards_cover_the_platform() -> None:
    # API and SLOs, each domain, Temporal, engines, GPUs, shadow deployment; unique uids; every panel on the provisioned data source.
    assert set(dashboards.DASHBOARDS) == {"api-slos", "llm", "vision", "recsys", "temporal", "engines", "gpus", "shadow"}
    models = {name: json.loads(text) for name, text in rendered().items()}
    assert len({m["uid"] for m in models.values()}) == len(models)
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "switchyard.yml").read_text())["datasources"][0]
    for name, m in models.items():
        panels = [p for p in m["panels"] if p["type"] != "row"]
        assert panels, name
        assert len({p["id"] for p in m["panels"]}) == len(m["panels"]), f"{name}: panel ids are unique"
        for p in panels:
            assert p["datasource"] == {"type": "prometheus", "uid": datasource["uid"]}, (name, p["title"])
            assert p["targets"], (name, p["title"])
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "switchyard.yml").read_text())["providers"][0]
    assert provider["type"] == "file"


def test_every_panel_query_parses(tmp_path: Path) -> None:
    promtool = find_promtool()
    if promtool is None:
        pytest.fail(f"promtool not found: {SETUP_HINT}")
    queries = all_queries()
    assert len(queries) > 50
    r = check_expressions(promtool, queries, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(queries)} rules found" in r.stdout


def test_the_check_catches_a_broken_query(tmp_path: Path) -> None:
    promtool = find_promtool()
    if promtool is None:
        pytest.fail(f"promtool not found: {SETUP_HINT}")
    r = check_expressions(promtool, {"bad": "sum by (model (rate(switchyard_requests_total[5m]))"}, tmp_path)
    assert r.returncode != 0


def test_every_panel_reads_contract_metrics() -> None:
    contract = contract_metrics((ROOT / "docs" / "metrics.md").read_text())
    unknown = {src: unknown_metrics(metric_names(q), contract) for src, q in all_queries().items()}
    assert {src: names for src, names in unknown.items() if names} == {}
    used = set().union(*(metric_names(q) for q in all_queries().values()))
    # The GPU dashboard charts dcgm-exporter and the workers' NVML readings.
    assert {"DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_XID_ERRORS", "switchyard_gpu_present"} <= used


def schema_check_dir() -> Path:
    """infra/grafana/schema-check with its node_modules: in the working tree, or (under Pants, whose
    sandbox has no node_modules) in the repository SWITCHYARD_CACHE_DIR lives in."""
    candidates = [Path.cwd() / SCHEMA_CHECK, GRAFANA / "schema-check"]
    if cache := os.environ.get("SWITCHYARD_CACHE_DIR"):
        candidates += [p / SCHEMA_CHECK for p in Path(cache).resolve().parents]
    for c in candidates:
        if (c / "node_modules" / "@grafana" / "schema" / "package.json").is_file():
            return c
    pytest.fail(f"{SCHEMA_CHECK}/node_modules is missing: run ./switchyard setup (it runs `npm ci` there)")


def test_dashboards_type_check_against_grafana_schema(tmp_path: Path) -> None:
    project = schema_check_dir()
    pins = json.loads((GRAFANA / "schema-check" / "package.json").read_text())["devDependencies"]
    installed = json.loads((project / "node_modules" / "@grafana" / "schema" / "package.json").read_text())["version"]
    assert installed == pins["@grafana/schema"] and installed.startswith(dashboards.GRAFANA_VERSION + "."), "run ./switchyard setup (npm ci)"
    files = []
    for name, text in rendered().items():
        # A typed constant: tsc checks every field against the schema's Dashboard type (unknown keys too).
        ts = tmp_path / f"{name}.ts"
        ts.write_text(f"import type {{ Dashboard }} from '@grafana/schema';\nexport const dashboard: Dashboard = {text};\n")
        files.append(ts.name)
    # Deliberately wrong ones prove the check bites: a value outside the schema, a key it does not know.
    (tmp_path / "broken.ts").write_text("import type { Dashboard } from '@grafana/schema';\n"
                                        "export const a: Dashboard = {graphTooltip: 7};\nexport const b: Dashboard = {nope: 1};\n")
    modules = project / "node_modules"
    config = {"compilerOptions": {"strict": True, "noEmit": True, "target": "es2022", "module": "esnext", "moduleResolution": "bundler",
                                  "skipLibCheck": True, "types": [], "baseUrl": ".", "paths": {"@grafana/schema": [str(modules / "@grafana" / "schema")]}}}
    tsc = [str(project / "node_modules" / "typescript" / "bin" / "tsc")]
    (tmp_path / "tsconfig.json").write_text(json.dumps({**config, "files": files}))
    r = subprocess.run(["node", *tsc, "-p", str(tmp_path / "tsconfig.json")], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    (tmp_path / "tsconfig.json").write_text(json.dumps({**config, "files": ["broken.ts"]}))
    r = subprocess.run(["node", *tsc, "-p", str(tmp_path / "tsconfig.json")], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode != 0 and "DashboardCursorSync" in r.stdout and "'nope' does not exist" in r.stdout, r.stdout
