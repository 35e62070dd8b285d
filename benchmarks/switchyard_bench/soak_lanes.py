"""The soak's traffic (soak.py): one coroutine per request kind, each checking its answer.

A lane's request returns an ``Outcome`` or raises ``Bad`` with a short kind (counted as an error of
that kind). Checks go beyond the status code: the right label for the palace photo, k items for a
known user, an LLM job's streamed text equal to its stored result with no token gap or duplicate
(a token index seen again is only allowed after a ``reset``), every job ending ``succeeded``.
Realtime requests go over the platform's lean HTTP/1.1 client (httpx costs too much CPU per request
on 2 cores, see vision.lean_open_loop); streams and SSE follows over httpx.
"""

from __future__ import annotations

import base64
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import tritonclient.grpc.aio as grpc_aio
import tritonclient.http as httpclient
from httpx_sse import aconnect_sse

from switchyard.common.contracts import RecommendationQuery
from switchyard.common.http1 import Http1Client, Response
from switchyard.devstack.client import Event, llm_job, visible_text
from switchyard.devstack.stack import EMBED_MODEL

TOPICS = ["the sea", "a train", "mountains", "a city at night", "coffee", "a library", "winter", "robots", "a garden", "the moon"]
JSON = {"Content-Type": "application/json"}
VISION = "vision-classify"
RECSYS_MODELS = ("recsys-rank", "recsys-rank-triton")


class Bad(Exception):
    """A request that failed; ``kind`` is what the error table counts."""

    def __init__(self, kind: str, example: str = "") -> None:
        super().__init__(kind)
        self.kind, self.example = kind, example  # example: the error's message, for the table


@dataclass
class Outcome:
    sub: str | None = None  # a finer row of the lane (the LLM model)
    ttft_ms: float | None = None
    resets: int = 0
    injected: bool = False


def _bad(status: int, body: bytes | str, prefix: str = "") -> Bad:
    """``HTTP 503 engine_unavailable`` from the one error shape (or the bare status), its message as the example."""
    try:
        err = json.loads(body).get("error")
        code, message = (err.get("code"), err.get("message")) if isinstance(err, dict) else (None, None)
    except (ValueError, AttributeError):
        code, message = None, None
    text = message or (body.decode(errors="replace") if isinstance(body, bytes) else body)
    return Bad(prefix + f"HTTP {status}" + (f" {code}" if code else ""), str(text)[:300])


def _ok(r: Response) -> Any:
    if r.status != 200:
        raise _bad(r.status, r.body)
    return json.loads(r.body)


@dataclass
class Lanes:
    """Every lane against one stack's ingress (Nginx: HTTP and gRPC)."""

    ingress: str
    grpc_url: str
    key: str
    llm_models: list[str]
    images: dict[str, bytes]
    recsys_queries: list[RecommendationQuery]
    llm_max_tokens: int = 16
    job_max_tokens: int = 32
    http: Http1Client = field(init=False)
    streams: httpx.AsyncClient = field(init=False)
    grpc: grpc_aio.InferenceServerClient = field(init=False)

    def __post_init__(self) -> None:
        self.auth = {"Authorization": f"Bearer {self.key}"}
        self.http = Http1Client.for_url(self.ingress, timeout_s=60)
        self.streams = httpx.AsyncClient(base_url=self.ingress, headers=self.auth, timeout=httpx.Timeout(180, connect=5),
                                         limits=httpx.Limits(max_connections=200, max_keepalive_connections=32))
        self.grpc = grpc_aio.InferenceServerClient(self.grpc_url)
        inp = httpclient.InferInput("image", [1], "BYTES")
        inp.set_data_from_numpy(np.array([self.images["china"]], dtype=object), binary_data=True)
        self._v2_body, size = httpclient.InferenceServerClient.generate_request_body(
            [inp], outputs=[httpclient.InferRequestedOutput("labels", binary_data=False)])
        self._v2_headers = {**self.auth, "Inference-Header-Content-Length": str(size), "Content-Type": "application/octet-stream"}
        g = grpc_aio.InferInput("image", [1], "BYTES")
        g.set_data_from_numpy(np.array([self.images["china"]], dtype=object))
        self._grpc_inputs = [g]
        b64 = {k: base64.b64encode(v).decode() for k, v in self.images.items()}
        self._vision_job = {"domain": "vision", "model": VISION, "input": {"images": [b64["china"], b64["flower"]] * 2, "top_k": 3}}

    async def close(self) -> None:
        await self.http.close()
        await self.streams.aclose()
        await self.grpc.close()

    def _post(self, path: str, body: dict[str, Any] | bytes) -> Any:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.http.request("POST", path, raw, {**JSON, **self.auth})

    # ------------------------------------------------------------------ realtime

    async def llm_chat(self, i: int) -> Outcome:
        """A streamed OpenAI chat completion, the LLM models in turn; TTFT and the whole stream."""
        model = self.llm_models[i % len(self.llm_models)]
        body = {"model": model, "messages": [{"role": "user", "content": f"[{i}] Tell me about {random.choice(TOPICS)}."}],
                "max_tokens": self.llm_max_tokens, "stream": True, "stream_options": {"include_usage": True}}
        t0 = time.perf_counter()
        ttft, done, usage, finish = None, False, None, None
        async with self.streams.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                raise _bad(r.status_code, await r.aread(), f"{model}: ")
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise Bad(f"{model}: error in stream {chunk['error'].get('code')}")
                usage = chunk.get("usage") or usage
                for c in chunk.get("choices") or []:
                    if (c.get("delta") or {}).get("content") and ttft is None:
                        ttft = (time.perf_counter() - t0) * 1000
                    finish = c.get("finish_reason") or finish
        if not done:
            raise Bad(f"{model}: stream ended without [DONE]")
        if ttft is None or finish is None or not usage:
            raise Bad(f"{model}: stream without a token, finish_reason or usage")
        return Outcome(sub=model, ttft_ms=ttft)

    async def embeddings(self, i: int) -> Outcome:
        got = _ok(await self._post("/v1/embeddings", {"model": EMBED_MODEL, "input": f"[{i}] a note about {random.choice(TOPICS)}"}))
        if not got["data"] or len(got["data"][0]["embedding"]) < 64:
            raise Bad("no embedding")
        return Outcome()

    async def vision_v2(self, i: int) -> Outcome:
        """KServe V2 REST infer of vision-classify (the palace photo) through Nginx."""
        r = await self.http.request("POST", f"/v2/models/{VISION}/infer", self._v2_body, self._v2_headers)
        labels = _ok(r)["outputs"][0]["data"]
        if labels[0] != "palace":
            raise Bad(f"wrong label {labels[0]!r}")
        return Outcome()

    async def vision_grpc(self, i: int) -> Outcome:
        """The same over V2 gRPC through Nginx's gRPC ingress."""
        try:
            res = await self.grpc.infer(VISION, self._grpc_inputs, headers={"authorization": f"Bearer {self.key}"})  # gRPC metadata keys are lower-case
        except grpc_aio.InferenceServerException as e:
            raise Bad(f"gRPC {e.status()}") from e
        label = res.as_numpy("labels")[0][0]
        if label != b"palace":
            raise Bad(f"wrong label {label!r}")
        return Outcome()

    async def recsys(self, i: int) -> Outcome:
        """/v1/recommendations, the two ranker backends in turn; every other request ranks given
        candidates, the rest what retrieval finds."""
        q = self.recsys_queries[i % len(self.recsys_queries)]
        body = {**q.model_dump(exclude_none=True), "model": RECSYS_MODELS[i % 2]}
        if i % 4 >= 2:
            body.pop("candidates")
        got = _ok(await self._post("/v1/recommendations", body))
        if got["fallback"] or len(got["items"]) != q.k:
            raise Bad(f"{len(got['items'])} items for k={q.k}, fallback {got['fallback']}")
        return Outcome()

    # ------------------------------------------------------------------ durable jobs, followed over SSE

    async def _job(self, body: dict[str, Any]) -> tuple[str, list[Event], dict[str, Any]]:
        r = await self.streams.post("/v1/jobs", json=body)
        if r.status_code != 202:
            raise _bad(r.status_code, r.content, "submit: ")
        job_id = r.json()["id"]
        events: list[Event] = []
        async with aconnect_sse(self.streams, "GET", f"/v1/jobs/{job_id}/events") as es:
            if es.response.status_code != 200:
                raise _bad(es.response.status_code, await es.response.aread(), "events: ")
            async for sse in es.aiter_sse():
                if sse.data:
                    events.append(Event(sse.id, sse.event, json.loads(sse.data)))
        statuses = [e.data["status"] for e in events if e.type == "status"]
        if not statuses or statuses[-1] not in ("succeeded", "failed", "cancelled"):
            raise Bad("stream closed before the job's end")
        got = await self.streams.get(f"/v1/jobs/{job_id}")
        if got.status_code != 200:
            raise _bad(got.status_code, got.content, "get: ")
        job = got.json()
        if job["status"] != statuses[-1]:
            raise Bad(f"stream ended {statuses[-1]}, row says {job['status']}")
        return job_id, events, job

    @staticmethod
    def _succeeded(job: dict[str, Any]) -> None:
        if job["status"] != "succeeded":
            raise Bad(f"job {job['status']}: {(job.get('error') or {}).get('type')}")

    async def llm_job(self, i: int) -> Outcome:
        model = self.llm_models[i % len(self.llm_models)]
        body = llm_job(f"[{i}] Write about {random.choice(TOPICS)}.", max_tokens=self.job_max_tokens, model=model)
        _, events, job = await self._job(body)
        self._succeeded(job)
        expected, resets = 0, 0
        for e in events:
            if e.type == "reset":
                expected, resets = 0, resets + 1
            elif e.type == "token":
                if e.data["index"] != expected:
                    raise Bad(f"token index {e.data['index']} where {expected} was due (no reset)")
                expected += 1
        if visible_text(events) != job["result"]["text"]:
            raise Bad("streamed text differs from the stored result")
        return Outcome(sub=model, resets=resets)

    async def vision_job(self, i: int) -> Outcome:
        _, events, job = await self._job(self._vision_job)
        self._succeeded(job)
        labels = [p[0]["label"] for p in job["result"]["predictions"]]
        if labels != ["palace", "daisy"] * 2:
            raise Bad(f"wrong labels {labels}")
        if not any(e.type == "progress" for e in events):
            raise Bad("no progress event")
        return Outcome()

    async def recsys_job(self, i: int) -> Outcome:
        users = [self.recsys_queries[(i * 20 + j) % len(self.recsys_queries)].user_id for j in range(20)]
        _, _, job = await self._job({"domain": "recsys", "model": RECSYS_MODELS[i % 2], "input": {"users": users, "k": 5}})
        self._succeeded(job)
        recs = job["result"]["recommendations"]
        if [r["user_id"] for r in recs] != users or any(len(r["items"]) != 5 for r in recs):
            raise Bad("recommendations do not match the users asked for")
        return Outcome()

    # ------------------------------------------------------------------ injected bad input

    async def injected(self, i: int) -> Outcome:
        """One known-bad request (of six kinds in turn), which must get exactly the 4xx (or, for a job,
        the failure) it calls for; anything else is an error."""
        case = i % len(INJECTED)
        what, expected = INJECTED[case]
        if case == 5:
            bad = {"domain": "vision", "model": VISION, "input": {"images": [base64.b64encode(b"this is not a jpeg").decode()]}}
            _, _, job = await self._job(bad)
            got = f"job {job['status']} {(job.get('error') or {}).get('type')}"
        else:
            cases: dict[int, tuple[str, dict[str, Any] | bytes]] = {
                0: ("/v1/jobs", b"{"),
                1: ("/v1/jobs", {"domain": "llm", "model": "no-such-model", "input": {"prompt": "hi"}}),
                2: ("/v1/chat/completions", {"model": self.llm_models[0], "messages": []}),
                3: ("/v1/recommendations", {"user_id": 1, "model": VISION}),
                4: (f"/v2/models/{VISION}/infer", {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["not a jpeg"]}]}),
            }
            path, body = cases[case]
            r = await self._post(path, body)
            got = _bad(r.status, r.body).kind if case != 4 else f"HTTP {r.status}"  # KServe V2 errors are {"error": "<message>"}
        if got != expected:
            raise Bad(f"{what}: expected {expected}, got {got}")
        return Outcome(injected=True)


INJECTED: list[tuple[str, str]] = [
    ("job body not JSON", "HTTP 400 invalid_json"),
    ("job for an unknown model", "HTTP 404 model_not_found"),
    ("chat completion without messages", "HTTP 400 invalid_value"),
    ("recommendations from a vision model", "HTTP 404 model_not_found"),
    ("V2 infer of bytes that are no image", "HTTP 400"),
    ("vision job of bytes that are no image", "job failed InvalidInput"),
]
