"""LLM jobs through Nginx: submission, SSE and WebSocket streaming, resume, replay, cancel."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import httpx
from websockets.sync.client import connect as ws_connect

from switchyard.devstack.client import Event, JobClient, llm_job, visible_text
from switchyard.devstack.stack import Stack


def _token_indexes(events: list[Event]) -> list[int]:
    return [e.data["index"] for e in events if e.type == "token"]


def test_llm_job_streams_tokens_over_sse(client: JobClient) -> None:
    r = client.http.post("/v1/jobs", json=llm_job(max_tokens=24))
    assert r.status_code == 202
    body = r.json()
    assert body["status"] == "queued" and r.headers["location"] == body["links"]["self"]
    events = list(client.events(body["id"]))
    job = client.get(body["id"])
    assert job["status"] == "succeeded"
    types = [e.type for e in events]
    assert types[0] == "status" and events[0].data == {"status": "queued"}
    assert {"status": "running", "attempt": 1} in [e.data for e in events if e.type == "status"]
    assert types[-2:] == ["result", "status"] and events[-1].data["status"] == "succeeded"
    tokens = _token_indexes(events)
    assert tokens == list(range(len(tokens))) and len(tokens) >= 2
    assert visible_text(events) == job["result"]["text"] != ""
    # Event ids are the resume points: unique and increasing.
    ids = [tuple(map(int, e.id.split("-"))) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert job["usage"]["completion_tokens"] == 24 or job["result"]["finish_reason"] == "stop"
    assert job["attempts"] == 1 and job["timings"]["ttft_ms"] > 0 and job["started_at"] and job["finished_at"]


def test_llm_job_streams_over_websocket_and_resumes(stack: Stack, client: JobClient, auth: dict[str, str]) -> None:
    job_id = client.submit(llm_job(max_tokens=40, ignore_eos=True))
    url = stack.ingress.replace("http://", "ws://") + f"/v1/jobs/{job_id}/ws"
    first: list[dict[str, Any]] = []
    with ws_connect(url, open_timeout=10, additional_headers=auth) as ws:
        while len([m for m in first if m["event"] == "token"]) < 5:
            first.append(json.loads(ws.recv(timeout=30)))
    rest: list[dict[str, Any]] = []
    with ws_connect(url + f"?last_event_id={first[-1]['id']}", open_timeout=10, additional_headers=auth) as ws:
        for raw in ws:
            rest.append(json.loads(raw))
    all_ids = [m["id"] for m in first + rest]
    assert len(all_ids) == len(set(all_ids)), "duplicate event after resume"
    job = client.get(job_id)
    full = list(client.events(job_id))
    assert all_ids == [e.id for e in full], "resumed WebSocket stream differs from the full replay"
    assert rest[-1]["event"] == "status" and rest[-1]["data"]["status"] == "succeeded"
    assert "".join(m["data"]["text"] for m in first + rest if m["event"] == "token") == job["result"]["text"]


def test_reconnect_with_last_event_id_gets_the_rest_without_gap_or_duplicate(client: JobClient) -> None:
    job_id = client.submit(llm_job(max_tokens=60, ignore_eos=True))
    seen: list[Event] = []
    for e in client.events(job_id):
        seen.append(e)
        if e.type == "token" and e.data["index"] == 9:
            break  # drop the connection mid-stream
    assert client.get(job_id)["status"] in ("running", "succeeded")
    rest = list(client.events(job_id, last_event_id=seen[-1].id))
    combined = seen + rest
    full = list(client.events(job_id))
    assert [e.id for e in combined] == [e.id for e in full]
    assert _token_indexes(combined) == list(range(60))
    assert visible_text(combined) == client.get(job_id)["result"]["text"]


def test_finished_job_replays_its_events_then_closes(client: JobClient) -> None:
    job, events = client.run(llm_job(max_tokens=8))
    started = time.monotonic()
    replay = list(client.events(job["id"]))
    assert time.monotonic() - started < 5, "replay of a finished job must close, not hang"
    assert [e.id for e in replay] == [e.id for e in events]
    tail = list(client.events(job["id"], last_event_id=events[-2].id))
    assert [e.id for e in tail] == [events[-1].id]


def _engine_busy(stack: Stack) -> float:
    metrics = httpx.get(f"http://127.0.0.1:{stack.cfg.engine_port}/metrics", timeout=5).text
    m = re.search(r"^llamacpp:requests_processing\s+([0-9.e+]+)", metrics, re.M)
    assert m, metrics[:500]
    return float(m.group(1))


def test_cancel_stops_generation_and_the_engine_request(stack: Stack, client: JobClient) -> None:
    job_id = client.submit(llm_job(max_tokens=4000, ignore_eos=True))
    events: list[Event] = []
    stream = client.events(job_id)
    for e in stream:
        events.append(e)
        if e.type == "token" and e.data["index"] >= 5:
            break
    stream.close()
    assert _engine_busy(stack) >= 1
    r = client.http.delete(f"/v1/jobs/{job_id}")
    assert r.status_code == 202
    rest = list(client.events(job_id, last_event_id=events[-1].id, timeout=30))
    assert rest[-1].type == "status" and rest[-1].data["status"] == "cancelled"
    job = client.get(job_id)
    assert job["status"] == "cancelled" and job["finished_at"]
    assert len(_token_indexes(events + rest)) < 4000
    deadline = time.monotonic() + 10
    while _engine_busy(stack) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _engine_busy(stack) == 0, "the engine kept generating after the cancel"
    again = client.http.delete(f"/v1/jobs/{job_id}")
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_finished"


def test_idempotency_key_returns_the_same_job(client: JobClient) -> None:
    body = llm_job(max_tokens=4)
    key = {"Idempotency-Key": f"test-{time.time_ns()}"}
    a = client.http.post("/v1/jobs", json=body, headers=key)
    b = client.http.post("/v1/jobs", json=body, headers=key)
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] == b.json()["id"] and b.headers.get("idempotent-replayed") == "true"
    other = client.http.post("/v1/jobs", json=llm_job(max_tokens=5), headers=key)
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
    list(client.events(a.json()["id"]))


def test_list_jobs_filters_and_paginates(client: JobClient) -> None:
    ids = {client.run(llm_job(max_tokens=2, metadata={"suite": "list"}))[0]["id"] for _ in range(3)}
    pages: list[str] = []
    cursor: str | None = None
    while True:
        r = client.http.get("/v1/jobs", params={"status": "succeeded", "domain": "llm", "limit": 2, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200
        page = r.json()
        assert len(page["data"]) <= 2 and all(j["status"] == "succeeded" and j["domain"] == "llm" for j in page["data"])
        pages.extend(j["id"] for j in page["data"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert ids <= set(pages) and len(pages) == len(set(pages))
    assert client.http.get("/v1/jobs", params={"status": "failed", "domain": "vision"}).json()["data"] == []
