"""FAKE SGLang server: SGLang's HTTP dialect in front of a llama.cpp server. NOT SGLang.

SGLang cannot run on this CPU-only machine (its kernels are CUDA-only), so the platform's SGLang
support is exercised against this stand-in. What is faithful is the *protocol*: routes, request
fields, response and streaming shapes, finish reasons, validation messages and error envelopes,
`/metrics` names, and the `priority` request field (see docs/sglang-fake.md for the SGLang source
files each shape comes from, and for what differs). The tokens are real: every generation is
delegated to a llama.cpp server (`--backend-url`, e.g. `switchyard.devstack.llamacpp`) through its
native `/completion` API (it reports token ids and why generation stopped, which SGLang's
`meta_info` needs) and `/apply-template` (the model's chat template, for `/v1/chat/completions`).

    python -m switchyard.devstack.fake_sglang --port 30000 --backend-url http://127.0.0.1:8080 --model-name smollm2

Native API: POST /generate, GET /health, GET /health_generate, GET /get_model_info (/model_info),
GET /get_server_info (/server_info), GET /get_load, POST /abort_request, GET /metrics.
OpenAI API: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /v1/models/{id}.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal

import httpx
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, field_validator

disable_created_metrics()  # type: ignore[no-untyped-call]  # SGLang's /metrics carries no *_created series
FAKE_VERSION = "0.0.0+fake"  # reported as SGLang's `version`; never mistaken for a real release
JSON = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Request models (field names and defaults as in sglang io_struct.GenerateReqInput,
# sampling_params.SamplingParams and entrypoints/openai/protocol.py)
# ---------------------------------------------------------------------------------------------
class GenerateReqInput(BaseModel):
    model_config = ConfigDict(extra="allow")
    text: str | list[str] | None = None
    input_ids: list[int] | list[list[int]] | None = None
    sampling_params: dict[str, Any] | list[dict[str, Any]] | None = None
    rid: str | list[str] | None = None
    return_logprob: bool | list[bool] | None = None
    stream: bool = False
    priority: int | None = None


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = "default"
    prompt: list[int] | list[list[int]] | str | list[str]
    max_tokens: int = 16
    n: int = 1
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    min_tokens: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False
    echo: bool = False
    rid: str | None = None
    priority: int | None = None

    @field_validator("max_tokens")
    @classmethod
    def validate_max_tokens_positive(cls, v: int | None) -> int | None:  # same rule as SGLang's
        if v is not None and v <= 0:
            raise ValueError("max_tokens must be positive")
        return v


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    messages: list[dict[str, Any]]
    model: str = "default"
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int = 1
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    min_tokens: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float | None = None
    seed: int | None = None
    ignore_eos: bool = False
    rid: str | None = None
    priority: int | None = None


# ---------------------------------------------------------------------------------------------
# Sampling parameters: SGLang defaults, normalisation and verify() messages
# ---------------------------------------------------------------------------------------------
SAMPLING_DEFAULTS: dict[str, Any] = {
    "max_new_tokens": 128, "stop": None, "stop_token_ids": None, "temperature": 1.0, "top_p": 1.0,
    "top_k": -1, "min_p": 0.0, "frequency_penalty": 0.0, "presence_penalty": 0.0,
    "repetition_penalty": 1.0, "min_new_tokens": 0, "n": 1, "ignore_eos": False,
    "skip_special_tokens": True, "no_stop_trim": False, "sampling_seed": None,
}


def verify_sampling(sp: dict[str, Any]) -> dict[str, Any]:
    """SamplingParams(**sp).verify(): same checks, same order, same messages (ValueError)."""
    p = {**SAMPLING_DEFAULTS, **{k: v for k, v in sp.items() if v is not None or k == "max_new_tokens"}}
    if p["temperature"] < 0.0:
        raise ValueError(f"temperature must be non-negative, got {p['temperature']}.")
    if not 0.0 < p["top_p"] <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p['top_p']}.")
    if not 0.0 <= p["min_p"] <= 1.0:
        raise ValueError(f"min_p must be in [0, 1], got {p['min_p']}.")
    if p["top_k"] < -1 or p["top_k"] == 0:
        raise ValueError(f"top_k must be -1 (disable), or at least 1, got {p['top_k']}.")
    if not -2.0 <= p["frequency_penalty"] <= 2.0:
        raise ValueError(f"frequency_penalty must be in [-2, 2], got {p['frequency_penalty']}.")
    if not -2.0 <= p["presence_penalty"] <= 2.0:
        raise ValueError(f"presence_penalty must be in [-2, 2], got {p['presence_penalty']}.")
    if not 0.0 < p["repetition_penalty"] <= 2.0:
        raise ValueError(f"repetition_penalty must be in (0, 2] (1.0 = no penalty), got {p['repetition_penalty']}.")
    if not 0 <= p["min_new_tokens"]:
        raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got {p['min_new_tokens']}.")
    if p["max_new_tokens"] is not None:
        if p["max_new_tokens"] < 0:
            raise ValueError(f"max_new_tokens must be at least 0, got {p['max_new_tokens']}.")
        if not p["min_new_tokens"] <= p["max_new_tokens"]:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens({p['max_new_tokens']})], got {p['min_new_tokens']}.")
    if isinstance(p["stop"], str):
        p["stop"] = [p["stop"]]
    return p


# ---------------------------------------------------------------------------------------------
# Engine state: admission queue (FCFS or priority), metrics, backend calls
# ---------------------------------------------------------------------------------------------
@dataclass(order=True)
class _Waiter:
    key: tuple[int, int]
    fut: asyncio.Future[None] = field(compare=False)


class Engine:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.backend = args.backend_url.rstrip("/")
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0))
        self.context_len = args.context_length
        self.eos_token_id: int | None = None
        self.running: dict[str, int] = {}  # rid -> tokens held (prompt + generated)
        self.tasks: dict[str, asyncio.Task[JSON]] = {}
        self.waiting: list[_Waiter] = []
        self.seq = itertools.count()
        self.last_gen_throughput = 0.0
        self.reg = CollectorRegistry()
        name = args.model_name

        def gauge(metric: str, doc: str) -> Gauge:
            return Gauge(metric, doc, ["model_name"], registry=self.reg).labels(model_name=name)

        def counter(metric: str, doc: str) -> Counter:
            return Counter(metric, doc, ["model_name"], registry=self.reg).labels(model_name=name)

        def histogram(metric: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(metric, doc, ["model_name"], registry=self.reg, buckets=buckets).labels(model_name=name)

        self.m_running = gauge("sglang:num_running_reqs", "The number of running requests.")
        self.m_queue = gauge("sglang:num_queue_reqs", "The number of requests in the waiting queue.")
        self.m_used = gauge("sglang:num_used_tokens", "The number of used tokens.")
        self.m_usage = gauge("sglang:token_usage", "The token usage.")
        self.m_tput = gauge("sglang:gen_throughput", "The generation throughput (token/s).")
        self.m_hit = gauge("sglang:cache_hit_rate", "The prefix cache hit rate.")
        self.m_prompt = counter("sglang:prompt_tokens", "Number of prefill tokens processed.")
        self.m_gen = counter("sglang:generation_tokens", "Number of generation tokens processed.")
        self.m_cached = counter("sglang:cached_tokens", "Number of cached prompt tokens.")
        self.m_reqs = counter("sglang:num_requests", "Number of requests processed.")
        buckets = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
        self.m_ttft = histogram("sglang:time_to_first_token_seconds", "Histogram of time to first token in seconds.", buckets)
        self.m_itl = histogram("sglang:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                               (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1))
        self.m_e2e = histogram("sglang:e2e_request_latency_seconds", "Histogram of End-to-end request latency in seconds", buckets)

    # -- admission: at most max_running_requests run; the rest wait (FCFS, or by priority) --
    def _refresh_gauges(self) -> None:
        used = sum(self.running.values())
        self.m_running.set(len(self.running))
        self.m_queue.set(len(self.waiting))
        self.m_used.set(used)
        self.m_usage.set(used / self.args.max_total_tokens)

    async def admit(self, rid: str, priority: int | None) -> None:
        if len(self.running) < self.args.max_running_requests and not self.waiting:
            self.running[rid] = 0
            self._refresh_gauges()
            return
        prio = priority if priority is not None else (self.args.default_priority_value or 0)
        if self.args.enable_priority_scheduling:
            key = ((prio if self.args.schedule_low_priority_values_first else -prio), next(self.seq))
        else:
            key = (0, next(self.seq))
        w = _Waiter(key, asyncio.get_running_loop().create_future())
        heapq.heappush(self.waiting, w)
        self._refresh_gauges()
        try:
            await w.fut
        except asyncio.CancelledError:
            if w in self.waiting:
                self.waiting.remove(w)
                heapq.heapify(self.waiting)
            elif w.fut.done() and not w.fut.cancelled():  # admitted just as we left
                self.release(rid)
            self._refresh_gauges()
            raise
        self.running[rid] = 0
        self._refresh_gauges()

    def release(self, rid: str) -> None:
        self.running.pop(rid, None)
        while self.waiting and len(self.running) < self.args.max_running_requests:
            w = heapq.heappop(self.waiting)
            if not w.fut.done():
                self.running[f"__reserved_{id(w)}"] = 0  # hold the slot until the waiter takes it
                w.fut.set_result(None)
                asyncio.get_running_loop().call_soon(self.running.pop, f"__reserved_{id(w)}", None)
                break
        self._refresh_gauges()

    # -- backend helpers --
    async def backend_ok(self) -> bool:
        try:
            r = await self.client.get(f"{self.backend}/health", timeout=5)
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    async def eos_id(self) -> int | None:
        if self.eos_token_id is None:
            try:
                props = (await self.client.get(f"{self.backend}/props")).json()
                tok = (await self.client.post(f"{self.backend}/tokenize", json={"content": props.get("eos_token", ""), "parse_special": True})).json()
                self.eos_token_id = (tok.get("tokens") or [None])[0]
            except (httpx.HTTPError, ValueError):
                return None
        return self.eos_token_id

    async def count_tokens(self, prompt: str | list[int]) -> int:
        if isinstance(prompt, list):
            return len(prompt)
        r = await self.client.post(f"{self.backend}/tokenize", json={"content": prompt, "add_special": True, "parse_special": True})
        return len(r.json()["tokens"])

    async def chat_prompt(self, messages: list[dict[str, Any]]) -> str:
        r = await self.client.post(f"{self.backend}/apply-template", json={"messages": messages})
        if r.status_code != 200:
            raise ValueError(r.json().get("error", {}).get("message", r.text))
        return str(r.json()["prompt"])

    async def generate_one(self, prompt: str | list[int], sp: dict[str, Any], rid: str, priority: int | None) -> AsyncIterator[dict[str, Any]]:
        """One sequence. Yields SGLang outputs: {'text' (cumulative), 'output_ids', 'meta_info'}."""
        created = time.time()
        n_prompt = await self.count_tokens(prompt)
        if n_prompt >= self.context_len:
            raise ValueError(f"The input ({n_prompt} tokens) is longer than the model's context length ({self.context_len} tokens).")
        max_new = sp["max_new_tokens"] if sp["max_new_tokens"] is not None else self.context_len - n_prompt
        await self.admit(rid, priority)
        body = {
            "prompt": prompt, "stream": True, "return_tokens": True, "cache_prompt": True,
            "n_predict": max_new, "temperature": sp["temperature"], "top_p": sp["top_p"],
            "top_k": 0 if sp["top_k"] == -1 else sp["top_k"], "min_p": sp["min_p"],
            "repeat_penalty": sp["repetition_penalty"], "presence_penalty": sp["presence_penalty"],
            "frequency_penalty": sp["frequency_penalty"], "ignore_eos": sp["ignore_eos"],
            "stop": sp["stop"] or [], "seed": sp["sampling_seed"] if sp["sampling_seed"] is not None else -1,
        }
        text, ids, first, last, cached = "", [], None, None, 0
        pending: JSON | None = None
        meta: JSON = {"id": rid, "finish_reason": None, "prompt_tokens": n_prompt, "weight_version": "default",
                "total_retractions": 0, "completion_tokens": 0, "cached_tokens": 0}
        try:
            if max_new == 0:
                meta["finish_reason"] = {"type": "length", "length": 0}
            else:
                async with self.client.stream("POST", f"{self.backend}/completion", json=body) as r:
                    if r.status_code != 200:
                        err = json.loads(await r.aread() or b"{}").get("error", {})
                        raise ValueError(err.get("message", f"backend status {r.status_code}"))
                    async for line in r.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        d = json.loads(line[6:])
                        now = time.time()
                        if d.get("tokens"):
                            if first is None:
                                first = now
                                self.m_ttft.observe(now - created)
                            elif last is not None:
                                self.m_itl.observe(now - last)
                            last = now
                            ids.extend(d["tokens"])
                            text += d.get("content", "")
                            self.running[rid] = n_prompt + len(ids)
                            self._refresh_gauges()
                            meta.update(completion_tokens=len(ids))
                            # held back one step so that the last token's chunk is the finishing one, as in SGLang
                            if pending is not None:
                                yield pending
                            pending = {"text": text, "output_ids": list(ids), "meta_info": dict(meta)}
                        if d.get("stop"):
                            cached = d.get("timings", {}).get("cache_n", 0)
                            stop_type = d.get("stop_type")
                            if stop_type == "eos":
                                meta["finish_reason"] = {"type": "stop", "matched": await self.eos_id()}
                            elif stop_type == "word":
                                meta["finish_reason"] = {"type": "stop", "matched": d.get("stopping_word", "")}
                            else:
                                meta["finish_reason"] = {"type": "length", "length": max_new}
                            tput = d.get("timings", {}).get("predicted_per_second")
                            if tput:
                                self.last_gen_throughput = tput
                                self.m_tput.set(tput)
                            break
            meta.update(completion_tokens=len(ids), cached_tokens=cached, e2e_latency=time.time() - created)
            self.m_prompt.inc(n_prompt)
            self.m_gen.inc(len(ids))
            self.m_cached.inc(cached)
            self.m_reqs.inc()
            self.m_e2e.observe(time.time() - created)
            if n_prompt:
                self.m_hit.set(cached / n_prompt)
            yield {"text": text, "output_ids": list(ids), "meta_info": meta}
        finally:
            self.release(rid)


ENGINE: Engine


# ---------------------------------------------------------------------------------------------
# App and SGLang's error envelopes (entrypoints/http_server.py, openai/serving_base.py)
# ---------------------------------------------------------------------------------------------
app = FastAPI()


def openai_error(message: str, err_type: str = "BadRequestError", status_code: int = 400, param: str | None = None) -> JSONResponse:
    """OpenAIServingBase.create_error_response: the flat ErrorResponse."""
    return JSONResponse({"object": "error", "message": message, "type": err_type, "param": param, "code": status_code}, status_code=status_code)


def native_error(e: Exception | str) -> JSONResponse:
    """http_server._create_error_response: what /generate returns on ValueError."""
    return JSONResponse({"error": {"message": str(e)}}, status_code=HTTPStatus.BAD_REQUEST)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # SGLang turns FastAPI's 422 into 400 with type "Bad Request" (message = str(exc) + errors).
    exc_str, errors_str = str(exc), str(exc.errors())
    message = f"{exc_str} {errors_str}" if errors_str and errors_str != exc_str else exc_str
    return openai_error(message, HTTPStatus.BAD_REQUEST.phrase, 400)


@app.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return openai_error(str(exc.detail), str(exc.status_code), exc.status_code)


Prompt = str | list[int]


def _as_list(x: Any, n: int) -> list[Any]:
    return list(x) if isinstance(x, list) else [x] * n


async def _run_batch(prompts: list[Prompt], sps: list[JSON], rids: list[str], priority: int | None) -> list[JSON]:
    async def last(i: int) -> JSON:
        final: JSON = {}
        async for step in ENGINE.generate_one(prompts[i], sps[i], rids[i], priority):
            final = step
        return final
    tasks = [asyncio.create_task(last(i)) for i in range(len(prompts))]
    for rid, t in zip(rids, tasks, strict=False):
        ENGINE.tasks[rid] = t
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for rid in rids:
            ENGINE.tasks.pop(rid, None)


async def _merge(gens: list[AsyncIterator[JSON]], tag_index: bool) -> AsyncIterator[JSON]:
    q: asyncio.Queue[tuple[int, JSON | None, BaseException | None]] = asyncio.Queue()

    async def pump(i: int, g: AsyncIterator[JSON]) -> None:
        try:
            async for out in g:
                await q.put((i, out, None))
        except Exception as e:  # handed to the consumer, which re-raises it
            await q.put((i, None, e))
        await q.put((i, None, StopAsyncIteration()))
    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(gens)]
    done = 0
    try:
        while done < len(gens):
            i, out, err = await q.get()
            if isinstance(err, StopAsyncIteration):
                done += 1
            elif err is not None:
                raise err
            elif out is not None:
                yield ({**out, "index": i} if tag_index else out)
    finally:
        for t in tasks:
            t.cancel()


def _expand(obj: GenerateReqInput) -> tuple[list[Prompt], list[JSON], list[str], bool]:
    """GenerateReqInput.normalize_batch_and_arguments + verify (ValueError on bad input)."""
    if obj.text is None and obj.input_ids is None:
        raise ValueError("Either text, input_ids or input_embeds should be provided.")
    prompts: list[Prompt]
    if obj.text is not None:
        prompts, batched = (list(obj.text) if isinstance(obj.text, list) else [obj.text]), isinstance(obj.text, list)
    else:
        ids: list[Any] = obj.input_ids or []
        batched = bool(ids) and isinstance(ids[0], list)
        prompts = list(ids) if batched else [ids]
    sps = [verify_sampling(sp or {}) for sp in _as_list(obj.sampling_params, len(prompts))]
    if len(sps) != len(prompts):
        raise ValueError("The length of sampling_params should match the batch size.")
    rids = _as_list(obj.rid, len(prompts)) if obj.rid is not None else [uuid.uuid4().hex for _ in prompts]
    # parallel sampling (n > 1): each prompt is repeated n times, like SGLang's batch expansion
    p2: list[Prompt] = []
    s2: list[JSON] = []
    r2: list[str] = []
    for p, sp, rid in zip(prompts, sps, rids, strict=False):
        for k in range(sp["n"]):
            p2.append(p)
            s2.append(sp)
            r2.append(rid if sp["n"] == 1 else f"{rid}_{k}")
    return p2, s2, r2, batched or len(p2) > 1


@app.api_route("/generate", methods=["POST", "PUT"])
async def generate(obj: GenerateReqInput, request: Request) -> Response:
    if obj.stream:
        async def stream() -> AsyncIterator[bytes]:
            try:
                prompts, sps, rids, batched = _expand(obj)
                gens = [ENGINE.generate_one(p, sp, rid, obj.priority) for p, sp, rid in zip(prompts, sps, rids, strict=False)]
                async for out in _merge(gens, tag_index=batched):
                    yield b"data: " + json.dumps(out).encode() + b"\n\n"
            except ValueError as e:  # SGLang: error event inside the 200 stream, then [DONE]
                yield b"data: " + json.dumps({"error": {"message": str(e)}}).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
        return StreamingResponse(stream(), media_type="text/event-stream")
    try:
        prompts, sps, rids, batched = _expand(obj)
        outs = await _run_batch(prompts, sps, rids, obj.priority)
    except ValueError as e:
        return native_error(e)
    except asyncio.CancelledError:
        return native_error("Aborted")
    return JSONResponse(outs if batched else outs[0])


@app.get("/health")
async def health() -> Response:
    return Response(status_code=200 if await ENGINE.backend_ok() else 503)


@app.get("/health_generate")
async def health_generate() -> Response:
    """Like SGLang: generate one token; 200 if anything comes back within the timeout, else 503."""
    if len(ENGINE.running) > 0:  # SGLang: a busy server is healthy by definition
        return Response(status_code=200)
    try:
        async with asyncio.timeout(ENGINE.args.health_check_timeout):
            r = await ENGINE.client.post(f"{ENGINE.backend}/completion", json={"prompt": [0], "n_predict": 1, "temperature": 0})
        return Response(status_code=200 if r.status_code == 200 else 503)
    except (httpx.HTTPError, TimeoutError):
        return Response(status_code=503)


@app.get("/get_model_info")
@app.get("/model_info")
async def get_model_info() -> JSON:
    return {"model_path": ENGINE.args.model_path, "tokenizer_path": ENGINE.args.model_path, "is_generation": True,
            "preferred_sampling_params": None, "weight_version": "default"}


def _server_args() -> JSON:
    a = ENGINE.args
    return {"model_path": a.model_path, "tokenizer_path": a.model_path, "served_model_name": a.model_name,
            "host": a.host, "port": a.port, "context_length": a.context_length, "device": "cpu", "tp_size": 1,
            "dp_size": 1, "max_running_requests": a.max_running_requests, "max_total_tokens": a.max_total_tokens,
            "schedule_policy": "fcfs", "enable_priority_scheduling": a.enable_priority_scheduling,
            "schedule_low_priority_values_first": a.schedule_low_priority_values_first,
            "default_priority_value": a.default_priority_value, "enable_metrics": True,
            "stream_output": False, "incremental_streaming_output": False}


@app.get("/get_server_info")
@app.get("/server_info")
async def get_server_info() -> JSON:
    return {**_server_args(), "max_total_num_tokens": ENGINE.args.max_total_tokens,
            "max_req_input_len": ENGINE.args.context_length - 1,
            "internal_states": [{"last_gen_throughput": ENGINE.last_gen_throughput, "avg_spec_accept_length": None}],
            "version": FAKE_VERSION, "fake": True, "fake_backend_url": ENGINE.backend}


@app.get("/get_load")
async def get_load() -> list[JSON]:
    return [{"dp_rank": 0, "num_reqs": len(ENGINE.running) + len(ENGINE.waiting), "num_waiting_reqs": len(ENGINE.waiting),
             "num_tokens": sum(ENGINE.running.values())}]


class AbortReq(BaseModel):
    rid: str = ""
    abort_all: bool = False


@app.post("/abort_request")
async def abort_request(obj: AbortReq) -> Response:
    for rid, t in list(ENGINE.tasks.items()):
        if obj.abort_all or rid == obj.rid or rid.startswith(f"{obj.rid}_"):
            t.cancel()
    return Response(status_code=200)


@app.get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(ENGINE.reg), media_type=CONTENT_TYPE_LATEST)


# ---------------------------------------------------------------------------------------------
# OpenAI-compatible routes (SGLang's response shapes: matched_stop, metadata, reasoning fields)
# ---------------------------------------------------------------------------------------------
def _model_card() -> JSON:
    return {"id": ENGINE.args.model_name, "object": "model", "created": int(time.time()), "owned_by": "sglang",
            "root": ENGINE.args.model_name, "parent": None, "max_model_len": ENGINE.context_len}


@app.get("/v1/models")
async def models() -> JSON:
    return {"object": "list", "data": [_model_card()]}


@app.get("/v1/models/{model:path}")
async def retrieve_model(model: str) -> JSONResponse:
    if model != ENGINE.args.model_name:
        return JSONResponse({"error": {"message": f"The model '{model}' does not exist", "type": "invalid_request_error",
                                       "param": "model", "code": "model_not_found"}}, status_code=404)
    return JSONResponse(_model_card())


def _finish(fr: JSON | None) -> tuple[str | None, int | str | None]:
    if not fr:
        return None, None
    return fr["type"], fr.get("matched")


def _usage(outs: list[JSON], n: int) -> JSON:
    prompt = sum(o["meta_info"]["prompt_tokens"] for i, o in enumerate(outs) if i % n == 0)
    completion = sum(o["meta_info"]["completion_tokens"] for o in outs)
    return {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion,
            "prompt_tokens_details": None, "reasoning_tokens": 0}


async def _openai(kind: Literal["chat", "text"], req: ChatCompletionRequest | CompletionRequest) -> Response:
    try:
        prompts: list[Prompt]
        if isinstance(req, ChatCompletionRequest):
            prompts = [await ENGINE.chat_prompt(req.messages)]
            max_new = req.max_completion_tokens or req.max_tokens
        else:
            p: Any = req.prompt
            prompts = list(p) if (isinstance(p, list) and p and not isinstance(p[0], int)) else [p]
            max_new = req.max_tokens
        sp = verify_sampling({
            "max_new_tokens": max_new, "stop": req.stop, "temperature": req.temperature, "top_p": req.top_p,
            "top_k": req.top_k, "min_p": req.min_p, "repetition_penalty": req.repetition_penalty,
            "presence_penalty": req.presence_penalty, "frequency_penalty": req.frequency_penalty,
            "min_new_tokens": req.min_tokens, "n": req.n, "ignore_eos": req.ignore_eos, "sampling_seed": req.seed,
        })
    except ValueError as e:
        return openai_error(str(e))
    rid = req.rid or uuid.uuid4().hex
    cid = rid  # recent SGLang answers with the request's rid: a bare uuid4 hex, no "chatcmpl-" prefix
    all_prompts = [p for p in prompts for _ in range(req.n)]
    rids = [f"{rid}_{i}" if len(all_prompts) > 1 else rid for i in range(len(all_prompts))]
    created, model = int(time.time()), req.model

    if not req.stream:
        try:
            outs = await _run_batch(all_prompts, [sp] * len(all_prompts), rids, req.priority)
        except ValueError as e:
            return openai_error(str(e))
        choices = []
        for i, o in enumerate(outs):
            fr, matched = _finish(o["meta_info"]["finish_reason"])
            if kind == "chat":
                choices.append({"index": i, "message": {"role": "assistant", "content": o["text"], "reasoning_content": None,
                                "tool_calls": None}, "logprobs": None, "finish_reason": fr, "matched_stop": matched})
            else:
                choices.append({"index": i, "text": o["text"], "logprobs": None, "finish_reason": fr, "matched_stop": matched})
        return JSONResponse({"id": cid, "object": "chat.completion" if kind == "chat" else "text_completion",
                             "created": created, "model": model, "choices": choices, "usage": _usage(outs, req.n),
                             "metadata": {"weight_version": "default"}})

    include_usage = bool((req.stream_options or {}).get("include_usage"))
    obj_name = "chat.completion.chunk" if kind == "chat" else "text_completion"

    def chunk(i: int, delta: str, fr: str | None = None, matched: Any = None, first: bool = False) -> bytes:
        if kind == "chat":  # DeltaMessage: every field present, null when unused; the finish chunk is all null
            d = {"role": "assistant" if first else None, "content": None if fr else delta,
                 "reasoning_content": None, "tool_calls": None}
            choice = {"index": i, "delta": d, "logprobs": None, "finish_reason": fr, "matched_stop": matched}
        else:
            choice = {"index": i, "text": delta, "logprobs": None, "finish_reason": fr, "matched_stop": matched}
        return b"data: " + json.dumps({"id": cid, "object": obj_name, "created": created, "model": model,
                                       "choices": [choice], "usage": None}).encode() + b"\n\n"

    async def stream() -> AsyncIterator[bytes]:
        sent = [0] * len(all_prompts)
        finals: dict[int, JSON] = {}
        try:
            if kind == "chat":
                for i in range(len(all_prompts)):
                    yield chunk(i, "", first=True)
            gens = [ENGINE.generate_one(p, sp, r, req.priority) for p, r in zip(all_prompts, rids, strict=False)]
            async for out in _merge(gens, tag_index=True):
                i = out["index"]
                delta = out["text"][sent[i]:]
                sent[i] = len(out["text"])
                fr = out["meta_info"]["finish_reason"]
                if delta:
                    yield chunk(i, delta)
                if fr:
                    finals[i] = out
                    t, matched = _finish(fr)
                    yield chunk(i, "", t, matched)
            if include_usage:
                outs = [finals[i] for i in sorted(finals)]
                yield b"data: " + json.dumps({"id": cid, "object": obj_name, "created": created, "model": model,
                                               "choices": [], "usage": _usage(outs, req.n)}).encode() + b"\n\n"
        except ValueError as e:
            yield b"data: " + json.dumps({"error": {"object": "error", "message": str(e), "type": "BadRequestError",
                                                     "param": None, "code": 400}}).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")


@app.post("/v1/chat/completions")
async def chat_completions(req: ChatCompletionRequest) -> Response:
    return await _openai("chat", req)


@app.post("/v1/completions")
async def completions(req: CompletionRequest) -> Response:
    return await _openai("text", req)


def main() -> None:
    global ENGINE
    ap = argparse.ArgumentParser(description="FAKE SGLang server (protocol stand-in; tokens from a llama.cpp server)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--backend-url", required=True, help="llama.cpp server base URL")
    ap.add_argument("--model-name", required=True, help="served model name (SGLang --served-model-name)")
    ap.add_argument("--model-path", default=None, help="reported as model_path (default: the model name)")
    ap.add_argument("--context-length", type=int, default=2048)
    ap.add_argument("--max-running-requests", type=int, default=4)
    ap.add_argument("--max-total-tokens", type=int, default=8192, help="denominator of sglang:token_usage")
    ap.add_argument("--enable-priority-scheduling", action="store_true")
    ap.add_argument("--schedule-low-priority-values-first", action="store_true")
    ap.add_argument("--default-priority-value", type=int, default=None)
    ap.add_argument("--health-check-timeout", type=float, default=20.0)
    args = ap.parse_args()
    args.model_path = args.model_path or args.model_name
    ENGINE = Engine(args)
    print(f"FAKE SGLang (protocol stand-in) serving {args.model_name} on http://{args.host}:{args.port}, "
          f"tokens from llama.cpp at {args.backend_url}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
