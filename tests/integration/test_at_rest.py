"""Nothing readable at rest (issue 11, item 6), against the running stack: Temporal histories are
encrypted (read with the `temporal` CLI, without the codec, then with it), the engine's input is
sealed in PostgreSQL until the job ends, keys rotate, event streams expire, and retention and
``DELETE /v1/jobs/{id}?purge=true`` erase a job's data everywhere."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from conftest import PII_PASS_MODEL  # pants: no-infer-dep (conftest.py is the tests' own)
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from sqlalchemy import text
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from switchyard.api.jobs.retention import Purger
from switchyard.common.db.store import JobStore, RequestStore, make_engine
from switchyard.common.events import EventBus, make_redis, stream_key
from switchyard.common.payload_codec import ENCODING, KEY_ID_META, EncryptionCodec, KeyRing, data_converter, generate_key, sealed_input_context
from switchyard.common.pii import PiiGuard
from switchyard.devstack.client import JobClient, llm_job
from switchyard.devstack.stack import Stack, find_temporal

EVENT_TTL_S = 24 * 3600  # the stack's default SWITCHYARD_EVENT_TTL_S
# Temporal deletes an execution asynchronously after the request: 10-35 s measured on the dev server.
HISTORY_DELETION_S = 120


@functools.cache
def pii_guard() -> PiiGuard:
    return PiiGuard()


def marker(sentence: str) -> str:
    """A distinctive string that is no PII in ``sentence`` (its ``{}``): the default `redact` policy
    leaves it to the engine. Checked with the real redactor: its statistical NER now and then reads
    a random one as a name (``quartzherond45a17d6cf32`` was a PERSON)."""
    for _ in range(50):
        candidate = f"quartzheron{uuid.uuid4().hex[:12]}"
        if not pii_guard().redact_text(sentence.format(candidate))[1]:
            return candidate
    raise AssertionError(f"no marker that the redactor leaves alone in {sentence!r}")


def b64_forms(value: str) -> list[str]:
    """The base64 of ``value`` at each of the three alignments it can have inside a longer text."""
    forms = []
    for pad in range(3):
        enc = base64.b64encode(b"x" * pad + value.encode()).decode()
        forms.append(enc[(pad * 4 + 2) // 3 + 1:-2])  # drop the characters that mix in neighbours
    return forms


def ring_of(stack: Stack) -> KeyRing:
    return KeyRing.parse(json.loads(stack.payload_env["SWITCHYARD_PAYLOAD_KEYS"]), stack.payload_env["SWITCHYARD_PAYLOAD_KEY_ID"])


def cli_history(stack: Stack, job_id: str) -> subprocess.CompletedProcess[str]:
    """The workflow's history as the `temporal` CLI shows it: no codec."""
    return subprocess.run([find_temporal(), "workflow", "show", "-w", job_id, "-o", "json", "--address", f"127.0.0.1:{stack.cfg.temporal_port}",
                           "--namespace", "default"], capture_output=True, text=True, timeout=60)


def payloads_in(msg: Message) -> Iterator[Payload]:
    """Every Payload anywhere in a protobuf message (history events nest them in many fields)."""
    if isinstance(msg, Payload):
        yield msg
        return
    for fd, value in msg.ListFields():
        if fd.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if fd.message_type.GetOptions().map_entry:
            items = list(value.values())
        elif fd.is_repeated:
            items = list(value)
        else:
            items = [value]
        for v in items:
            if isinstance(v, Message):
                yield from payloads_in(v)


async def _history_payloads(stack: Stack, job_id: str) -> list[Payload]:
    client = await Client.connect(f"127.0.0.1:{stack.cfg.temporal_port}", namespace="default")  # raw: no codec
    history = await client.get_workflow_handle(job_id).fetch_history()
    return [p for event in history.events for p in payloads_in(event)]


def history_payloads(stack: Stack, job_id: str) -> list[Payload]:
    return asyncio.run(_history_payloads(stack, job_id))


def decrypted(ring: KeyRing, payloads: list[Payload]) -> bytes:
    return b"\n".join(p.SerializeToString() for p in asyncio.run(EncryptionCodec(ring).decode(payloads)))


def decrypted_strings(ring: KeyRing, payloads: list[Payload]) -> list[str]:
    """Every string inside the decrypted JSON payloads (compared as text, not as its JSON escaping)."""

    def strings(value: Any) -> Iterator[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)

    plain = asyncio.run(EncryptionCodec(ring).decode(payloads))
    return [s for p in plain if p.metadata.get("encoding") == b"json/plain" for s in strings(json.loads(p.data))]


async def read_row(stack: Stack, job_id: str) -> dict[str, Any]:
    engine = make_engine(stack.cfg.postgres_dsn)
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(text("SELECT *, row_to_json(jobs)::text AS everything FROM jobs WHERE id = :id"), {"id": job_id})).mappings().one()
            return dict(row)
    finally:
        await engine.dispose()


def job_row(stack: Stack, job_id: str) -> dict[str, Any]:
    return asyncio.run(read_row(stack, job_id))


def wait_until(check: Any, timeout_s: float = 30.0, every_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(every_s)
    raise AssertionError(f"not reached within {timeout_s}s")


def wait_ended(client: JobClient, job_id: str) -> dict[str, Any]:
    for _ in client.events(job_id):
        pass
    return client.get(job_id)


def history_gone(stack: Stack, job_id: str) -> bool:
    async def describe() -> bool:
        client = await Client.connect(f"127.0.0.1:{stack.cfg.temporal_port}", namespace="default")
        try:
            await client.get_workflow_handle(job_id).describe()
        except RPCError as e:
            if e.status == RPCStatusCode.NOT_FOUND:
                return True
            raise
        return False

    return asyncio.run(describe())


def stream_ttl(stack: Stack, job_id: str) -> int:
    r = redis.Redis.from_url(stack.cfg.redis_url)
    try:
        return int(r.ttl(stream_key(job_id)))  # -2: no such key, -1: no expiry
    finally:
        r.close()


# ---------------------------------------------------------------- Temporal history


def test_history_is_ciphertext_without_the_codec_and_readable_with_it(stack: Stack, client: JobClient) -> None:
    secret = marker("Repeat the word {} twice.")
    job = wait_ended(client, client.submit(llm_job(f"Repeat the word {secret} twice.", max_tokens=16)))
    assert job["status"] == "succeeded", job
    shown = cli_history(stack, job["id"])
    assert shown.returncode == 0, shown.stderr
    assert "WorkflowExecutionStarted" in shown.stdout or "workflowExecutionStartedEventAttributes" in shown.stdout
    for form in [secret, *b64_forms(secret)]:
        assert form not in shown.stdout
    # Every payload of the history (workflow and activity inputs, results) is encrypted under the active key.
    ring = ring_of(stack)
    payloads = history_payloads(stack, job["id"])
    assert len(payloads) >= 4
    assert {p.metadata["encoding"] for p in payloads} == {ENCODING}
    assert {p.metadata[KEY_ID_META].decode() for p in payloads} == {ring.active}
    assert all(secret.encode() not in p.SerializeToString() for p in payloads)
    # With the codec (the stack's key), the prompt and the answer are there.
    plain = decrypted(ring, payloads)
    assert secret.encode() in plain
    assert any(job["result"]["text"] in s for s in decrypted_strings(ring, payloads))


def test_under_the_pass_policy_the_raw_text_is_only_sealed_and_encrypted(stack: Stack, client: JobClient) -> None:
    email = f"grace.hopper.{uuid.uuid4().hex[:6]}@example.net"
    body = llm_job(f"Write to {email}. Reply with one word.", max_tokens=4)
    body["model"] = PII_PASS_MODEL
    job = wait_ended(client, client.submit(body))
    assert job["status"] == "succeeded", job
    shown = cli_history(stack, job["id"])
    assert shown.returncode == 0, shown.stderr
    assert email not in shown.stdout and not any(f in shown.stdout for f in b64_forms(email))
    assert email.encode() in decrypted(ring_of(stack), history_payloads(stack, job["id"]))  # the engine did get it
    row = job_row(stack, job["id"])
    assert email not in row["everything"]  # the readable copy is redacted; the sealed one is gone with the job
    assert row["input_sealed"] is None


def test_a_process_without_a_payload_key_refuses_to_start(stack: Stack) -> None:
    env = {k: v for k, v in stack.procs["worker-llm"].env.items() if not k.startswith("SWITCHYARD_PAYLOAD_")}
    for module in ("switchyard.worker_llm", "switchyard.api"):
        out = subprocess.run([stack.procs["worker-llm"].cmd[0], "-m", module], env={**env, "SWITCHYARD_KEY_PEPPER": "p" * 32},
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 1, (module, out.stdout[-500:], out.stderr[-500:])
        assert "no payload encryption key: set SWITCHYARD_PAYLOAD_KEYS" in out.stderr


# ---------------------------------------------------------------- sealed input, rotation, stream expiry


def test_sealed_input_until_the_end_and_a_rotated_worker_finishes_a_job_started_under_the_old_key(stack: Stack, client: JobClient) -> None:
    """Under `pass` the engine gets the raw text and the row a redacted copy: the raw text waits,
    sealed, for the engine. Under `redact` the engine gets the redacted copy itself: nothing sealed."""
    ring = ring_of(stack)
    worker = stack.procs["worker-llm"]
    original_env = dict(worker.env)
    new_kid = f"rotated-{uuid.uuid4().hex[:6]}"
    rotated = {"SWITCHYARD_PAYLOAD_KEYS": json.dumps({**json.loads(stack.payload_env["SWITCHYARD_PAYLOAD_KEYS"]), new_kid: generate_key()}),
               "SWITCHYARD_PAYLOAD_KEY_ID": new_kid}
    secret, email = marker("Say {} to ada."), f"ada.{uuid.uuid4().hex[:6]}@example.org"
    worker.stop()
    try:
        # No worker: the jobs are accepted and their workflows started (by the API, under the old key), and wait.
        job_id = client.submit({**llm_job(f"Say {secret} to {email}.", max_tokens=8), "model": PII_PASS_MODEL})
        redacted_id = client.submit(llm_job(f"Say {secret} to {email}.", max_tokens=8))
        row = wait_until(lambda: (r := job_row(stack, job_id))["dispatched_at"] is not None and r)
        assert row["status"] == "queued"
        assert email not in row["everything"]  # the readable copy is redacted (and the sealed one is ciphertext, in hex)
        sealed = bytes(row["input_sealed"])
        for value in (secret, email):
            assert value.encode() not in sealed and not any(f.encode() in sealed for f in b64_forms(value))
        assert email in ring.unseal(sealed, sealed_input_context(job_id))["messages"][0]["content"]
        redacted_row = wait_until(lambda: (r := job_row(stack, redacted_id))["dispatched_at"] is not None and r)
        assert redacted_row["input_sealed"] is None and email not in redacted_row["everything"]
        # A job that never ends still has a stream that expires.
        assert 0 < stream_ttl(stack, job_id) <= EVENT_TTL_S

        # The worker comes back with a new active key, the old one still known.
        worker.env = {**original_env, **rotated}
        worker.start()
        worker.wait_ready()
        job = wait_ended(client, job_id)
        assert job["status"] == "succeeded", job
        assert wait_ended(client, redacted_id)["status"] == "succeeded"
        assert job_row(stack, job_id)["input_sealed"] is None  # nothing needs it once the job ended
        kids = [p.metadata[KEY_ID_META].decode() for p in history_payloads(stack, job_id)]
        assert kids[0] == ring.active  # the workflow's input: the API's key
        assert new_kid in kids  # what the rotated worker wrote
        both = KeyRing.parse(json.loads(rotated["SWITCHYARD_PAYLOAD_KEYS"]), new_kid)
        assert email.encode() in decrypted(both, history_payloads(stack, job_id))
    finally:
        worker.stop()
        worker.env = original_env
        worker.start()
        worker.wait_ready()


def test_every_job_stream_expires(stack: Stack, client: JobClient) -> None:
    job = wait_ended(client, client.submit(llm_job(max_tokens=4)))
    assert 0 < stream_ttl(stack, job["id"]) <= EVENT_TTL_S
    r = redis.Redis.from_url(stack.cfg.redis_url)
    try:
        keys = list(r.scan_iter(match="switchyard:job:*:events", count=1000))
        assert keys
        assert [k for k in keys if r.ttl(k) == -1] == []  # no stream without an expiry
    finally:
        r.close()


# ---------------------------------------------------------------- retention


def test_retention_purges_an_ended_job_everywhere(stack: Stack, client: JobClient) -> None:
    """A purger with a 1 s retention, as every API process runs one (with SWITCHYARD_RETENTION_S).
    It purges every job of the test database that ended over a second ago: the jobs of tests that
    already ran (this file runs first), which nothing reads any more."""
    secret = marker("Say {}.")
    job = wait_ended(client, client.submit(llm_job(f"Say {secret}.", max_tokens=8, metadata={"ticket": secret})))
    assert job["status"] == "succeeded" and job["result"]["text"]
    job_id = job["id"]
    assert stream_ttl(stack, job_id) > 0 and not history_gone(stack, job_id)

    async def purge() -> None:
        engine = make_engine(stack.cfg.postgres_dsn)
        r = make_redis(stack.cfg.redis_url)
        temporal = await Client.connect(f"127.0.0.1:{stack.cfg.temporal_port}", namespace="default", data_converter=data_converter(ring_of(stack)))
        purger = Purger(JobStore(engine), EventBus(r, ttl_s=EVENT_TTL_S, maxlen=1000), temporal, retention_s=1, every_s=0.2)
        purger.start()
        try:
            deadline = time.monotonic() + 30
            while (await read_row(stack, job_id))["purged_at"] is None:
                assert time.monotonic() < deadline, "not purged within 30 s"
                await asyncio.sleep(0.2)
        finally:
            await purger.close()
            await r.aclose()
            await engine.dispose()

    asyncio.run(purge())
    view = client.get(job_id)
    assert view["purged_at"] is not None
    assert view["status"] == "succeeded" and view["result"] is None and view["metadata"] == {"ticket": ""}
    assert view["usage"] == job["usage"]  # the accounting stays
    row = job_row(stack, job_id)
    assert row["input"] == {} and row["input_sealed"] is None and row["request_hash"] is None
    assert secret not in row["everything"]
    assert stream_ttl(stack, job_id) == -2  # the event stream is gone
    wait_until(lambda: history_gone(stack, job_id), timeout_s=HISTORY_DELETION_S, every_s=1.0)  # and the Temporal execution
    assert cli_history(stack, job_id).returncode != 0


def test_request_log_rows_past_their_retention_are_deleted(stack: Stack) -> None:
    """The request log keeps accounting only and has its own retention (SWITCHYARD_REQUEST_LOG_RETENTION_S)."""
    marker_id = f"retention-{uuid.uuid4().hex[:8]}"
    now = dt.datetime.now(dt.UTC)

    def row(suffix: str, age: dt.timedelta) -> dict[str, Any]:
        return {"request_id": f"{marker_id}-{suffix}", "created_at": now - age, "family": "jobs", "route": "/v1/jobs", "method": "POST",
                "status": "202", "tenant": "tests", "model": "", "params": {}, "outcome": "accepted"}

    async def run() -> set[str]:
        engine = make_engine(stack.cfg.postgres_dsn)
        r = make_redis(stack.cfg.redis_url)
        try:
            requests = RequestStore(engine)
            await requests.insert([row("old", dt.timedelta(days=3)), row("new", dt.timedelta(minutes=1))])
            temporal = await Client.connect(f"127.0.0.1:{stack.cfg.temporal_port}", namespace="default", data_converter=data_converter(ring_of(stack)))
            purger = Purger(JobStore(engine), EventBus(r, ttl_s=EVENT_TTL_S, maxlen=1000), temporal, retention_s=10**9,
                            requests=requests, request_log_retention_s=2 * 24 * 3600)
            assert await purger.purge_request_log() >= 1
            async with engine.connect() as conn:
                found = await conn.execute(text("SELECT request_id FROM requests WHERE request_id LIKE :m"), {"m": f"{marker_id}-%"})
                return {rec[0] for rec in found}
        finally:
            await r.aclose()
            await engine.dispose()

    assert asyncio.run(run()) == {f"{marker_id}-new"}


# ---------------------------------------------------------------- DELETE ?purge=true


@pytest.fixture(scope="module")
def other_tenant(stack: Stack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.create_key('atrest-other', ('jobs',), 'normal', 'at-rest tests')}"}


@pytest.fixture(scope="module")
def no_jobs_scope(stack: Stack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.create_key('tests', ('openai',), 'normal', 'at-rest tests: no jobs scope')}"}


def test_purge_of_a_running_job_cancels_it_and_erases_it_at_once(stack: Stack, client: JobClient, other_tenant: dict[str, str],
                                                                  no_jobs_scope: dict[str, str]) -> None:
    secret = marker("Tell a very long story about {}.")
    job_id = client.submit(llm_job(f"Tell a very long story about {secret}.", max_tokens=4000, ignore_eos=True, metadata={"ticket": secret}))
    for e in client.events(job_id):
        if e.type == "token":
            break
    url = f"{stack.ingress}/v1/jobs/{job_id}?purge=true"
    # No key, a key without the jobs scope, another tenant's key: refused, the job untouched.
    r = httpx.delete(url, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.delete(url, headers=no_jobs_scope, timeout=30)
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
    r = httpx.delete(url, headers=other_tenant, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
    assert client.get(job_id)["status"] == "running"

    r = client.http.delete(f"/v1/jobs/{job_id}", params={"purge": "true"}, timeout=60)
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["status"] == "cancelled" and view["purged_at"] is not None and view["result"] is None and view["metadata"] == {"ticket": ""}
    assert client.get(job_id)["purged_at"] == view["purged_at"]
    row = job_row(stack, job_id)
    assert row["input"] == {} and row["input_sealed"] is None and secret not in row["everything"]
    assert stream_ttl(stack, job_id) == -2
    wait_until(lambda: history_gone(stack, job_id), timeout_s=HISTORY_DELETION_S, every_s=1.0)
    # The engine stopped generating for it (the cancel went through before the history went).
    wait_until(lambda: _engine_idle(stack), timeout_s=15)
    # Reading its events answers from the row: the job ended.
    events = list(client.events(job_id, timeout=10))
    assert [e.data["status"] for e in events] == ["cancelled"]


def test_purge_of_an_ended_job_and_of_a_job_that_does_not_exist(stack: Stack, client: JobClient) -> None:
    job = wait_ended(client, client.submit(llm_job(max_tokens=4)))
    r = client.http.delete(f"/v1/jobs/{job['id']}", params={"purge": "true"})
    assert r.status_code == 200 and r.json()["status"] == "succeeded" and r.json()["purged_at"] and r.json()["result"] is None
    assert client.http.delete(f"/v1/jobs/{job['id']}", params={"purge": "true"}).status_code == 200  # again: nothing left, still fine
    r = client.http.delete(f"/v1/jobs/{uuid.uuid4()}", params={"purge": "true"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
    # Without purge, an ended job is still a 409 as before.
    assert client.http.delete(f"/v1/jobs/{job['id']}").status_code == 409


def _engine_idle(stack: Stack) -> bool:
    metrics = httpx.get(f"http://127.0.0.1:{stack.cfg.engine_port}/metrics", timeout=5).text
    line = next((ln for ln in metrics.splitlines() if ln.startswith("llamacpp:requests_processing")), None)
    assert line is not None, metrics[:500]
    return float(line.split()[-1]) == 0
