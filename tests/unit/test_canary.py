"""Canary and promotion (docs/shadow.md, "Canary and promotion") without the stack: the catalog's
``shadow.canary``, the changes overlay applied on top of the files, the rollback rule on synthetic
outcomes, the outcomes window on the real Redis, and the automatic rollback end to end on the real
PostgreSQL and Redis (two controllers, one acts). tests/integration/test_canary.py runs the stack."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio
import uvicorn
import yaml  # type: ignore[import-untyped]
from redis.asyncio import Redis
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from switchyard.api.openai.rendering import Reply
from switchyard.api.settings import ApiSettings
from switchyard.api.v2.gateway import V2Gateway
from switchyard.common.catalog import Catalog, CatalogError, CatalogHolder, build_catalog
from switchyard.common.db.catalog_changes import ChangeFollower, ChangeStore
from switchyard.common.model_registry import ModelEntry
from switchyard.common.settings import V2Upstream
from switchyard.common.shadow.canary import (
    SERVED_BY,
    CanaryOutcomes,
    CanaryStats,
    RollbackController,
    active_canary,
    canary_snapshot,
    routed_to_candidate,
    stats_of,
    verdict,
)
from switchyard.common.shadow.overlay import AUTOMATIC, CatalogChange, apply_changes, promoted
from switchyard.common.shadow.spec import CanarySpec, ShadowSpec
from switchyard.common.v2.config import V2Model

SHIPPED = Path(__file__).resolve().parents[2] / "infra" / "catalog" / "models.yaml"
REDIS_URL = os.environ.get("SWITCHYARD_REDIS_URL", "redis://127.0.0.1:6379/0")
ENV = {"SWITCHYARD_VLLM_ENABLED": "true"}
CANARY: dict[str, Any] = {"weight": 0.5, "max_error_rate": 0.1, "max_p99_ms": 50, "window_s": 30, "min_requests": 10}


def _overlay(tmp_path: Path, models: list[dict[str, Any]]) -> Path:
    p = tmp_path / "overlay.yaml"
    p.write_text(yaml.safe_dump({"models": models}))
    return p


def _canaried(tmp_path: Path) -> list[Path]:
    """The shipped catalog with canaries on vision-classify and smollm2-135m-instruct (PII policy: block)."""
    shipped = {m["name"]: m for m in yaml.safe_load(SHIPPED.read_text())["models"]}
    vision = {**shipped["vision-classify"], "shadow": {"candidate": "vision-classify-int8", "sample_rate": 0.0, "canary": CANARY}}
    llm = {**shipped["smollm2-135m-instruct"], "pii": "block",
           "shadow": {"candidate": "smollm2-135m-instruct-vllm", "sample_rate": 0.0, "canary": CANARY}}
    return [SHIPPED, _overlay(tmp_path, [vision, llm])]


def change(i: int, model: str, action: str, candidate: str | None = None) -> CatalogChange:
    return CatalogChange(id=i, model=model, action=action, candidate=candidate, actor="ops/alice", reason="test",  # type: ignore[arg-type]
                         created_at=dt.datetime.now(dt.UTC))


# ---------------------------------------------------------------- the catalog's field


def test_the_canary_is_read_from_the_catalog_and_checked(tmp_path: Path) -> None:
    cat = build_catalog(_canaried(tmp_path), ENV)
    vision = cat.v2.get("vision-classify")
    assert vision is not None and vision.shadow is not None
    assert vision.shadow.canary == CanarySpec(**CANARY)
    assert active_canary(vision.shadow) == CanarySpec(**CANARY)
    # Defaults: everything but the weight.
    assert CanarySpec(weight=0.1) == CanarySpec(weight=0.1, max_error_rate=0.05, max_p99_ms=1000, window_s=60, min_requests=20)
    shipped = {m["name"]: m for m in yaml.safe_load(SHIPPED.read_text())["models"]}
    for bad, field in (({"weight": 1.5}, "weight"), ({"weight": 0.5, "max_p99_ms": 0}, "max_p99_ms"), ({"weight": 0.5, "typo": 1}, "typo")):
        body = {**shipped["vision-classify"], "shadow": {"candidate": "vision-classify-int8", "sample_rate": 0.0, "canary": bad}}
        with pytest.raises(CatalogError, match=rf"model 'vision-classify'.*shadow\.canary\.{field}"):
            build_catalog([SHIPPED, _overlay(tmp_path, [body])], ENV)


def test_weight_zero_is_off_and_the_weight_is_the_share_routed() -> None:
    assert active_canary(ShadowSpec(candidate="c", sample_rate=0, canary=CanarySpec(weight=0))) is None
    assert not routed_to_candidate(ShadowSpec(candidate="c", sample_rate=0, canary=CanarySpec(weight=0)))
    assert not routed_to_candidate(ShadowSpec(candidate="c", sample_rate=1))
    half = ShadowSpec(candidate="c", sample_rate=0, canary=CanarySpec(weight=0.3))
    share = sum(routed_to_candidate(half) for _ in range(20_000)) / 20_000
    assert 0.28 < share < 0.32, share  # binomial: sd 0.0032, so this is 6 sd wide


def test_an_llm_canary_job_runs_on_the_candidates_snapshot(tmp_path: Path) -> None:
    files = _canaried(tmp_path)
    cat = build_catalog(files, ENV)
    entry = cat.registry.get("smollm2-135m-instruct")
    assert entry is not None and entry.shadow is not None
    always = entry.model_copy(update={"shadow": entry.shadow.model_copy(update={"canary": CanarySpec(weight=1.0, window_s=30)})})
    snap = canary_snapshot(cat, always)
    assert snap is not None and snap["canary"] == {"model": "smollm2-135m-instruct", "candidate": "smollm2-135m-instruct-vllm", "window_s": 30}
    assert snap["llm"]["name"] == "smollm2-135m-instruct-vllm" and snap["llm"]["endpoints"][0]["engine"] == "vllm"
    assert snap["llm"]["shadow"] is None  # the candidate's job is not shadow-mirrored in turn
    never = entry.model_copy(update={"shadow": entry.shadow.model_copy(update={"canary": CanarySpec(weight=0.0)})})
    assert canary_snapshot(cat, never) is None


# ---------------------------------------------------------------- the overlay


def test_a_promotion_makes_the_candidates_definition_the_models(tmp_path: Path) -> None:
    files = _canaried(tmp_path)
    cat = build_catalog(files, ENV, [change(1, "vision-classify", "promote", "vision-classify-int8"),
                                     change(2, "smollm2-135m-instruct", "promote", "smollm2-135m-instruct-vllm")])
    vision, int8 = cat.v2.get("vision-classify"), cat.v2.get("vision-classify-int8")
    assert isinstance(vision, V2Model) and isinstance(int8, V2Model)
    assert [s.backend for s in vision.steps] == [s.backend for s in int8.steps] == [None, "effnet-int8-triton", None]
    assert vision.shadow is None and vision.name == "vision-classify"
    assert cat.snapshot("vision-classify")["backends"] == {"effnet-int8-triton": {"engine": "triton", "model": "efficientnet_lite0_int8"}}  # type: ignore[index]
    llm = cat.registry.get("smollm2-135m-instruct")
    assert isinstance(llm, ModelEntry) and llm.shadow is None
    assert [(e.engine, e.engine_model) for e in llm.endpoints] == [("vllm", "smollm2-135m-instruct")]
    assert llm.pii == "block"  # the model's own PII policy survives the promotion, never the candidate's
    # The candidate itself is untouched, and so is every other model.
    assert build_catalog(files, ENV).v2.get("vision-classify-int8") == int8


def test_rollbacks_restore_the_checked_in_definition_with_the_canary_off(tmp_path: Path) -> None:
    files = _canaried(tmp_path)
    before = build_catalog(files, ENV).v2.get("vision-classify")
    assert before is not None and before.shadow is not None
    promote, rollback = change(1, "vision-classify", "promote", "vision-classify-int8"), change(2, "vision-classify", "rollback", "vision-classify-int8")
    after = build_catalog(files, ENV, [promote, rollback]).v2.get("vision-classify")
    assert after is not None and after.shadow is not None and after.steps == before.steps
    assert after.shadow.canary is not None and after.shadow.canary.weight == 0 and active_canary(after.shadow) is None
    assert after.model_copy(update={"shadow": None}) == before.model_copy(update={"shadow": None})
    # Resume: the checked-in canary again; a promotion in force is the last change of its model only.
    resumed = build_catalog(files, ENV, [promote, rollback, change(3, "vision-classify", "resume")]).v2.get("vision-classify")
    assert resumed == before
    assert promoted("vision-classify", [promote]) == promote and promoted("vision-classify", [promote, rollback]) is None
    assert promoted("vision-classify", [promote, change(2, "recsys-rank", "rollback")]) == promote


def test_a_change_that_no_longer_applies_is_skipped_not_fatal(tmp_path: Path) -> None:
    files = _canaried(tmp_path)
    bodies = {"a": {"name": "a", "domain": "vision"}}
    assert apply_changes(bodies, [change(1, "gone", "rollback"), change(2, "a", "promote", "also-gone")]) == bodies
    cat = build_catalog(files, ENV, [change(1, "no-such-model", "promote", "x"), change(2, "vision-classify", "promote", "no-such-candidate")])
    assert cat.v2.get("vision-classify") == build_catalog(files, ENV).v2.get("vision-classify")


def test_a_promotion_to_another_kind_of_model_or_a_switched_off_one_is_skipped(tmp_path: Path) -> None:
    files = _canaried(tmp_path)
    plain = build_catalog(files, ENV)
    cat = build_catalog(files, ENV, [change(1, "smollm2-135m-instruct", "promote", "vision-classify"),
                                     change(2, "smollm2-135m-instruct", "promote", "smollm2-135m-embed")])
    assert cat.registry.get("smollm2-135m-instruct") == plain.registry.get("smollm2-135m-instruct")
    off = build_catalog(files, {"SWITCHYARD_VLLM_ENABLED": "false"}, [change(1, "smollm2-135m-instruct", "promote", "smollm2-135m-instruct-vllm")])
    llm = off.registry.get("smollm2-135m-instruct")
    assert llm is not None and llm.endpoints[0].engine == "llamacpp"


def test_the_holder_reloads_with_changes_and_keeps_them_on_sighup_reloads(tmp_path: Path) -> None:
    files = _canaried(tmp_path)
    holder = CatalogHolder(build_catalog(files, ENV), files, ENV)
    assert holder.reload([change(1, "vision-classify", "rollback", "vision-classify-int8")])
    assert active_canary(holder.current.v2.get("vision-classify").shadow) is None  # type: ignore[union-attr]
    assert holder.reload()  # a file reload (SIGHUP) keeps the changes
    assert active_canary(holder.current.v2.get("vision-classify").shadow) is None  # type: ignore[union-attr]
    # A refused reload (here: a worker's listener missing the promoted model's file) keeps the
    # catalog and its changes as they were.
    def refuse(new: Catalog) -> None:
        if new.v2.get("vision-classify").steps[1].backend == "effnet-int8-triton":  # type: ignore[union-attr]
            raise CatalogError("no such model file")

    holder.listeners.append(refuse)
    before = holder.current
    assert not holder.reload([*holder.changes, change(2, "vision-classify", "promote", "vision-classify-int8")])
    assert [c.id for c in holder.changes] == [1] and holder.current is before


# ---------------------------------------------------------------- the rollback rule


def test_the_rule_needs_min_requests_then_either_threshold() -> None:
    spec = CanarySpec(**CANARY)  # max_error_rate 0.1, max_p99_ms 50, min_requests 10
    assert verdict(stats_of([(False, 10.0)] * 9), spec) is None  # 9 < min_requests, however bad
    assert verdict(stats_of([(True, 10.0)] * 9 + [(False, 10.0)]), spec) is None  # 10 % is not over 10 %
    why = verdict(stats_of([(True, 10.0)] * 8 + [(False, 10.0)] * 2), spec)
    assert why is not None and why.startswith("error rate 0.200 over max_error_rate 0.1 (2 errors in 10 candidate requests in the last 30 s)")
    # p99 by nearest rank: 1 slow request in 100 is the p99; 2 in 101 is over it.
    assert stats_of([(True, 10.0)] * 99 + [(True, 500.0)]).p99_ms == 10.0
    assert stats_of([(True, 10.0)] * 99 + [(True, 500.0)] * 2).p99_ms == 500.0
    assert verdict(stats_of([(True, 10.0)] * 99 + [(True, 500.0)]), spec) is None
    why = verdict(stats_of([(True, 10.0)] * 99 + [(True, 500.0)] * 2), spec)
    assert why is not None and why.startswith("p99 500.0 ms over max_p99_ms 50")
    assert stats_of([]) == CanaryStats(requests=0, errors=0, p99_ms=None) and stats_of([]).error_rate == 0.0


# ---------------------------------------------------------------- Redis and PostgreSQL


@pytest_asyncio.fixture
async def redis() -> AsyncIterator[Redis]:
    r = Redis.from_url(REDIS_URL)
    try:
        yield r
    finally:
        await r.aclose()



@pytest.mark.asyncio
async def test_outcomes_are_kept_over_the_window_only(redis: Redis) -> None:
    outcomes = CanaryOutcomes(redis, f"unit-{uuid.uuid4().hex[:8]}")
    now = time.time()
    try:
        await outcomes.record("m", False, 900.0, window_s=10, now=now - 20)  # beyond the window
        for i in range(5):
            await outcomes.record("m", i != 0, 10.0 + i, window_s=10, now=now - i)
        s = await outcomes.window("m", 10, now=now)
        assert (s.requests, s.errors, s.p99_ms) == (5, 1, 14.0)
        # Writing trims what fell out of the window; the key expires when the canary goes quiet.
        assert await redis.zcard(outcomes.key("m")) == 5
        assert 0 < await redis.ttl(outcomes.key("m")) <= 20
        assert (await outcomes.window("other", 10)).requests == 0
    finally:
        await outcomes.clear("m")


@pytest.mark.asyncio
async def test_the_automatic_rollback_stores_a_change_that_every_process_applies(tmp_path: Path, redis: Redis, engine: AsyncEngine) -> None:
    files = _canaried(tmp_path)
    # Two "API processes" and a "worker", each with its own catalog; one database, one Redis.
    holders = [CatalogHolder(build_catalog(files, ENV), files, ENV) for _ in range(3)]
    followers = [ChangeFollower(ChangeStore(engine), h, every_s=0.05) for h in holders]
    outcomes = CanaryOutcomes(redis, make_url(str(engine.url)).database or "x")
    controllers = [RollbackController(outcomes, f) for f in followers[:2]]
    try:
        for _ in range(10):  # at the threshold's edge: healthy enough
            await outcomes.record("vision-classify", True, 20.0, window_s=30)
        assert await asyncio.gather(*(c.tick() for c in controllers)) == [[], []]
        assert await ChangeStore(engine).all() == []
        # The fault takes hold: errors over 10 % in the window.
        for _ in range(5):
            await outcomes.record("vision-classify", False, 20.0, window_s=30)
        results = await asyncio.gather(*(c.tick() for c in controllers))
        # One of the two acted (the lock), the other found nothing to do or the lock held.
        assert sorted(results, key=len) == [[], ["vision-classify"]], results
        rows = await ChangeStore(engine).all()
        assert len(rows) == 1 and rows[0].action == "rollback" and rows[0].actor == AUTOMATIC and rows[0].candidate == "vision-classify-int8"
        assert rows[0].reason.startswith("error rate 0.333 over max_error_rate 0.1 (5 errors in 15 candidate requests")
        # The other processes apply it on their next poll; the window was emptied.
        assert await followers[2].sync()
        for h in holders:
            await ChangeFollower(ChangeStore(engine), h).sync()
            vision = h.current.v2.get("vision-classify")
            assert vision is not None and vision.shadow is not None and active_canary(vision.shadow) is None
            assert active_canary(h.current.registry.get("smollm2-135m-instruct").shadow) is not None  # type: ignore[union-attr]
        assert (await outcomes.window("vision-classify", 30)).requests == 0
        # Nothing more to roll back: a canary at weight 0 is not checked again.
        assert await asyncio.gather(*(c.tick() for c in controllers)) == [[], []]
        # The follower's loop picks up a change made elsewhere by itself.
        task = asyncio.create_task(followers[2].run())
        await ChangeStore(engine).record(model="vision-classify", action="resume", candidate="vision-classify-int8", actor="ops/alice", reason="fixed")
        deadline = time.monotonic() + 5
        while active_canary(holders[2].current.v2.get("vision-classify").shadow) is None:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the follower did not apply the resume"
            await asyncio.sleep(0.05)
        task.cancel()
    finally:
        await outcomes.clear("vision-classify")


def test_a_canary_jobs_answer_names_the_candidate() -> None:
    def headers(model_spec: dict[str, Any] | None) -> dict[str, str]:
        job = SimpleNamespace(id=uuid.uuid4(), created_at=dt.datetime.now(dt.UTC), model="m", model_spec=model_spec)
        return Reply(SimpleNamespace(), job, "chat", 1, False, False).headers  # type: ignore[arg-type]

    assert SERVED_BY not in {k.lower() for k in headers({"llm": {}})}
    canary = headers({"llm": {}, "canary": {"model": "m", "candidate": "m-vllm", "window_s": 60}})
    assert {k.lower(): v for k, v in canary.items()}[SERVED_BY] == "m-vllm"


# ---------------------------------------------------------------- the gateway's routing (stand-in worker)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def failing_candidate_worker() -> Iterator[tuple[str, list[str]]]:
    """A stand-in vision worker (the real one needs Triton): answers the primary in V2 form and
    fails the int8 candidate with a 500, as a worker whose candidate backend is broken does."""
    seen: list[str] = []

    async def infer(request: Request) -> Response:
        model = request.path_params["model"]
        seen.append(model)
        if model == "vision-classify-int8":
            return JSONResponse({"error": "backend effnet-int8-triton: Triton unreachable"}, status_code=500)
        return JSONResponse({"model_name": model, "outputs": []})

    app = Starlette(routes=[Route("/v2/models/{model}/infer", infer, methods=["POST"]), Route("/v2/models/{model}/versions/{v}/infer", infer, methods=["POST"])])
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical", lifespan="off"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        srv.should_exit = True
        thread.join(10)


@pytest.mark.asyncio
async def test_a_failing_candidate_is_counted_but_does_not_open_the_workers_breaker(tmp_path: Path, redis: Redis,
                                                                                    failing_candidate_worker: tuple[str, list[str]]) -> None:
    url, seen = failing_candidate_worker
    shipped = {m["name"]: m for m in yaml.safe_load(SHIPPED.read_text())["models"]}
    vision = {**shipped["vision-classify"], "shadow": {"candidate": "vision-classify-int8", "sample_rate": 0.0,
                                                       "canary": {**CANARY, "weight": 1.0, "min_requests": 3, "max_error_rate": 0.5}}}
    files = [SHIPPED, _overlay(tmp_path, [vision])]
    gateway = V2Gateway(ApiSettings(v2_upstreams={"vision": V2Upstream(http=url)}, breaker_fail_max=2, breaker_reset_s=60, v2_timeout_s=5),
                        CatalogHolder(build_catalog(files, ENV), files, ENV))
    gateway.canary = CanaryOutcomes(redis, f"unit-{uuid.uuid4().hex[:8]}")
    try:
        for _ in range(4):  # twice the breaker's fail_max
            status, _, headers = await gateway.infer_rest("vision-classify", None, b"{}", {"content-type": "application/json"})
            assert (status, headers[SERVED_BY]) == (500, "vision-classify-int8")
        await gateway.canary.close()
        stats = await gateway.canary.window("vision-classify", 30)
        assert (stats.requests, stats.errors) == (4, 4)
        assert verdict(stats, CanarySpec(**{**CANARY, "min_requests": 3, "max_error_rate": 0.5})) is not None
        # The worker's breaker stayed closed: the primary still answers (a version pins it there).
        status, body, headers = await gateway.infer_rest("vision-classify", "1", b"{}", {"content-type": "application/json"})
        assert status == 200 and SERVED_BY not in headers and b'"vision-classify"' in body, (status, body)
        assert seen == ["vision-classify-int8"] * 4 + ["vision-classify"]
    finally:
        await gateway.canary.clear("vision-classify")
        await gateway.close()
