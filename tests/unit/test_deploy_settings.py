"""The deploy manifests (infra/k8s) and the compose file give Switchyard's processes settings their
real Settings classes accept, the catalog loads with the cluster's engine addresses, the workers'
grace period covers their SIGTERM drain, and the cluster's Nginx script renders a configuration the
real Nginx accepts. Reads the YAML sources (no kubectl: that is test_k8s_manifests.py's resolve)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from pydantic_settings import BaseSettings
from sqlalchemy.engine import make_url

from switchyard.api.settings import ApiSettings
from switchyard.common.catalog import CatalogHolder
from switchyard.common.temporal import WORKER_OPTIONS
from switchyard.devstack.stack import find_nginx
from switchyard.worker_llm.settings import WorkerSettings
from switchyard.worker_recsys.settings import RecsysSettings
from switchyard.worker_shadow.settings import ShadowWorkerSettings
from switchyard.worker_vision.settings import VisionSettings

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "infra" / "k8s" / "base"
SETTINGS: dict[str, type[BaseSettings]] = {"api": ApiSettings, "worker-llm": WorkerSettings, "worker-vision": VisionSettings, "worker-recsys": RecsysSettings,
                                           "worker-shadow": ShadowWorkerSettings}
# The catalog's ${VAR}s (deployment addresses, switches): read by the catalog, not by a Settings class.
CATALOG_VARS = set(re.findall(r"\$\{(\w+)", (ROOT / "infra" / "catalog" / "models.yaml").read_text())) - {"VAR"}


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((BASE / name).read_text()) if d]


def deployments() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for f in BASE.glob("*.yaml") if f.name != "kustomization.yaml" for d in docs(f.name) if d["kind"] == "Deployment"}


def cluster_env(app: str) -> dict[str, str]:
    """What the app's container sees in the dev overlay: the ConfigMap, the Secrets, its own env."""
    (config,) = (d for d in docs("config.yaml") if d["kind"] == "ConfigMap")
    dev = yaml.safe_load((ROOT / "infra" / "k8s" / "overlays" / "dev" / "kustomization.yaml").read_text())
    secrets = {g["name"]: dict(item.split("=", 1) for item in g["literals"]) for g in dev["secretGenerator"]}
    merged = dict(item.split("=", 1) for g in dev["configMapGenerator"] for item in g["literals"])
    container = deployments()[app]["spec"]["template"]["spec"]["containers"][0]
    env = {**config["data"], **merged}
    for ref in container["envFrom"]:
        if "secretRef" in ref:
            env.update(secrets[ref["secretRef"]["name"]])
    for e in container["env"]:
        if "valueFrom" in e:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secrets[ref["name"]][ref["key"]]
        else:
            env[e["name"]] = e["value"]
    return env


def env_names(cls: type[BaseSettings]) -> set[str]:
    names = set()
    for field_name, field in cls.model_fields.items():
        alias = field.validation_alias
        names.add(alias if isinstance(alias, str) else f"SWITCHYARD_{field_name.upper()}")
    return names


@pytest.mark.parametrize("app", sorted(SETTINGS))
def test_cluster_settings_are_real_and_valid(app: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = cluster_env(app)
    unknown = {k for k in env if k.startswith("SWITCHYARD_")} - env_names(SETTINGS[app]) - CATALOG_VARS
    assert unknown == set(), f"{app}: no setting reads {sorted(unknown)}"
    for key in [k for k in os.environ if k.startswith("SWITCHYARD_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings: Any = SETTINGS[app]()  # pydantic validates every value (ports, JSON, bounds)
    assert make_url(settings.postgres_dsn).drivername == "postgresql+asyncpg"
    assert ("SWITCHYARD_KEY_PEPPER" in env) == (app == "api"), "the key pepper is the API's alone"
    assert settings.metrics_host == "0.0.0.0" and settings.payload_key_id in settings.payload_keys
    # The catalog loads with the cluster's engine addresses (what the ConfigMap mounts at /config).
    catalog = tmp_path / "models.yaml"
    shutil.copy(ROOT / "infra" / "catalog" / "models.yaml", catalog)
    settings.catalog = catalog
    holder = CatalogHolder.load(settings, env)
    urls = {e.url for m in holder.current.registry.models for e in getattr(m, "endpoints", [])}
    assert {"http://llamacpp-smollm2:8090", "http://llamacpp-gemma:8091", "http://sglang:8092"} <= urls
    assert "http://vllm:8093" not in urls  # the dev overlay turns vLLM's model off (no GPU there)


def test_compose_settings_are_real() -> None:
    services = yaml.safe_load((ROOT / "infra" / "compose" / "compose.yml").read_text())["services"]
    for app, cls in SETTINGS.items():
        env = services[app]["environment"]
        unknown = {k for k in env if k.startswith("SWITCHYARD_")} - env_names(cls) - CATALOG_VARS
        assert unknown == set(), f"compose {app}: no setting reads {sorted(unknown)}"
        assert make_url(env["SWITCHYARD_POSTGRES_DSN"]).drivername == "postgresql+asyncpg"
        assert ("SWITCHYARD_KEY_PEPPER" in env) == (app == "api"), "the key pepper is the API's alone"


def test_workers_grace_period_covers_their_drain() -> None:
    # SIGTERM: the Temporal worker stops polling and gives in-flight activities this long before
    # cancelling them (retried elsewhere); closing clients follows. The pod must outlive both.
    drain = WORKER_OPTIONS["graceful_shutdown_timeout"].total_seconds()
    for name, d in deployments().items():
        if name in SETTINGS and name != "api":
            spec = d["spec"]["template"]["spec"]
            pre_stop = spec["containers"][0].get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            assert spec["terminationGracePeriodSeconds"] >= pre_stop + drain + 10, name


def test_cluster_nginx_script_renders_a_config_nginx_accepts(tmp_path: Path) -> None:
    (nginx,) = (d for d in docs("nginx.yaml") if d["kind"] == "Deployment")
    container = nginx["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["/bin/sh", "-ec"]
    (script,) = container["args"]
    templates = tmp_path / "etc"
    templates.mkdir()
    shutil.copy(ROOT / "infra" / "nginx" / "nginx.conf.template", templates / "nginx.conf.template")
    # The pod's paths moved under tmp_path, the upstreams to addresses that resolve here; `nginx -t`
    # instead of running it.
    script = script.replace("/run/switchyard", str(tmp_path / "run")).replace("/etc/switchyard", str(templates))
    script = script.replace("exec nginx -c", f"exec {find_nginx()} -t -p {tmp_path}/ -e {tmp_path}/err.log -c")
    env = {e["name"]: e["value"] for e in container["env"]} | {"API_UPSTREAM": "127.0.0.1:8000", "API_GRPC_UPSTREAM": "127.0.0.1:8001"}
    r = subprocess.run(["/bin/sh", "-ec", script], env={"PATH": "/usr/sbin:/usr/bin:/bin", **env}, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "run" / "nginx.conf").read_text()
    assert "{{" not in text and "listen 0.0.0.0:8080" in text and "client_max_body_size 10485760;" in text
