"""A small synchronous client of the job API (tests, benchmarks, examples)."""

from __future__ import annotations

import json
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import connect_sse

LLM_MODEL = "smollm2-135m-instruct"


@dataclass
class Event:
    id: str
    type: str
    data: dict[str, Any]


def llm_job(content: str = "Tell me a story about a lighthouse.", *, max_tokens: int = 32, ignore_eos: bool = False, seed: int | None = 7,
            priority: int | str | None = None, **extra: Any) -> dict[str, Any]:
    inp: dict[str, Any] = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "ignore_eos": ignore_eos}
    if seed is not None:
        inp["seed"] = seed
    body: dict[str, Any] = {"domain": "llm", "model": LLM_MODEL, "input": inp, **extra}
    if priority is not None:
        body["priority"] = priority
    return body


class JobClient:
    def __init__(self, base_url: str, timeout: float = 30.0, key: str | None = None) -> None:
        """``key``: the API key sent on every request (``Authorization: Bearer``)."""
        self.base_url = base_url.rstrip("/")
        self.auth = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=self.auth)

    def submit(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> str:
        r = self.http.post("/v1/jobs", json=body, headers=headers)
        r.raise_for_status()
        return str(r.json()["id"])

    def get(self, job_id: str) -> dict[str, Any]:
        r = self.http.get(f"/v1/jobs/{job_id}")
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]

    def events(self, job_id: str, last_event_id: str | None = None, timeout: float = 120.0) -> Generator[Event, None, None]:
        """Follow the SSE stream until the server closes it (the job ended)."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        with httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(timeout, connect=5.0), headers=self.auth) as c:
            with connect_sse(c, "GET", f"/v1/jobs/{job_id}/events", headers=headers) as es:
                es.response.raise_for_status()
                for sse in es.iter_sse():
                    if sse.event in ("", "message") and not sse.data:
                        continue
                    yield Event(sse.id, sse.event, json.loads(sse.data))

    def run(self, body: dict[str, Any]) -> tuple[dict[str, Any], list[Event]]:
        """Submit, follow to the end, return the final job and every event."""
        job_id = self.submit(body)
        events = list(self.events(job_id))
        return self.get(job_id), events


def visible_text(events: list[Event], choice: int = 0) -> str:
    """What a client shows for one choice: its token texts after the last ``reset``."""
    out: list[str] = []
    for e in events:
        if e.type == "reset":
            out = []
        elif e.type == "token" and e.data.get("choice", 0) == choice:
            out.append(e.data["text"])
    return "".join(out)
