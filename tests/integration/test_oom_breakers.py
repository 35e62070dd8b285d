"""Out-of-memory answers and engine breakers on the real stack (Temporal, worker-llm, llama.cpp).

Each model added here (catalog overlay, reloaded) has an endpoint behind a **fault injector**: an
HTTP proxy in front of the stack's real llama.cpp server that answers with llama.cpp's own error
responses (status code and body as llama.cpp sends them) for as long as a test asks, counts them,
and otherwise passes the request through to llama.cpp. A test first shows the fault took hold (the
injector's counts), then what the platform did about it.
"""

from __future__ import annotations

import http.server
import json
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from conftest import BREAKER_FAIL_MAX as API_BREAKER_FAIL_MAX  # pants: no-infer-dep
from conftest import BREAKER_RESET_S as API_BREAKER_RESET_S  # pants: no-infer-dep
from conftest import eventually  # pants: no-infer-dep
from http_injector import HttpInjector  # pants: no-infer-dep (a test util beside this file)

from switchyard.devstack.client import JobClient, llm_job
from switchyard.devstack.stack import CATALOG_READERS, LLM_MODEL, Stack

# llama.cpp server's answers (tools/server/server-context.cpp). A streamed request gets its 200 and
# headers once its prompt starts; a failed llama_decode then ends the stream with an in-band error
# (format_oai_sse({"error": ...})). No room left in the KV cache, even for one token: 500 server_error.
LLAMACPP_OOM = {"code": 500, "message": "Context size has been exceeded.", "type": "server_error"}
# A prompt longer than the slot's context is refused before anything runs: 400 exceed_context_size_error.
LLAMACPP_TOO_LONG = {"code": 400, "message": "the request exceeds the available context size, try increasing it",
                     "type": "exceed_context_size_error", "n_prompt_tokens": 4100, "n_ctx": 2048}
GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


class EngineFaultInjector(HttpInjector):
    """A fault injector (a test stand-in): answers generation requests with llama.cpp's own errors
    while ``fault`` is set and ``faults_left`` > 0, else proxies to the real llama.cpp server.

    fault: ``oom`` (200 + in-band KV-cache error), ``too_long`` (400), ``down`` (the connection is
    closed with no answer, as a crashed engine's would be). ``counts``: generation and embedding
    requests by what they got (``oom``, ``too_long``, ``down``, ``passed``).
    """

    def __init__(self, target_port: int) -> None:
        super().__init__("engine-fault-injector", protocol_version="HTTP/1.0")  # one request per connection; the body ends with it
        self.target = f"http://127.0.0.1:{target_port}"
        self.fault: str | None = None
        self.faults_left = 0
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._upstream = httpx.Client(timeout=120)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> EngineFaultInjector:
        super().start()
        return self

    def stop(self) -> None:
        super().stop()
        self._upstream.close()

    def inject(self, fault: str | None, times: int = 1_000_000) -> None:
        with self._lock:
            self.fault, self.faults_left = fault, times

    def _take_fault(self, generation: bool) -> str | None:
        with self._lock:
            if self.fault == "down" and self.faults_left > 0:  # down for every route, health included
                self.faults_left -= generation
                return "down"
            if generation and self.fault and self.faults_left > 0:
                self.faults_left -= 1
                return self.fault
            return None

    def handle(self, req: http.server.BaseHTTPRequestHandler) -> None:
        body = req.rfile.read(int(req.headers.get("content-length") or 0))
        generation = req.command == "POST" and req.path in GENERATION_PATHS
        fault = self._take_fault(generation)
        if generation:
            self.counts[fault or "passed"] += 1
        if fault == "down":
            req.close_connection = True  # nothing written: the client sees the connection drop
            return
        if fault == "oom":
            self.answer(req, 200, {"Content-Type": "text/event-stream"}, f"data: {json.dumps({'error': LLAMACPP_OOM})}\n\n".encode())
            return
        if fault == "too_long":
            self.answer(req, 400, {"Content-Type": "application/json; charset=utf-8"}, json.dumps({"error": LLAMACPP_TOO_LONG}).encode())
            return
        # One upstream connection per request: llama.cpp's HTTP threads are few, and an idle kept-alive
        # connection holds one until its 5 s keep-alive runs out (a new one waits that long for a thread).
        headers = {k: v for k, v in req.headers.items() if k.lower() not in ("host", "content-length", "connection")} | {"Connection": "close"}
        with self._upstream.stream(req.command, self.target + req.path, content=body, headers=headers) as r:
            req.send_response(r.status_code)
            for k, v in r.headers.items():
                if k.lower() not in HOP_BY_HOP:
                    req.send_header(k, v)
            req.end_headers()
            for chunk in r.iter_raw():
                req.wfile.write(chunk)
                req.wfile.flush()


OOM_SWITCH, OOM_ONCE, TOO_LONG, BROKEN, BROKEN_ONLY = "oom-switch", "oom-once", "oom-too-long", "breaker-fallback", "breaker-only"
EMBED_BROKEN = "breaker-embed"
OOM_SWITCH_AFTER = 2  # worker-llm's default (SWITCHYARD_LLM_OOM_SWITCH_AFTER)
BREAKER_FAIL_MAX, BREAKER_RESET_S = 5, 5.0  # worker-llm's defaults (SWITCHYARD_ENGINE_BREAKER_*)


def _reloads(stack: Stack, name: str) -> int:
    log = stack.cfg.state_dir / "logs" / f"{name}.log"
    return log.read_text().count('"catalog reload') if log.exists() else 0


def _reload_with(stack: Stack, overlay: dict[str, Any]) -> None:
    """Rewrite the tests' reload overlay (conftest's last overlay), SIGHUP every catalog reader, wait for each."""
    stack.cfg.catalog_overlays[-1].write_text(yaml.safe_dump(overlay))
    before = {n: _reloads(stack, n) for n in CATALOG_READERS}
    stack.reload_catalog()
    eventually(lambda: all(_reloads(stack, n) > before[n] for n in CATALOG_READERS), "every process to reload its catalog")


@pytest.fixture(scope="module")
def injectors(stack: Stack) -> Iterator[dict[str, EngineFaultInjector]]:
    made = {name: EngineFaultInjector(stack.cfg.engine_port).start() for name in (OOM_SWITCH, OOM_ONCE, TOO_LONG, BROKEN, EMBED_BROKEN)}
    direct = {"engine": "llamacpp", "url": f"http://127.0.0.1:{stack.cfg.engine_port}", "engine_model": LLM_MODEL}

    def via(name: str) -> dict[str, str]:
        return {**direct, "url": made[name].url}

    models = {OOM_SWITCH: [via(OOM_SWITCH), direct], OOM_ONCE: [via(OOM_ONCE)], TOO_LONG: [via(TOO_LONG), direct],
              BROKEN: [via(BROKEN), direct], BROKEN_ONLY: [via(BROKEN)]}  # BROKEN_ONLY shares BROKEN's endpoint (and breaker)
    chat = [{"name": n, "domain": "llm", "kind": "chat", "context_length": 2048, "endpoints": e} for n, e in models.items()]
    embed = {"name": EMBED_BROKEN, "domain": "llm", "kind": "embedding", "context_length": 2048, "endpoints": [via(EMBED_BROKEN)]}
    _reload_with(stack, {"models": [*chat, embed]})
    try:
        yield made
    finally:
        _reload_with(stack, {"models": []})
        for injector in made.values():
            injector.stop()


def job(model: str, **extra: Any) -> dict[str, Any]:
    return {**llm_job("Name a colour.", max_tokens=3), "model": model, **extra}


def wait_done(client: JobClient, job_id: str, timeout_s: float = 90) -> dict[str, Any]:
    holder: dict[str, Any] = {}

    def done() -> bool:
        holder.update(client.get(job_id))
        return holder["status"] in ("succeeded", "failed", "cancelled")

    eventually(done, f"job {job_id} to end", timeout_s)
    return holder


def breaker_state(stack: Stack, target: str) -> float | None:
    """``switchyard_breaker_state{target}`` on worker-llm's /metrics page (None: no such series)."""
    page = httpx.get(f"http://127.0.0.1:{stack.cfg.worker_llm_metrics_port}/metrics", timeout=5).text
    m = re.search(rf'^switchyard_breaker_state{{target="{re.escape(target)}"}} (\S+)$', page, re.M)
    return float(m.group(1)) if m else None


def test_oom_moves_the_job_to_the_next_endpoint_after_n_ooms(client: JobClient, injectors: dict[str, EngineFaultInjector], stack: Stack) -> None:
    injector = injectors[OOM_SWITCH]
    injector.inject("oom")  # this endpoint is out of memory for good
    started = time.monotonic()
    done = wait_done(client, client.submit(job(OOM_SWITCH)))
    # The fault took hold: the endpoint answered OOM, exactly OOM_SWITCH_AFTER times (the count
    # survived the retried attempts: it rides in the heartbeat details), and was then passed over.
    assert injector.counts == Counter(oom=OOM_SWITCH_AFTER)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == OOM_SWITCH_AFTER + 1
    assert done["result"]["endpoint"] == f"llamacpp:http://127.0.0.1:{stack.cfg.engine_port}"
    # Exponential backoff between the attempts (LLM policy: 200 ms, then 400 ms).
    assert time.monotonic() - started >= 0.6


def test_oom_once_then_recovered_on_the_same_endpoint(client: JobClient, injectors: dict[str, EngineFaultInjector]) -> None:
    injector = injectors[OOM_ONCE]
    injector.inject("oom", times=1)
    done = wait_done(client, client.submit(job(OOM_ONCE)))
    assert injector.counts == Counter(oom=1, passed=1)
    assert done["status"] == "succeeded" and done["attempts"] == 2 and done["result"]["text"], done
    assert done["result"]["endpoint"] == f"llamacpp:{injector.url}"


def test_bad_input_is_never_retried_nor_sent_elsewhere(client: JobClient, injectors: dict[str, EngineFaultInjector]) -> None:
    injector = injectors[TOO_LONG]
    injector.inject("too_long")
    done = wait_done(client, client.submit(job(TOO_LONG)))
    assert injector.counts == Counter(too_long=1)  # one call: no retry, no fallback to the model's second endpoint
    assert done["status"] == "failed" and done["attempts"] == 1, done
    assert done["error"]["type"] == "ContextLengthExceeded", done


def test_breaker_opens_fails_over_fast_durable_work_waits_then_one_probe_closes_it(client: JobClient, injectors: dict[str, EngineFaultInjector],
                                                                                   stack: Stack) -> None:
    injector, target = injectors[BROKEN], f"{BROKEN}/llamacpp-0"
    injector.inject("down")
    # Down: each job falls back to the model's second endpoint until the breaker has seen enough.
    for _ in range(BREAKER_FAIL_MAX):
        done = wait_done(client, client.submit(job(BROKEN)))
        assert done["status"] == "succeeded" and done["result"]["endpoint"].endswith(f":{stack.cfg.engine_port}"), done
    assert injector.counts == Counter(down=BREAKER_FAIL_MAX)  # the fault took hold on every call
    assert breaker_state(stack, target) == 2  # open
    opened = time.monotonic()

    # Durable work on the broken endpoint alone: its first attempt fails at once (no call), and the
    # retry waits for the breaker's probe instead of the policy's 200 ms.
    waiting = client.submit(job(BROKEN_ONLY))
    eventually(lambda: client.get(waiting)["attempts"] >= 1, "the first attempt")
    # Other work meanwhile: straight to the fallback endpoint, the broken one not called.
    done = wait_done(client, client.submit(job(BROKEN)))
    assert done["status"] == "succeeded" and done["result"]["endpoint"].endswith(f":{stack.cfg.engine_port}"), done
    assert injector.counts == Counter(down=BREAKER_FAIL_MAX), "an open breaker let a call through"
    assert time.monotonic() - opened < BREAKER_RESET_S, "too slow to see the breaker open; the rest would prove nothing"

    injector.inject(None)  # the engine is back; the breaker does not know yet
    done = wait_done(client, waiting)
    assert done["status"] == "succeeded" and done["result"]["endpoint"] == f"llamacpp:{injector.url}", done
    assert done["attempts"] == 2, done  # one fast failure, then the single probe, which succeeded
    assert time.monotonic() - opened >= BREAKER_RESET_S * 0.9
    assert injector.counts == Counter(down=BREAKER_FAIL_MAX, passed=1)
    assert breaker_state(stack, f"{BROKEN_ONLY}/llamacpp-0") == 0  # closed again (the same endpoint, the same breaker)
    done = wait_done(client, client.submit(job(BROKEN)))
    assert done["result"]["endpoint"] == f"llamacpp:{injector.url}" and injector.counts["passed"] == 2


def test_realtime_embeddings_fail_fast_with_retry_after_then_one_probe_closes_it(stack: Stack, auth: dict[str, str],
                                                                                 injectors: dict[str, EngineFaultInjector]) -> None:
    """The API calls the engine itself for embeddings (no job): its breaker (the realtime lane's
    settings) answers 503 + Retry-After while open, without calling the engine."""
    injector = injectors[EMBED_BROKEN]
    injector.inject("down")
    body = {"model": EMBED_BROKEN, "input": "a cat"}
    with httpx.Client(base_url=stack.ingress, headers=auth, timeout=30) as c:
        for _ in range(API_BREAKER_FAIL_MAX):
            r = c.post("/v1/embeddings", json=body)
            assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable", r.text
        assert injector.counts == Counter(down=API_BREAKER_FAIL_MAX)  # the fault took hold
        r = c.post("/v1/embeddings", json=body)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable", r.text
        assert 1 <= int(r.headers["retry-after"]) <= math.ceil(API_BREAKER_RESET_S)
        assert injector.counts == Counter(down=API_BREAKER_FAIL_MAX), "an open breaker let a call through"
        injector.inject(None)
        time.sleep(API_BREAKER_RESET_S)  # until the probe may go
        r = c.post("/v1/embeddings", json=body)
        assert r.status_code == 200 and r.json()["data"][0]["embedding"], r.text
        assert injector.counts == Counter(down=API_BREAKER_FAIL_MAX, passed=1)
