"""PII redaction against the running stack (issue 11 item 5, REQ-SEC-01).

Under the default policy (``redact``), PII goes in through every text endpoint (jobs, chat streamed
and not, completions, embeddings); the engine saw placeholders (its own token count of the
redacted text is what the platform reports, not that of the raw text; embeddings are those of the
redacted text); then every sink is searched for the raw values: a ``pg_dump`` of the stack's
database, Temporal's history read with the ``temporal`` CLI without any codec (payloads decoded
from base64 too), every Redis key, every process log. ``block`` answers a 4xx naming the types,
never the values; ``pass`` gives the engine the raw text while PostgreSQL keeps the redacted one.
"""

from __future__ import annotations

import base64
import json
import math
import re
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from conftest import PII_BLOCK_EMBED_MODEL, PII_BLOCK_MODEL, PII_PASS_MODEL, workflow_status  # pants: no-infer-dep
from httpx_sse import connect_sse
from sqlalchemy.engine import make_url

from switchyard.devstack.client import LLM_MODEL, JobClient
from switchyard.devstack.stack import EMBED_MODEL, Stack, find_temporal

# Distinctive values: found nowhere unless they leaked. Each with its placeholder.
PII = {
    "Ada Lovelace": "<PERSON>",
    "Manchester": "<LOCATION>",
    "ada.lovelace.4711@example.org": "<EMAIL_ADDRESS>",
    "+1 415 555 0132": "<PHONE_NUMBER>",
    "4111 1111 1111 1111": "<CREDIT_CARD>",
    "DE89 3704 0044 0532 0130 00": "<IBAN_CODE>",
    "203.0.113.77": "<IP_ADDRESS>",
}
PROMPT = ("My name is Ada Lovelace and I live in Manchester. Email ada.lovelace.4711@example.org, phone +1 415 555 0132, "
          "card 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00, server 203.0.113.77. Reply with one word.")
REDACTED = PROMPT
for _raw, _placeholder in PII.items():
    REDACTED = REDACTED.replace(_raw, _placeholder)
# What a sink must not hold: each value, and the card/IBAN/phone without their spaces.
LEAKS = [*PII, "4111111111111111", "DE89370400440532013000", "4155550132", "Lovelace"]

# The `pass` test's values are other ones: the engine may echo them into Redis (its answer is the
# client's), and the redact test's sink search must not trip over them.
PASS_PROMPT = "I am Grace Hopper from Lisbon; write to grace.hopper.1906@example.net. Reply with one word."
PASS_REDACTED = "I am <PERSON> from <LOCATION>; write to <EMAIL_ADDRESS>. Reply with one word."


@pytest.fixture(scope="module")
def http(stack: Stack, auth: dict[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.ingress, headers=auth, timeout=120) as c:
        yield c


def engine(stack: Stack) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{stack.cfg.engine_port}", timeout=60)


def engine_prompt_tokens(stack: Stack, *, prompt: str | None = None, content: str | None = None) -> int:
    """llama.cpp's own count of a prompt (completions) or of one user message (chat, templated)."""
    with engine(stack) as e:
        if prompt is not None:
            r = e.post("/v1/completions", json={"model": LLM_MODEL, "prompt": prompt, "max_tokens": 1})
        else:
            r = e.post("/v1/chat/completions", json={"model": LLM_MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 1})
        r.raise_for_status()
        return int(r.json()["usage"]["prompt_tokens"])


def engine_embeddings(stack: Stack, texts: list[str]) -> tuple[list[list[float]], int]:
    """llama.cpp's own vectors of ``texts`` (one batch, as the API sends them) and its token count."""
    with engine(stack) as e:
        r = e.post("/v1/embeddings", json={"model": LLM_MODEL, "input": texts})
        r.raise_for_status()
        return [[float(x) for x in d["embedding"]] for d in r.json()["data"]], int(r.json()["usage"]["prompt_tokens"])


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def wait_ended(client: JobClient, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(job_id)
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end")


def leaks_in(text: str) -> list[str]:
    return [v for v in LEAKS if v in text]


# ---------------------------------------------------------------- sinks

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _pg_args(stack: Stack) -> list[str]:
    url = make_url(stack.cfg.postgres_dsn)
    return ["-h", url.host or "127.0.0.1", "-p", str(url.port or 5432), "-U", url.username or "postgres", url.database or ""]


def pg_dump(stack: Stack) -> str:
    return subprocess.run(["pg_dump", *_pg_args(stack)], check=True, capture_output=True, text=True, timeout=120).stdout


def stored(stack: Stack, job_id: str) -> dict[str, Any]:
    """The job's row as PostgreSQL holds it (the API's view does not show the input)."""
    sql = f"select json_build_object('input', input, 'metadata', metadata, 'result', result)::text from jobs where id = '{job_id}'"
    out = subprocess.run(["psql", "-At", *_pg_args(stack), "-c", sql], check=True, capture_output=True, text=True, timeout=30).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def _payload_texts(node: Any) -> Iterator[str]:
    """Every string in a CLI history, and every base64 ``data`` field decoded (a payload's bytes)."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "data" and isinstance(v, str):
                try:
                    yield base64.b64decode(v, validate=True).decode("utf-8", "replace")
                except ValueError:
                    pass
            yield from _payload_texts(v)
    elif isinstance(node, list):
        for v in node:
            yield from _payload_texts(v)
    elif isinstance(node, str):
        yield node


def temporal_history(stack: Stack, workflow_id: str) -> str | None:
    """The workflow's history as the CLI shows it, WITHOUT a codec; payloads base64-decoded too.
    None when there is no such workflow (a completion the API ran itself: docs/llm-speed.md)."""
    if workflow_status(stack, workflow_id) is None:
        return None
    out = subprocess.run([find_temporal(), "workflow", "show", "-w", workflow_id, "-o", "json", "--address", f"127.0.0.1:{stack.cfg.temporal_port}",
                          "--namespace", "default"], check=True, capture_output=True, text=True, timeout=60)
    return out.stdout + "\n".join(_payload_texts(json.loads(out.stdout)))


def _ids_of_this_stack(stack: Stack) -> set[str]:
    sql = "select id::text from jobs union all select id::text from api_keys"
    return set(subprocess.run(["psql", "-At", *_pg_args(stack), "-c", sql], check=True, capture_output=True, text=True, timeout=30).stdout.split())


def redis_everything(stack: Stack) -> str:
    """Every key of the stack's Redis database and its value (streams, strings, hashes, sets).

    The Redis server is shared by every stack on this machine (benchmarks, other test sessions):
    a key naming a job or key id this stack's database does not know is another stack's."""
    r = redis.Redis.from_url(stack.cfg.redis_url)
    ours = _ids_of_this_stack(stack)
    parts: list[str] = []
    try:
        for key in r.scan_iter(count=1000):
            name = key.decode("utf-8", "replace")
            if any(i not in ours for i in UUID.findall(name)):
                continue
            kind = r.type(key).decode()
            parts.append(name)
            if kind == "stream":
                value: Any = r.xrange(key)
            elif kind == "string":
                value = r.get(key)
            elif kind == "hash":
                value = r.hgetall(key)
            elif kind == "zset":
                value = r.zrange(key, 0, -1, withscores=True)
            elif kind == "set":
                value = r.smembers(key)
            elif kind == "list":
                value = r.lrange(key, 0, -1)
            else:
                value = None
            parts.append(repr(value))
    finally:
        r.close()
    # repr() shows bytes with escapes: decode what is UTF-8 so values are found as they are.
    return "\n".join(parts).encode().decode("unicode_escape", "replace")


def all_logs(stack: Stack) -> dict[str, str]:
    return {p.name: p.read_text(errors="replace") for p in sorted((stack.cfg.state_dir / "logs").glob("*.log"))}


# ---------------------------------------------------------------- tests


def test_a_caller_without_a_key_gets_401_before_any_screening(stack: Stack) -> None:
    with httpx.Client(base_url=stack.ingress, timeout=30) as anon:
        for path, body in (("/v1/jobs", {"domain": "llm", "model": LLM_MODEL, "input": {"prompt": PROMPT}}),
                           ("/v1/chat/completions", {"model": PII_BLOCK_MODEL, "messages": [{"role": "user", "content": PROMPT}]}),
                           ("/v1/completions", {"model": LLM_MODEL, "prompt": PROMPT}),
                           ("/v1/embeddings", {"model": PII_BLOCK_EMBED_MODEL, "input": PROMPT})):
            r = anon.post(path, json=body)
            assert r.status_code == 401, (path, r.text)
            assert r.json()["error"]["code"] == "invalid_api_key" and not leaks_in(r.text)


def test_redact_through_every_endpoint_then_every_sink_is_searched(stack: Stack, http: httpx.Client, client: JobClient) -> None:
    raw_chat, red_chat = engine_prompt_tokens(stack, content=PROMPT), engine_prompt_tokens(stack, content=REDACTED)
    raw_text, red_text = engine_prompt_tokens(stack, prompt=PROMPT), engine_prompt_tokens(stack, prompt=REDACTED)
    assert raw_chat != red_chat and raw_text != red_text  # the observable below can tell them apart
    jobs: list[str] = []

    # /v1/jobs (LLM): the row keeps placeholders; the engine counted the redacted prompt's tokens.
    r = http.post("/v1/jobs", json={"domain": "llm", "model": LLM_MODEL, "input": {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4, "seed": 1},
                                    "metadata": {"customer": "ada.lovelace.4711@example.org", "ticket": "T-1"}})
    assert r.status_code == 202, r.text
    jobs.append(r.json()["id"])
    job = wait_ended(client, jobs[-1])
    assert job["status"] == "succeeded", job
    assert job["metadata"] == {"customer": "<EMAIL_ADDRESS>", "ticket": "T-1"}
    assert job["usage"]["prompt_tokens"] == red_chat
    row = stored(stack, jobs[-1])
    assert row["input"]["messages"][0]["content"] == REDACTED and row["metadata"]["customer"] == "<EMAIL_ADDRESS>"

    # Chat, not streamed (the OpenAI `user` is stored as metadata: redacted too).
    r = http.post("/v1/chat/completions", json={"model": LLM_MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4,
                                                "user": "ada.lovelace.4711@example.org"})
    assert r.status_code == 200, r.text
    jobs.append(r.headers["x-switchyard-job-id"])
    assert r.json()["usage"]["prompt_tokens"] == red_chat
    job = wait_ended(client, jobs[-1])
    assert job["metadata"]["user"] == "<EMAIL_ADDRESS>" and stored(stack, jobs[-1])["input"]["messages"][0]["content"] == REDACTED

    # Chat, streamed, content as parts of type text.
    body = {"model": LLM_MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}], "max_tokens": 4, "stream": True,
            "stream_options": {"include_usage": True}}
    with connect_sse(http, "POST", "/v1/chat/completions", json=body) as es:
        assert es.response.status_code == 200
        jobs.append(es.response.headers["x-switchyard-job-id"])
        chunks = [json.loads(s.data) for s in es.iter_sse() if s.data and s.data != "[DONE]"]
    assert chunks[-1]["usage"]["prompt_tokens"] == red_chat
    assert wait_ended(client, jobs[-1])["status"] == "succeeded" and stored(stack, jobs[-1])["input"]["messages"][0]["content"] == REDACTED

    # Completions (prompt as a list of one string).
    r = http.post("/v1/completions", json={"model": LLM_MODEL, "prompt": [PROMPT], "max_tokens": 4})
    assert r.status_code == 200, r.text
    jobs.append(r.headers["x-switchyard-job-id"])
    assert r.json()["usage"]["prompt_tokens"] == red_text
    assert wait_ended(client, jobs[-1])["status"] == "succeeded" and stored(stack, jobs[-1])["input"]["prompt"] == REDACTED

    # Embeddings: the engine counted the redacted text's tokens, and the vector is closest to its own.
    r = http.post("/v1/embeddings", json={"model": EMBED_MODEL, "input": [PROMPT, "plain words"]})
    assert r.status_code == 200, r.text
    got = r.json()["data"][0]["embedding"]
    (red_vec, _), red_tokens = engine_embeddings(stack, [REDACTED, "plain words"])
    (raw_vec, _), raw_tokens = engine_embeddings(stack, [PROMPT, "plain words"])
    assert red_tokens != raw_tokens and r.json()["usage"]["prompt_tokens"] == red_tokens
    assert cosine(got, red_vec) > 0.999 and cosine(got, red_vec) > cosine(got, raw_vec) + 0.001

    # ---- every sink
    dump = pg_dump(stack)
    assert REDACTED in dump and "<EMAIL_ADDRESS>" in dump  # the dump does hold these jobs
    assert leaks_in(dump) == [], "PostgreSQL holds raw PII"
    histories = {job_id: h for job_id in jobs if (h := temporal_history(stack, job_id)) is not None}
    assert jobs[0] in histories  # the job API's job ran as a workflow (fast-started completions may not have one)
    for job_id, history in histories.items():
        assert job_id in history
        assert leaks_in(history) == [], f"Temporal history of {job_id} holds raw PII"
    everything = redis_everything(stack)
    assert any(j in everything for j in jobs)  # the jobs' streams are there
    assert leaks_in(everything) == [], "Redis holds raw PII"
    logs = all_logs(stack)
    assert {"api.log", "worker-llm.log", "engine.log", "nginx.log"} <= set(logs)
    leaked = {name: leaks_in(text) for name, text in logs.items() if leaks_in(text)}
    assert leaked == {}, f"logs hold raw PII: {leaked}"
    assert '"PII guard ready"' in logs["api.log"] and '"PII guard ready"' in logs["worker-llm.log"]  # loaded at start


def test_block_refuses_with_the_types_never_the_values(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json={"model": PII_BLOCK_MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "pii_detected" and err["param"] == "messages"
    assert all(t.strip("<>") in err["message"] for t in PII.values()) and not leaks_in(r.text)

    r = http.post("/v1/completions", json={"model": PII_BLOCK_MODEL, "prompt": "Card 4111 1111 1111 1111, thanks.", "max_tokens": 4})
    assert r.status_code == 400 and r.json()["error"]["code"] == "pii_detected" and "CREDIT_CARD" in r.json()["error"]["message"]
    r = http.post("/v1/jobs", json={"domain": "llm", "model": PII_BLOCK_MODEL, "input": {"prompt": PROMPT, "max_tokens": 4}})
    assert r.status_code == 422 and r.json()["error"]["code"] == "pii_detected" and r.json()["error"]["param"] == "input.prompt"
    assert not leaks_in(r.text)
    r = http.post("/v1/embeddings", json={"model": PII_BLOCK_EMBED_MODEL, "input": ["fine", "IP 203.0.113.77"]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "pii_detected" and "IP_ADDRESS" in r.json()["error"]["message"]

    # Text without PII goes through a `block` model as usual.
    r = http.post("/v1/chat/completions", json={"model": PII_BLOCK_MODEL, "messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 4})
    assert r.status_code == 200, r.text
    r = http.post("/v1/embeddings", json={"model": PII_BLOCK_EMBED_MODEL, "input": "plain words"})
    assert r.status_code == 200, r.text


def test_pass_gives_the_engine_the_raw_text_and_stores_the_redacted_one(stack: Stack, http: httpx.Client, client: JobClient) -> None:
    raw, red = engine_prompt_tokens(stack, prompt=PASS_PROMPT), engine_prompt_tokens(stack, prompt=PASS_REDACTED)
    assert raw != red
    r = http.post("/v1/completions", json={"model": PII_PASS_MODEL, "prompt": PASS_PROMPT, "max_tokens": 4})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == raw  # the engine read the raw text
    job_id = r.headers["x-switchyard-job-id"]
    assert wait_ended(client, job_id)["status"] == "succeeded"
    assert stored(stack, job_id)["input"]["prompt"] == PASS_REDACTED
    dump = pg_dump(stack)
    assert PASS_REDACTED in dump and "grace.hopper.1906@example.net" not in dump and "Grace Hopper" not in dump
