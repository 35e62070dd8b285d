"""The model catalog: one file for every domain, environment substitution, overlays, validation
messages that name the file, the model and the field, and reload that keeps a good catalog."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from switchyard.common.catalog import Catalog, CatalogError, CatalogHolder, build_catalog
from switchyard.common.engines.factory import ADAPTERS
from switchyard.common.model_registry import LLM_ENGINES

SHIPPED = Path(__file__).resolve().parents[2] / "infra" / "catalog" / "models.yaml"

CHAT: dict[str, Any] = {"name": "chat", "domain": "llm", "kind": "chat", "endpoints": [{"engine": "llamacpp", "url": "http://127.0.0.1:1", "engine_model": "m"}]}
STEPS = [
    {"name": "decode", "op": "preprocess", "inputs": ["image"], "outputs": ["pixels"]},
    {"name": "classify", "op": "infer", "backend": "b", "inputs": ["pixels"], "outputs": ["logits"]},
    {"name": "top", "op": "topk", "inputs": ["logits"], "outputs": ["labels", "scores"]},
]


def vision(steps: list[dict[str, Any]] = STEPS, **kw: Any) -> dict[str, Any]:
    return {"name": "see", "domain": "vision", "kind": "classifier", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "labels", "datatype": "BYTES", "shape": [-1, -1]}, {"name": "scores", "datatype": "FP32", "shape": [-1, -1]}],
            "steps": steps, **kw}


def write(tmp_path: Path, name: str, doc: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc) if name.endswith(".yaml") else json.dumps(doc))
    return path


def refused(tmp_path: Path, doc: dict[str, Any]) -> str:
    path = write(tmp_path, "catalog.yaml", {"backends": {"b": {"engine": "triton", "model": "x"}}, **doc})
    with pytest.raises(CatalogError) as e:
        build_catalog([path], env={})
    return str(e.value)


def test_the_shipped_catalog_declares_every_domain_with_local_defaults() -> None:
    cat = build_catalog([SHIPPED], env={})
    assert {"smollm2-135m-instruct", "smollm2-135m-embed", "gemma-3-270m", "smollm2-135m-instruct-vllm", "smollm2-135m-instruct-sglang-fake"} <= {
        m.name for m in cat.registry.models}
    assert {"vision-classify", "vision-classify-fp32-int8", "vision-classify-onnxruntime", "efficientnet-lite0"} <= {m.name for m in cat.v2.models}
    smol = cat.registry.get("smollm2-135m-instruct")
    assert smol is not None and smol.endpoints[0].url == "http://127.0.0.1:8090" and smol.context_length == 2048


def test_environment_decides_addresses_sizes_and_switches() -> None:
    env = {"SWITCHYARD_LLAMACPP_URL": "http://llama.internal:9000", "SWITCHYARD_LLAMACPP_CONTEXT": "4096", "SWITCHYARD_VLLM_ENABLED": "false"}
    cat = build_catalog([SHIPPED], env=env)
    smol = cat.registry.get("smollm2-135m-instruct")
    assert smol is not None and smol.endpoints[0].url == "http://llama.internal:9000" and smol.context_length == 4096
    assert cat.registry.get("smollm2-135m-instruct-vllm") is None


def test_a_variable_without_default_must_be_set(tmp_path: Path) -> None:
    msg = refused(tmp_path, {"models": [{**CHAT, "endpoints": [{**CHAT["endpoints"][0], "url": "${LLAMA_URL}"}]}]})
    assert "catalog.yaml: model 'chat'" in msg and "LLAMA_URL is not set" in msg


@pytest.mark.parametrize(("doc", "expected"), [
    ({"models": [{**CHAT, "endpoints": [{**CHAT["endpoints"][0], "engine": "tgi"}]}]},
     "model 'chat', field 'endpoints.0.engine': unknown engine 'tgi'"),
    ({"models": [{**CHAT, "endpoints": [{**CHAT["endpoints"][0], "engine": "triton"}]}]},
     "model 'chat', field 'endpoints.0.engine': engine 'triton' has no adapter for LLM endpoints"),
    ({"models": [CHAT, {**CHAT, "kind": "embedding"}]}, "model 'chat', field 'name': duplicate model name in this file"),
    ({"models": [{**CHAT, "context_length": "lots"}]}, "model 'chat', field 'context_length': Input should be a valid integer"),
    ({"models": [{**CHAT, "domain": "audio"}]}, "model 'chat', field 'domain': unknown domain 'audio'"),
    ({"models": [vision([{**STEPS[0], "inputs": ["logits"]}, *STEPS[1:]])]}, "model 'see', field 'steps': model see: steps ['decode', 'classify', 'top'] cannot run: a cycle"),
    ({"models": [vision([*STEPS, {"name": "extra", "op": "preprocess", "inputs": ["image"], "outputs": ["more"]}])]},
     "model 'see', field 'steps': model see: steps ['extra'] are unreachable"),
    ({"models": [vision([STEPS[0], {**STEPS[1], "backend": "gpu"}, STEPS[2]])]}, "model 'see', field 'steps.classify.backend': unknown backend 'gpu'"),
    ({"models": [vision([STEPS[0], {**STEPS[1], "op": "sharpen"}, STEPS[2]])]}, "model 'see', field 'steps.1': step classify: unknown op 'sharpen'"),
])
def test_bad_catalogs_are_refused_naming_file_model_and_field(tmp_path: Path, doc: dict[str, Any], expected: str) -> None:
    msg = refused(tmp_path, doc)
    assert msg.startswith(str(tmp_path / "catalog.yaml")) and expected in msg, msg


def test_backends_need_a_v2_engine(tmp_path: Path) -> None:
    path = write(tmp_path, "c.json", {"backends": {"b": {"engine": "vllm", "model": "x"}}, "models": [vision()]})
    with pytest.raises(CatalogError, match="backend 'b', field 'engine': engine 'vllm' has no adapter for V2 backends"):
        build_catalog([path], env={})


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("models: [\n")
    with pytest.raises(CatalogError, match="broken.yaml: not valid YAML/JSON"):
        build_catalog([bad], env={})
    with pytest.raises(CatalogError, match="missing.yaml: file not found"):
        build_catalog([tmp_path / "missing.yaml"], env={})


def test_overlays_add_replace_and_remove_models(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", {"backends": {"b": {"engine": "triton", "model": "x"}}, "models": [CHAT, vision()]})
    over = write(tmp_path, "over.yaml", {"models": [{**CHAT, "context_length": 512}, {**CHAT, "name": "chat-2"}], "remove": ["see"]})
    cat = build_catalog([base, over], env={})
    assert [m.name for m in cat.registry.models] == ["chat", "chat-2"] and cat.registry.models[0].context_length == 512
    assert cat.v2.models == []
    with pytest.raises(CatalogError, match="over2.yaml: field 'remove': no model 'nope' to remove"):
        build_catalog([base, write(tmp_path, "over2.yaml", {"remove": ["nope"]})], env={})
    with pytest.raises(CatalogError, match="'remove' belongs in an overlay"):
        build_catalog([write(tmp_path, "base2.yaml", {"models": [CHAT], "remove": ["chat"]})], env={})


def test_engine_names_match_the_adapters() -> None:
    assert set(ADAPTERS) == set(LLM_ENGINES)


def test_snapshot_keeps_what_a_job_needs(tmp_path: Path) -> None:
    cat = build_catalog([write(tmp_path, "c.yaml", {"backends": {"b": {"engine": "triton", "model": "x"}, "unused": {"engine": "onnxruntime", "model": "y.onnx"}},
                                                    "models": [CHAT, vision()]})], env={})
    assert cat.snapshot("chat") == {"llm": cat.registry.models[0].model_dump(mode="json")}
    snap = cat.snapshot("see")
    assert snap is not None and snap["v2"]["name"] == "see" and list(snap["backends"]) == ["b"]
    assert cat.snapshot("nope") is None


def test_reload_swaps_only_a_catalog_that_validated(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", {"models": [CHAT]})
    holder = CatalogHolder(build_catalog([path], env={}), [path])
    seen: list[Catalog] = []
    holder.listeners.append(seen.append)
    write(tmp_path, "c.yaml", {"models": [CHAT, {**CHAT, "name": "chat-2"}]})
    assert holder.reload() and holder.current.registry.get("chat-2") is not None and len(seen) == 1
    path.write_text("models: [{name: chat-3, domain: llm, endpoints: []}]\n")
    assert not holder.reload()
    assert holder.current.registry.get("chat-2") is not None and len(seen) == 1

    def refuse(_: Catalog) -> None:
        raise CatalogError("backend file missing")

    write(tmp_path, "c.yaml", {"models": [CHAT]})
    holder.listeners.append(refuse)
    assert not holder.reload() and holder.current.registry.get("chat-2") is not None
