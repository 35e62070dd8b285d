"""The model catalog against the running stack: processes refuse a bad one at start-up, `/v1/models`
and the V2 repository index come from it, and SIGHUP reloads it in the API and the workers (a model
added to a running stack serves at once; a bad file leaves the old catalog serving; a removed model
refuses new work while a job accepted before still finishes on it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import tritonclient.http as httpclient
import yaml  # type: ignore[import-untyped]

from switchyard.devstack.client import LLM_MODEL, JobClient, llm_job
from switchyard.devstack.models import sample_images
from switchyard.devstack.procs import python_env
from switchyard.devstack.stack import CATALOG_READERS, Stack

ALIAS = "smollm2-alias"
VISION_ALIAS = "vision-classify-alias"
MSG = [{"role": "user", "content": "Name three colours."}]



def alias_models(stack: Stack) -> list[dict[str, Any]]:
    """A second name on engines that already run: SmolLM2 on llama.cpp, and vision-classify's graph."""
    classify = stack.catalog().v2.get("vision-classify")
    assert classify is not None
    return [
        {"name": ALIAS, "domain": "llm", "kind": "chat", "context_length": 2048,
         "endpoints": [{"engine": "llamacpp", "url": f"http://127.0.0.1:{stack.cfg.engine_port}", "engine_model": LLM_MODEL}]},
        {**classify.model_dump(mode="json"), "name": VISION_ALIAS},
    ]


def reloads(stack: Stack, name: str) -> int:
    log = stack.cfg.state_dir / "logs" / f"{name}.log"
    return log.read_text().count('"catalog reload') if log.exists() else 0


def reload_overlay(stack: Stack) -> Path:
    """The last overlay of the test stack, which conftest leaves empty for these tests."""
    return stack.cfg.catalog_overlays[-1]


def reload_with(stack: Stack, overlay: dict[str, Any] | str) -> None:
    """Rewrite the tests' overlay, SIGHUP every catalog reader, wait until each has acted on it."""
    reload_overlay(stack).write_text(overlay if isinstance(overlay, str) else yaml.safe_dump(overlay))
    before = {n: reloads(stack, n) for n in CATALOG_READERS}
    stack.reload_catalog()
    wait_for(lambda: all(reloads(stack, n) > before[n] for n in CATALOG_READERS), "every process to log its reload")


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def model_ids(client: JobClient) -> set[str]:
    return {m["id"] for m in client.http.get("/v1/models").json()["data"]}


@pytest.fixture
def clean_overlay(stack: Stack) -> Iterator[None]:
    yield
    reload_with(stack, {"models": []})


def test_processes_refuse_a_bad_catalog_naming_file_model_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad-catalog.yaml"
    bad.write_text(yaml.safe_dump({"models": [{"name": "typo-model", "domain": "llm", "kind": "chat",
                                               "endpoints": [{"engine": "triton", "url": "http://127.0.0.1:1", "engine_model": "x"}]}]}))
    for module in ("switchyard.api", "switchyard.worker_llm", "switchyard.worker_vision"):
        env = python_env({"SWITCHYARD_CATALOG": str(bad), "SWITCHYARD_CATALOG_OVERLAYS": ""})
        r = subprocess.run([sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, (module, r.returncode, r.stderr[-2000:])
        assert f"{bad}: model 'typo-model', field 'endpoints.0.engine': engine 'triton' has no adapter for LLM endpoints" in r.stderr, r.stderr[-2000:]


def test_models_and_the_v2_repository_index_come_from_the_catalog(stack: Stack, client: JobClient, auth: dict[str, str]) -> None:
    cat = stack.catalog()
    assert model_ids(client) == set(cat.names)
    v2 = httpclient.InferenceServerClient(stack.ingress.removeprefix("http://"))
    try:
        index = v2.get_model_repository_index(headers=auth)
    finally:
        v2.close()
    assert {(e["name"], e["state"]) for e in index} == {(m.name, "READY") for m in cat.v2.models}
    r = httpx.post(stack.ingress + "/v2/repository/index", content=b"{not json", headers=auth)
    assert r.status_code == 400 and "error" in r.json()


def test_reload_adds_a_model_to_the_running_stack_and_a_bad_file_keeps_the_old_one(stack: Stack, client: JobClient, oai: openai.OpenAI,
                                                                                     auth: dict[str, str], clean_overlay: None) -> None:
    assert ALIAS not in model_ids(client)
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model=ALIAS, messages=MSG, max_tokens=2)  # type: ignore[arg-type]

    reload_with(stack, {"models": alias_models(stack)})
    assert {ALIAS, VISION_ALIAS} <= model_ids(client)
    reply = oai.chat.completions.create(model=ALIAS, messages=MSG, max_tokens=4)  # type: ignore[arg-type]
    assert reply.model == ALIAS and reply.choices[0].message.content
    infer = httpclient.InferenceServerClient(stack.ingress.removeprefix("http://"))
    try:
        image = httpclient.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(np.array([sample_images()["china"]], dtype=object))
        result = infer.infer(VISION_ALIAS, [image], headers=dict(auth))
        assert result.as_numpy("labels")[0][0].decode() == "palace"
    finally:
        infer.close()

    # A bad file: every process logs why and keeps serving what it had.
    reload_with(stack, "models:\n  - {name: broken, domain: llm, kind: chat, endpoints: [{engine: tgi, url: 'http://127.0.0.1:1', engine_model: x}]}\n")
    api_log = (stack.cfg.state_dir / "logs" / "api.log").read_text()
    refused = [json.loads(line) for line in api_log.splitlines() if '"catalog reload refused' in line][-1]
    assert f"{reload_overlay(stack)}: model 'broken', field 'endpoints.0.engine': unknown engine 'tgi'" in refused["error"]
    assert ALIAS in model_ids(client) and "broken" not in model_ids(client)
    assert oai.chat.completions.create(model=ALIAS, messages=MSG, max_tokens=2).choices  # type: ignore[arg-type]


def test_a_removed_model_refuses_new_work_but_an_accepted_job_finishes_on_it(stack: Stack, client: JobClient, clean_overlay: None) -> None:
    reload_with(stack, {"models": alias_models(stack)[:1]})
    worker = stack.procs["worker-llm"].popen
    assert worker is not None
    os.kill(worker.pid, signal.SIGSTOP)  # the job waits in the queue while its model goes away
    try:
        job_id = client.submit({**llm_job(max_tokens=4), "model": ALIAS})
        assert client.get(job_id)["status"] == "queued"
        reload_overlay(stack).write_text("models: []\n")
        stack.reload_catalog()
        wait_for(lambda: ALIAS not in model_ids(client), "the API to drop the model")
        r = client.http.post("/v1/jobs", json={**llm_job(max_tokens=4), "model": ALIAS})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        r = client.http.post("/v1/chat/completions", json={"model": ALIAS, "messages": MSG, "max_tokens": 2})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    events = list(client.events(job_id))
    assert events[-1].data["status"] == "succeeded", events[-3:]
    job = client.get(job_id)
    assert job["model"] == ALIAS and job["result"]["endpoint"] == f"llamacpp:http://127.0.0.1:{stack.cfg.engine_port}"
