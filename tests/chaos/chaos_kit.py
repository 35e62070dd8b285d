"""What every chaos scenario shares: a workload with jobs in flight in every domain, each followed by
a client that resumes its stream as documented, probes that time the recovery, and the invariant
checker (the job's row, its event stream in Redis, and what each client saw).

The followers speak plain SSE through the ingress (httpx + httpx-sse): on a cut stream or an
answer that is not 200 they reconnect with ``Last-Event-ID`` (honouring ``Retry-After``), as
docs/events.md tells clients to.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis
from httpx_sse import connect_sse

from switchyard.common.events import stream_key
from switchyard.devstack.client import Event, llm_job, visible_text
from switchyard.devstack.models import sample_images
from switchyard.devstack.stack import LLM_MODEL, VLLM_MODEL, Stack

TERMINAL = ("succeeded", "failed", "cancelled")
# Feast's users are dense ids 0..1999 (build-support/gen_recsys_data.py).
RECSYS_USERS = 2000


def is_end(e: Event) -> bool:
    return e.type == "status" and e.data.get("status") in TERMINAL


class Follower(threading.Thread):
    """Follows one job's SSE stream to its terminal status, across cuts: every event it receives,
    in order, how often it reconnected and what it was answered meanwhile."""

    def __init__(self, base_url: str, key: str, job_id: str, deadline_s: float) -> None:
        super().__init__(name=f"follow-{job_id[:8]}", daemon=True)
        self.base_url, self.key, self.job_id = base_url, key, job_id
        self.deadline = time.monotonic() + deadline_s
        self.events: list[Event] = []
        self.reconnects = 0
        self.refusals: Counter[int] = Counter()  # status codes answered while reconnecting
        self.ended_at: float | None = None  # monotonic time of the terminal event
        self._lock = threading.Lock()

    def run(self) -> None:
        auth = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.base_url, headers=auth, timeout=httpx.Timeout(60.0, connect=5.0)) as http:
            while time.monotonic() < self.deadline:
                headers = {"Last-Event-ID": self.events[-1].id} if self.events else {}
                try:
                    with connect_sse(http, "GET", f"/v1/jobs/{self.job_id}/events", headers=headers) as es:
                        if es.response.status_code != 200:
                            self.refusals[es.response.status_code] += 1
                            time.sleep(float(es.response.headers.get("Retry-After", "0.5")))
                            self.reconnects += 1
                            continue
                        for sse in es.iter_sse():
                            if sse.event in ("", "message") and not sse.data:
                                continue
                            e = Event(sse.id, sse.event, json.loads(sse.data))
                            with self._lock:
                                self.events.append(e)
                            if is_end(e):
                                self.ended_at = time.monotonic()
                                return
                except httpx.TransportError:
                    pass  # the stream was cut (the API or the ingress went away): resume after the last event seen
                self.reconnects += 1
                time.sleep(0.2)

    def snapshot(self) -> list[Event]:
        with self._lock:
            return list(self.events)

    def tokens(self) -> int:
        return sum(1 for e in self.snapshot() if e.type == "token")

    def saw(self, pred: Callable[[Event], bool]) -> bool:
        return any(pred(e) for e in self.snapshot())


@dataclass
class Tracked:
    """An accepted job: how it should end, and the client following it."""

    id: str
    domain: str
    model: str
    expect: str  # "succeeded", or "failed" for bad input
    follower: Follower
    max_tokens: int | None = None  # exactly this many tokens (ignore_eos), when known
    probe: bool = False


def exact_tokens(body: dict[str, Any]) -> int | None:
    """How many tokens an LLM job must produce: max_tokens when it ignores EOS, else not known."""
    return body["input"].get("max_tokens") if body["input"].get("ignore_eos") else None


def vision_job(n_images: int) -> dict[str, Any]:
    imgs = sample_images()
    batch = [imgs["china"], imgs["flower"]] * (n_images // 2)
    return {"domain": "vision", "model": "vision-classify", "input": {"images": [base64.b64encode(i).decode() for i in batch], "top_k": 1}}


def bad_vision_job() -> dict[str, Any]:
    """Accepted (valid base64), then failed by the worker without retries: the bytes are no image."""
    return {"domain": "vision", "model": "vision-classify", "input": {"images": [base64.b64encode(b"this is not a jpeg").decode()]}}


def recsys_job(first_user: int, n_users: int) -> dict[str, Any]:
    return {"domain": "recsys", "model": "recsys-rank", "input": {"users": [(first_user + i) % RECSYS_USERS for i in range(n_users)], "k": 5}}


@dataclass
class Chaos:
    """The suite's stack and its client side: submits, follows, probes, checks."""

    stack: Stack
    key: str
    jobs: list[Tracked] = field(default_factory=list)
    _seq: int = 0

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.stack.ingress, headers={"Authorization": f"Bearer {self.key}"}, timeout=30.0)

    # ------------------------------------------------------------ submitting

    def submit(self, body: dict[str, Any], expect: str = "succeeded", *, probe: bool = False, deadline_s: float = 240) -> Tracked:
        """Submit as a well-behaved client: a 503 (a backing service still coming back: nothing was
        accepted) is retried after its Retry-After, twice at most; anything but 202 then fails."""
        for attempt in range(3):
            r = self.http.post("/v1/jobs", json=body)
            if r.status_code != 503 or attempt == 2:
                break
            time.sleep(float(r.headers.get("retry-after", "1")))
        assert r.status_code == 202, (r.status_code, r.text)
        job_id = r.json()["id"]
        f = Follower(self.stack.ingress, self.key, job_id, deadline_s)
        t = Tracked(job_id, body["domain"], body["model"], expect, f, exact_tokens(body), probe)
        self.jobs.append(t)
        f.start()
        return t

    def llm(self, model: str = LLM_MODEL, max_tokens: int = 120, *, probe: bool = False) -> Tracked:
        self._seq += 1
        body = llm_job(f"Chaos stream {self._seq}: tell a long story about a harbour.", max_tokens=max_tokens, ignore_eos=True, seed=self._seq)
        body["model"] = model
        return self.submit(body, probe=probe)

    def workload(self, *, llm: int = 3, vllm: int = 0, vision: int = 2, recsys: int = 2, bad: int = 1) -> list[Tracked]:
        """Jobs in flight in every domain, each followed: LLM streams first (they run longest), then
        recsys and vision batches once tokens flow, so that all are running when the fault comes
        (vision last: its batches are the shortest, well under a second each). vLLM's streams start
        first and flow before llama.cpp's start: on a slow CPU vLLM's first token can take longer than
        a whole llama.cpp stream, which then ended before the fault."""
        started = [self.llm(VLLM_MODEL, 300) for _ in range(vllm)]
        wait_until(lambda: all(t.follower.tokens() >= 8 for t in started), "tokens flowing on every vLLM stream", 180)
        started += [self.llm() for _ in range(llm)]
        wait_until(lambda: all(t.follower.tokens() >= 8 for t in started), "tokens flowing on every LLM stream", 90)
        self._seq += 1
        batch = [self.submit(recsys_job(self._seq * 397, 400)) for _ in range(recsys)]
        batch += [self.submit(vision_job(32)) for _ in range(vision)] + [self.submit(bad_vision_job(), "failed") for _ in range(bad)]
        wait_until(lambda: all(t.follower.saw(lambda e: e.type in ("progress", "result") or is_end(e)) for t in batch if t.expect == "succeeded"),
                   "vision and recsys jobs running", 60)
        return started + batch

    # ------------------------------------------------------------ measuring

    def in_flight(self, jobs: list[Tracked]) -> dict[str, int]:
        """Jobs per domain (vLLM apart) whose client has not seen the end yet."""
        out: Counter[str] = Counter()
        for t in jobs:
            if t.follower.ended_at is None:
                out["vllm" if t.model == VLLM_MODEL else t.domain] += 1
        return dict(out)

    def probe_job(self, body_of: Callable[[], dict[str, Any]], timeout_s: float = 300) -> Callable[[], bool]:
        """A probe: a new job of the affected path, accepted and ended succeeded (its client saw it end).
        Every probe that is accepted is checked like the workload's jobs."""
        def probe() -> bool:
            body = body_of()
            try:
                r = self.http.post("/v1/jobs", json=body)
            except httpx.TransportError:
                return False
            if r.status_code != 202:
                return False
            f = Follower(self.stack.ingress, self.key, r.json()["id"], timeout_s)
            self.jobs.append(Tracked(r.json()["id"], body["domain"], body["model"], "succeeded", f, exact_tokens(body), True))
            f.start()
            f.join(timeout_s)
            return f.ended_at is not None and f.snapshot()[-1].data["status"] == "succeeded"
        return probe

    def probe_llm(self, model: str = LLM_MODEL) -> Callable[[], bool]:
        return self.probe_job(lambda: {**llm_job("Probe.", max_tokens=4, seed=1), "model": model})

    def probe_vision(self) -> Callable[[], bool]:
        return self.probe_job(lambda: vision_job(2))

    def probe_recsys(self) -> Callable[[], bool]:
        return self.probe_job(lambda: recsys_job(11, 2))

    def probe_accept(self) -> Callable[[], bool]:
        """The API's own path: a job accepted (202) through the ingress; it is followed and checked too."""
        def probe() -> bool:
            body = {**llm_job("Probe.", max_tokens=4, seed=1)}
            try:
                r = self.http.post("/v1/jobs", json=body)
            except httpx.TransportError:
                return False
            if r.status_code != 202:
                return False
            f = Follower(self.stack.ingress, self.key, r.json()["id"], 300)
            self.jobs.append(Tracked(r.json()["id"], "llm", LLM_MODEL, "succeeded", f, None, True))
            f.start()
            return True
        return probe

    def join(self, jobs: list[Tracked], timeout_s: float = 240) -> float:
        """Wait for every client to see its job end; the monotonic time the last one did."""
        deadline = time.monotonic() + timeout_s
        for t in jobs:
            t.follower.join(max(0.0, deadline - time.monotonic()))
        open_ = [(t.domain, t.id, [(e.type, e.data) for e in t.follower.snapshot()[-3:]]) for t in jobs if t.follower.ended_at is None]
        assert not open_, f"jobs whose client never saw the end within {timeout_s:.0f} s: {open_}"
        return max(t.follower.ended_at or 0.0 for t in jobs)

    # ------------------------------------------------------------ checking

    def check(self, jobs: list[Tracked]) -> dict[str, int]:
        """The suite's invariants, per accepted job (see check_job); totals of resets and reconnects."""
        r = redis.Redis.from_url(self.stack.cfg.redis_url)
        try:
            totals = Counter({"resets": 0, "reconnects": 0, "repeated_tokens": 0})
            for t in jobs:
                job = self.http.get(f"/v1/jobs/{t.id}")
                assert job.status_code == 200, (t.id, job.status_code, job.text)  # none lost
                stream = self._stream(r, t.id)
                replay = None
                if not stream:
                    # Lost after its client saw the end (Redis emptied): the API rebuilds it from the row
                    # on the next read. Read it as a new client would, then check what was rebuilt.
                    f = Follower(self.stack.ingress, self.key, t.id, 60)
                    f.run()
                    assert f.ended_at is not None, (t.id, "the rebuilt stream never ended")
                    replay, stream = f.snapshot(), self._stream(r, t.id)
                got = check_job(t, job.json(), stream, replay)
                totals.update(got)
                totals["reconnects"] += t.follower.reconnects
            return dict(totals)
        finally:
            r.close()

    @staticmethod
    def _stream(r: redis.Redis, job_id: str) -> list[tuple[str, str, dict[str, Any]]]:
        return [(i.decode(), f[b"type"].decode(), json.loads(f[b"data"])) for i, f in r.xrange(stream_key(job_id))]  # type: ignore[union-attr,index]


def check_job(t: Tracked, job: dict[str, Any], stream: list[tuple[str, str, dict[str, Any]]], replay: list[Event] | None = None) -> Counter[str]:
    """One accepted job:
    - its row: ended as expected (succeeded; failed with a clear error for bad input), once;
    - its event stream in Redis (the record clients read): exactly one terminal status, last, and
      one result for a succeeded job (never two);
    - its client: saw the end once, last; event ids strictly increasing; the stream's events are the
      tail of what it saw (no gap, no event twice); token positions between ``reset``s run 0, 1, 2...
      and the positions seen again are counted (only ever after a ``reset``);
    - an LLM job: the tokens after the last reset are the whole answer, as many as its usage says.
    ``replay``: what a new client read when the stream had been lost after the job's client saw the
    end (the API rebuilt it from the row): it must be the whole rebuilt stream, with the whole answer."""
    where = f"{t.domain} job {t.id} ({t.model})"
    events = t.follower.snapshot()
    assert job["status"] == t.expect, (where, job["status"], job.get("error"))
    if t.expect == "failed":
        err = job["error"] or {}
        assert err.get("type") == "InvalidInput" and "could not be decoded" in err.get("message", ""), (where, err)
    else:
        assert job["result"], where
    kinds = [k for _, k, _ in stream]
    ends = [d["status"] for _, k, d in stream if k == "status" and d["status"] in TERMINAL]
    assert ends == [t.expect] and is_end(Event("", kinds[-1], stream[-1][2])), (where, "terminal statuses recorded", ends, kinds[-3:])
    results = kinds.count("result")
    assert results <= 1 and (results == 1 or t.expect != "succeeded"), (where, "results recorded", results)
    # The client's view.
    assert events and is_end(events[-1]) and sum(1 for e in events if is_end(e)) == 1, (where, [(e.type, e.data) for e in events[-3:]])
    ids = [tuple(int(x) for x in e.id.split("-")) for e in events]
    assert all(a < b for a, b in zip(ids, ids[1:], strict=False)), (where, "an event id repeated or went back")
    stream_ids = [i for i, _, _ in stream]
    if replay is None:
        assert [e.id for e in events][-len(stream_ids):] == stream_ids, (where, "the client missed events of the stream (a gap)")
    else:
        assert [e.id for e in replay] == stream_ids and is_end(replay[-1]), (where, "the rebuilt stream as replayed")
        if t.domain == "llm" and t.expect == "succeeded":
            assert visible_text(replay) == job["result"]["text"], (where, "the rebuilt stream's answer")
    repeated, resets, rebuilt = 0, 0, False
    delivered: set[tuple[int, int]] = set()
    segment: dict[int, list[int]] = {}
    for e in events:
        if e.type == "reset":
            resets += 1
            segment = {}
            rebuilt = e.data.get("reason") == "rebuilt"
        elif e.type == "token":
            choice, index = e.data.get("choice", 0), e.data["index"]
            seg = segment.setdefault(choice, [])
            assert index == len(seg), (where, "token positions skip or repeat within a segment", seg[-3:], index)
            seg.append(index)
            if (choice, index) in delivered:
                assert resets, (where, "a token seen twice with no reset before it", index)
                repeated += 1
            delivered.add((choice, index))
    if t.domain == "llm" and t.expect == "succeeded":
        assert visible_text(events) == job["result"]["text"], where
        # The text above is the exact check (nothing missing, nothing twice). A token event is one chunk of
        # the engine's stream: one token as a rule, but an engine may put several in one chunk (a vLLM just
        # restarted, on busy cores, did: 293 chunks for 300 tokens); a stream rebuilt from the row carries
        # the whole text as one token (the row keeps texts, not token boundaries).
        assert rebuilt or 0 < len(segment.get(0, [])) <= job["usage"]["completion_tokens"], (where, len(segment.get(0, [])), job["usage"])
        if t.max_tokens is not None:
            assert job["usage"]["completion_tokens"] == t.max_tokens, (where, job["usage"])
    return Counter({"resets": resets, "repeated_tokens": repeated})


def wait_until(check: Callable[[], bool], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out ({timeout_s:.0f} s) waiting for {what}"
        time.sleep(0.1)


def recovery(probes: dict[str, Callable[[], bool]], since: float, timeout_s: float = 180) -> dict[str, float]:
    """Per path, seconds from ``since`` (the fault) to the end of the first probe that succeeded; the
    probes run side by side, each retried until one succeeds."""
    def until_ok(name: str) -> float:
        deadline = since + timeout_s
        while time.monotonic() < deadline:
            if probes[name]():
                return time.monotonic() - since
            time.sleep(0.25)
        raise AssertionError(f"{name}: no successful probe within {timeout_s:.0f} s of the fault")

    with ThreadPoolExecutor(len(probes)) as pool:
        futures = {name: pool.submit(until_ok, name) for name in probes}
        return {name: f.result() for name, f in futures.items()}
