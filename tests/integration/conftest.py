"""One real Switchyard stack for the integration tests: Temporal dev server, PostgreSQL, Redis,
llama.cpp (SmolLM2-135M), worker-llm, Triton + worker-vision, API and Nginx, on free ports, in one
pytest process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml  # type: ignore[import-untyped]
from fault_proxy import FaultProxy  # pants: no-infer-dep (a test util beside conftest.py)
from otlp_receiver import OtlpReceiver  # pants: no-infer-dep (a test util beside conftest.py)
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode
from tritonclient.utils import InferenceServerException

from switchyard.devstack.client import Event, JobClient
from switchyard.devstack.procs import Proc
from switchyard.devstack.stack import Stack, StackConfig, drop_database
from switchyard.devstack.stack_lock import one_stack_at_a_time

SHIPPED_CATALOG = Path(__file__).resolve().parents[2] / "infra" / "catalog" / "models.yaml"

# The PostgreSQL server the tests create their scratch databases on.
PG_SERVER = os.environ.get("SWITCHYARD_POSTGRES_DSN", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres").rsplit("/", 1)[0]


# Backlog limit per model in the test stack (the overload test fills it).
MAX_PENDING = 12


# Realtime-lane circuit breaker in the test stack: opens after 3 failures, probes after 2 s.
BREAKER_FAIL_MAX = 3
BREAKER_RESET_S = 2.0

FALLBACK_MODEL = "smollm2-with-fallback"
# Catalog overlay (in the stack's state folder) that test_catalog.py rewrites and reloads.
RELOAD_OVERLAY = "catalog-reload.yaml"


def fallback_model(engine_port: int) -> dict[str, object]:
    """A model whose first endpoint is down (nothing listens on port 9): requests fall back to llama.cpp."""
    return {
        "name": FALLBACK_MODEL, "domain": "llm", "kind": "chat", "context_length": 2048,
        "endpoints": [{"engine": "vllm", "url": "http://127.0.0.1:9", "engine_model": "smollm2-135m-instruct"},
                      {"engine": "llamacpp", "url": f"http://127.0.0.1:{engine_port}", "engine_model": "smollm2-135m-instruct"}],
    }


# The same llama.cpp model under the PII policies other than the default `redact` (test_pii.py).
PII_BLOCK_MODEL, PII_PASS_MODEL, PII_BLOCK_EMBED_MODEL = "smollm2-pii-block", "smollm2-pii-pass", "smollm2-embed-pii-block"


def pii_models(engine_port: int) -> list[dict[str, object]]:
    endpoint = {"engine": "llamacpp", "url": f"http://127.0.0.1:{engine_port}", "engine_model": "smollm2-135m-instruct"}
    return [{"name": name, "domain": "llm", "kind": kind, "context_length": 2048, "pii": pii, "endpoints": [endpoint]}
            for name, kind, pii in ((PII_BLOCK_MODEL, "chat", "block"), (PII_PASS_MODEL, "chat", "pass"), (PII_BLOCK_EMBED_MODEL, "embedding", "block"))]


# Shadowed copies of shipped models, every request mirrored (test_shadow.py); the shipped models'
# own shadows sample nothing in the test stack (shadow_sample_rate=0).
SHADOWED = {"vision": "vision-shadowed", "recsys": "recsys-shadowed", "llm": "smollm2-shadowed"}


def shadow_models(engine_port: int) -> list[dict[str, object]]:
    shipped = {m["name"]: m for m in yaml.safe_load(SHIPPED_CATALOG.read_text())["models"]}
    vision = {**shipped["vision-classify"], "name": SHADOWED["vision"], "shadow": {"candidate": "vision-classify-int8", "sample_rate": 1.0}}
    recsys = {**shipped["recsys-rank"], "name": SHADOWED["recsys"], "shadow": {"candidate": "recsys-rank-v2", "sample_rate": 1.0}}
    llm = {"name": SHADOWED["llm"], "domain": "llm", "kind": "chat", "context_length": 2048,
           "endpoints": [{"engine": "llamacpp", "url": f"http://127.0.0.1:{engine_port}", "engine_model": "smollm2-135m-instruct"}],
           "shadow": {"candidate": "smollm2-135m-instruct-vllm", "sample_rate": 1.0}}
    return [vision, recsys, llm]


# Canary and promotion (test_canary.py): copies of vision-classify whose candidate is the int8 model:
# a canary at half the traffic that never rolls back, one whose p99 threshold every request passes
# (rolled back automatically), and one without a canary to promote and roll back by hand.
# An LLM model whose canary candidate (the same llama.cpp model under another name) passes its TTFT
# p99 threshold on every job.
CANARIED = {"split": "vision-canary-split", "slow": "vision-canary-slow", "broken": "vision-canary-broken", "promote": "vision-promote",
            "llm": "smollm2-canary", "llm_candidate": "smollm2-canary-candidate"}


def canary_models(engine_port: int) -> list[dict[str, object]]:
    shipped = {m["name"]: m for m in yaml.safe_load(SHIPPED_CATALOG.read_text())["models"]}
    endpoint = {"engine": "llamacpp", "url": f"http://127.0.0.1:{engine_port}", "engine_model": "smollm2-135m-instruct"}
    llm = [{"name": CANARIED["llm"], "domain": "llm", "kind": "chat", "context_length": 2048, "endpoints": [endpoint],
            "shadow": {"candidate": CANARIED["llm_candidate"], "sample_rate": 0.0,
                       "canary": {"weight": 1.0, "max_error_rate": 1.0, "max_p99_ms": 0.001, "window_s": 300, "min_requests": 2}}},
           {"name": CANARIED["llm_candidate"], "domain": "llm", "kind": "chat", "context_length": 2048, "endpoints": [endpoint]}]

    def copy(name: str, canary: dict[str, object] | None) -> dict[str, object]:
        shadow: dict[str, object] = {"candidate": "vision-classify-int8", "sample_rate": 0.0}
        return {**shipped["vision-classify"], "name": name, "shadow": {**shadow, "canary": canary} if canary else shadow}

    return [copy(CANARIED["split"], {"weight": 0.5, "max_error_rate": 1.0, "max_p99_ms": 600_000, "min_requests": 1_000_000}),
            copy(CANARIED["slow"], {"weight": 1.0, "max_error_rate": 1.0, "max_p99_ms": 0.001, "window_s": 120, "min_requests": 5}),
            copy(CANARIED["broken"], {"weight": 1.0, "max_error_rate": 0.5, "max_p99_ms": 600_000, "window_s": 120, "min_requests": 4}),
            copy(CANARIED["promote"], None), *llm]


@pytest.fixture(scope="session")
def scratch_dsn() -> Iterator[Callable[[], str]]:
    """Hands out fresh database DSNs and drops those databases at the end of the session."""
    made: list[str] = []

    def make() -> str:
        made.append(f"{PG_SERVER}/switchyard_test_{uuid.uuid4().hex[:8]}")
        return made[-1]

    yield make
    for dsn in made:
        drop_database(dsn)


@pytest.fixture(scope="session")
def otlp() -> Iterator[OtlpReceiver]:
    """Where the stack's processes export their traces (a stand-in for a collector; otlp_receiver.py)."""
    receiver = OtlpReceiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture(scope="session")
def feast_proxy() -> Iterator[FaultProxy]:
    """A fault injector (fault_proxy.py) between the recsys worker and Feast's real Redis: test_recsys.py cuts it."""
    proxy = FaultProxy.for_feast(os.environ.get("SWITCHYARD_FEAST_REDIS", "127.0.0.1:6379")).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="session")
def stack(scratch_dsn: Callable[[], str], otlp: OtlpReceiver, feast_proxy: FaultProxy) -> Iterator[Stack]:
    state = Path(tempfile.mkdtemp(prefix="switchyard-test-", dir=os.environ.get("SWITCHYARD_TEST_STATE_DIR")))
    # One activity slot: the priority test needs a saturated worker; the rest does not mind.
    # vision=True, recsys=True: fail (naming build-support/setup-vision.sh / setup-recsys.sh) rather than skip when not set up.
    cfg = StackConfig.ephemeral(state, postgres_dsn=scratch_dsn(), worker_concurrency=1, engine_parallel=2, vision=True, recsys=True, otlp_endpoint=otlp.url, shadow_sample_rate=0.0,
                                feast_redis=feast_proxy.feast_address,  # the recsys worker's Feast Redis, through the fault injector
                                api_env={"SWITCHYARD_MAX_PENDING_PER_MODEL": str(MAX_PENDING),
                                         "SWITCHYARD_BREAKER_FAIL_MAX": str(BREAKER_FAIL_MAX), "SWITCHYARD_BREAKER_RESET_S": str(BREAKER_RESET_S)})
    # Tests add their own models through catalog overlays: the fallback model, and a file the reload
    # tests rewrite (empty until then).
    (state / "catalog-tests.json").write_text(json.dumps({"models": [fallback_model(cfg.engine_port), *pii_models(cfg.engine_port), *shadow_models(cfg.engine_port),
                                                                *canary_models(cfg.engine_port)]}))
    (state / RELOAD_OVERLAY).write_text("models: []\n")
    cfg.catalog_overlays += [state / "catalog-tests.json", state / RELOAD_OVERLAY]
    s = Stack(cfg)
    with one_stack_at_a_time():  # never beside the chaos suite's stack (Pants runs batches in parallel)
        s.start()
        try:
            yield s
        finally:
            s.stop()


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Iterator[httpx.Client]:
    """The development key (every scope, admin included), through Nginx."""
    with httpx.Client(base_url=stack.ingress, headers={"Authorization": f"Bearer {stack.dev_key}"}, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def http(stack: Stack, auth: dict[str, str]) -> Iterator[httpx.Client]:
    """The tests' key (no admin scope), through Nginx."""
    with httpx.Client(base_url=stack.ingress, headers=auth, timeout=120) as c:
        yield c


def freeze_at_first_progress(events: Iterator[Event], triton: Proc) -> list[Event]:
    """Follow a vision job's ``events`` up to its first progress event, then freeze Triton
    (SIGSTOP): the worker hangs inside its next chunk. The events seen so far; ``thaw`` undoes it."""
    assert triton.popen is not None
    seen: list[Event] = []
    for e in events:
        seen.append(e)
        if e.type == "progress":
            os.kill(triton.popen.pid, signal.SIGSTOP)
            break
    return seen


def thaw(triton: Proc) -> None:
    assert triton.popen is not None
    os.kill(triton.popen.pid, signal.SIGCONT)


@pytest.fixture(scope="session")
def api_key(stack: Stack) -> str:
    """The tests' key: tenant "tests", scopes jobs/openai/v2, tier normal."""
    return stack.create_key("tests", ("jobs", "openai", "v2"), "normal", "integration tests")


@pytest.fixture(scope="session")
def auth(api_key: str) -> dict[str, str]:
    """Headers that present ``api_key``."""
    return {"Authorization": f"Bearer {api_key}"}


@pytest.fixture(scope="session")
def gold_key(stack: Stack) -> str:
    """A key of the tests' tenant whose tier is high (its requests may run first)."""
    return stack.create_key("tests", ("jobs", "openai", "v2"), "high", "gold")


@pytest.fixture(scope="session")
def free_key(stack: Stack) -> str:
    """A key of the tests' tenant whose tier is low (its requests never run before others)."""
    return stack.create_key("tests", ("jobs", "openai", "v2"), "low", "free")


@pytest.fixture(scope="session")
def client(stack: Stack, api_key: str) -> JobClient:
    """Talks to the platform through Nginx, as users do, with ``api_key``."""
    return JobClient(stack.ingress, key=api_key)


@pytest.fixture(scope="session")
def oai(stack: Stack, gold_key: str) -> openai.OpenAI:
    """The official OpenAI client, unmodified, pointed at Switchyard's ingress, with ``gold_key``."""
    return openai.OpenAI(base_url=stack.ingress + "/v1", api_key=gold_key, max_retries=0, timeout=120)


def expect_error(fn: Any, status: str, text: str) -> None:
    """``fn`` (a tritonclient call) fails with this status, its message containing ``text``."""
    with pytest.raises(InferenceServerException) as exc:
        fn()
    assert exc.value.status() == status, (exc.value.status(), exc.value.message())
    assert text in (exc.value.message() or ""), exc.value.message()


def workflow_status(stack: Stack, workflow_id: str) -> WorkflowExecutionStatus | None:
    """A workflow's status on the stack's Temporal server; None when there is none."""
    async def describe() -> WorkflowExecutionStatus | None:
        client = await Client.connect(f"127.0.0.1:{stack.cfg.temporal_port}")
        try:
            return (await client.get_workflow_handle(workflow_id).describe()).status
        except RPCError as e:
            if e.status == RPCStatusCode.NOT_FOUND:
                return None
            raise

    return asyncio.run(describe())


def eventually(check: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Wait until ``check()`` holds; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
