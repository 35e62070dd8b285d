"""PII redaction (switchyard.common.pii): each entity type found and replaced, clean text left as
it is, the shapes of job inputs and results, the policies (``block`` names types, never values),
analysis off the event loop, and the catalog's ``pii`` field."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from switchyard.common.catalog import CatalogError, build_catalog
from switchyard.common.pii import ENTITIES, PiiBlocked, PiiGuard, PiiSettings

# One distinctive value per entity type, in a sentence that gives the NER model its context.
SAMPLES: dict[str, tuple[str, str]] = {
    "PERSON": ("Please write a birthday note for Ada Lovelace and keep it short.", "Ada Lovelace"),
    "LOCATION": ("The meeting will take place in Manchester next spring.", "Manchester"),
    "EMAIL_ADDRESS": ("Send the invoice to ada.lovelace.4711@example.org today.", "ada.lovelace.4711@example.org"),
    "PHONE_NUMBER": ("You can call me on +1 415 555 0132 after lunch.", "415 555 0132"),
    "CREDIT_CARD": ("My card number is 4111 1111 1111 1111, expiring soon.", "4111 1111 1111 1111"),
    "IBAN_CODE": ("Transfer it to DE89 3704 0044 0532 0130 00 please.", "DE89 3704 0044 0532 0130 00"),
    "IP_ADDRESS": ("The server at 203.0.113.77 keeps timing out.", "203.0.113.77"),
}
CLEAN = ["Explain how photosynthesis works in two sentences.", "Write a haiku about the sea.", "What is 2+2? Answer briefly.",
         "Summarize the plot of a heist film in three bullet points."]
ALL_IN_ONE = ("Hi, I am Ada Lovelace from London. Mail ada.lovelace.4711@example.org, call +1 415 555 0132, card 4111 1111 1111 1111, "
              "IBAN DE89 3704 0044 0532 0130 00, IP 203.0.113.77.")
RAW_VALUES = ["Ada Lovelace", "London", "ada.lovelace.4711@example.org", "415 555 0132", "4111 1111 1111 1111", "DE89 3704 0044 0532 0130 00", "203.0.113.77"]


@pytest.fixture(scope="module")
def guard() -> Iterator[PiiGuard]:
    g = PiiGuard(PiiSettings(pii_threads=2))
    yield g
    g.close()


def test_the_samples_cover_every_entity_type() -> None:
    assert set(SAMPLES) == set(ENTITIES)


@pytest.mark.parametrize("entity", sorted(SAMPLES))
def test_each_entity_type_is_found_and_replaced_by_its_placeholder(guard: PiiGuard, entity: str) -> None:
    text, value = SAMPLES[entity]
    red, found = guard.redact_text(text)
    assert entity in found
    assert f"<{entity}>" in red
    assert value not in red


def test_all_types_in_one_text(guard: PiiGuard) -> None:
    red, found = guard.redact_text(ALL_IN_ONE)
    assert found == set(ENTITIES)
    assert not [v for v in RAW_VALUES if v in red]
    assert red == ("Hi, I am <PERSON> from <LOCATION>. Mail <EMAIL_ADDRESS>, call <PHONE_NUMBER>, card <CREDIT_CARD>, "
                   "IBAN <IBAN_CODE>, IP <IP_ADDRESS>.")


@pytest.mark.parametrize("text", CLEAN + ["", "   "])
def test_clean_text_is_left_as_it_is(guard: PiiGuard, text: str) -> None:
    assert guard.redact_text(text) == (text, frozenset())


def test_llm_input_shapes_are_redacted_in_a_copy(guard: PiiGuard) -> None:
    inp: dict[str, Any] = {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": ALL_IN_ONE},
            {"role": "user", "content": [{"type": "text", "text": "My name is Grace Hopper."}, {"type": "image_url", "image_url": {"url": "x"}}]},
        ],
        "max_tokens": 8, "stop": ["\n"], "seed": 7,
    }
    red = asyncio.run(guard.redact_llm_input(inp))
    assert red.found == set(ENTITIES)
    msgs = red.value["messages"]
    assert msgs[0]["content"] == "You are terse."
    assert "<EMAIL_ADDRESS>" in msgs[1]["content"] and "ada.lovelace" not in msgs[1]["content"]
    assert msgs[2]["content"][0]["text"] == "My name is <PERSON>." and msgs[2]["content"][1] == {"type": "image_url", "image_url": {"url": "x"}}
    assert {k: red.value[k] for k in ("max_tokens", "stop", "seed")} == {"max_tokens": 8, "stop": ["\n"], "seed": 7}
    assert inp["messages"][1]["content"] == ALL_IN_ONE  # the caller's copy is untouched

    one = asyncio.run(guard.redact_llm_input({"prompt": "Card 4111 1111 1111 1111."}))
    assert one.value == {"prompt": "Card <CREDIT_CARD>."} and one.found == {"CREDIT_CARD"}
    many = asyncio.run(guard.redact_llm_input({"prompt": ["Write to 203.0.113.77.", "Nothing here."]}))
    assert many.value == {"prompt": ["Write to <IP_ADDRESS>.", "Nothing here."]} and many.found == {"IP_ADDRESS"}


def test_embedding_input_metadata_and_results(guard: PiiGuard) -> None:
    one = asyncio.run(guard.redact_embedding_input("Mail ada.lovelace.4711@example.org"))
    assert one.value == "Mail <EMAIL_ADDRESS>" and one.found == {"EMAIL_ADDRESS"}
    many = asyncio.run(guard.redact_embedding_input(["plain words", "IP 203.0.113.77"]))
    assert many.value == ["plain words", "IP <IP_ADDRESS>"]
    md = asyncio.run(guard.redact_metadata({"user": "ada.lovelace.4711@example.org", "api": "openai"}))
    assert md.value == {"user": "<EMAIL_ADDRESS>", "api": "openai"}
    result = {"text": "Dear Ada Lovelace,", "finish_reason": "length", "endpoint": "llamacpp:http://127.0.0.1:8090",
              "choices": [{"index": 0, "text": "Dear Ada Lovelace,", "finish_reason": "length"}]}
    stored = asyncio.run(guard.redact_llm_result(result))
    assert stored is not None and stored["text"] == "Dear <PERSON>," and stored["choices"][0]["text"] == "Dear <PERSON>,"
    assert stored["endpoint"] == result["endpoint"] and result["text"] == "Dear Ada Lovelace,"
    assert asyncio.run(guard.redact_llm_result(None)) is None


def test_policies(guard: PiiGuard) -> None:
    inp = {"prompt": ALL_IN_ONE}
    redact = asyncio.run(guard.screen_llm_input("redact", inp))
    assert redact.engine == redact.stored and "<PERSON>" in redact.engine["prompt"]
    passed = asyncio.run(guard.screen_llm_input("pass", inp))
    assert passed.engine == inp and passed.stored == redact.stored  # the engine gets the raw text, the store never does
    with pytest.raises(PiiBlocked) as e:
        asyncio.run(guard.screen_llm_input("block", inp))
    assert e.value.found == set(ENTITIES)
    message = str(e.value)
    assert all(t in message for t in ENTITIES)
    assert not [v for v in RAW_VALUES if v in message]
    clean = asyncio.run(guard.screen_llm_input("block", {"prompt": CLEAN[0]}))
    assert clean.engine == {"prompt": CLEAN[0]} and not clean.found


def test_analysis_runs_off_the_event_loop(guard: PiiGuard, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    original = guard.redact_text

    def spy(text: str, keep: Collection[str] = ()) -> tuple[str, frozenset[str]]:
        threads.append(threading.current_thread().name)
        return original(text, keep)

    monkeypatch.setattr(guard, "redact_text", spy)

    async def main() -> tuple[list[str], str]:
        # The loop keeps running while the pool analyses: a ticker advances meanwhile.
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        out, _ = await guard.redact_texts([ALL_IN_ONE * 20])
        ticker.cancel()
        assert ticks > 1
        return out, threading.current_thread().name

    out, loop_thread = asyncio.run(main())
    assert "<PERSON>" in out[0]
    assert threads and all(t.startswith("pii") for t in threads) and loop_thread not in threads


def test_the_catalog_validates_the_policy(tmp_path: Path) -> None:
    chat = {"name": "chat", "domain": "llm", "kind": "chat", "endpoints": [{"engine": "llamacpp", "url": "http://127.0.0.1:1", "engine_model": "m"}]}
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"models": [chat, {**chat, "name": "blocking", "pii": "block"}, {**chat, "name": "raw", "pii": "pass"}]}))
    cat = build_catalog([path], env={})
    assert [cat.registry.get(n).pii for n in ("chat", "blocking", "raw")] == ["redact", "block", "pass"]  # type: ignore[union-attr]
    assert cat.snapshot("blocking")["llm"]["pii"] == "block"  # type: ignore[index]
    path.write_text(yaml.safe_dump({"models": [{**chat, "pii": "maybe"}]}))
    with pytest.raises(CatalogError) as e:
        build_catalog([path], env={})
    assert "model 'chat'" in str(e.value) and "field 'pii'" in str(e.value) and "'redact', 'block' or 'pass'" in str(e.value)


def test_a_pattern_type_wins_over_an_overlapping_name(guard: PiiGuard) -> None:
    # spaCy tags "Email ada.lovelace.4711@example.org" as a PERSON; the email recognizer's type wins.
    assert guard.redact_text("Hi. Email ada.lovelace.4711@example.org, please.") == ("Hi. Email <EMAIL_ADDRESS>, please.", frozenset({"EMAIL_ADDRESS"}))


def test_the_llm_workers_row_gets_a_redacted_result_and_the_answer_sealed_for_its_tenant(guard: PiiGuard) -> None:
    """``job.finish`` stores this (switchyard.common.bookkeeping) whatever the model's policy; the
    ``result`` event keeps the answer; the job's tenant reads the answer back, an admin the copy."""
    import datetime as dt
    import uuid
    from types import SimpleNamespace

    from switchyard.api.jobs.views import JobView
    from switchyard.common.bookkeeping import JobBookkeeping
    from switchyard.common.contracts import JobError, JobOutcome, JobStatus
    from switchyard.common.db.models import Job
    from switchyard.common.keys import Principal
    from switchyard.common.payload_codec import KeyRing, generate_key

    keys = KeyRing.parse({"k1": generate_key()}, "k1")
    store, bus = SimpleNamespace(engine=SimpleNamespace(url=SimpleNamespace(database="x"))), SimpleNamespace(redis=None)
    books = JobBookkeeping(store, bus, keys=keys, pii=guard)  # type: ignore[arg-type]
    answer = {"text": "Dear Ada Lovelace,", "finish_reason": "length", "choices": [{"index": 0, "text": "Dear Ada Lovelace,", "finish_reason": "length"}]}
    job_id = uuid.uuid4()
    outcome = JobOutcome(job_id=str(job_id), status=JobStatus.succeeded, result=answer)
    row, sealed = asyncio.run(books.stored_outcome(outcome))
    assert row.result is not None and row.result["text"] == "Dear <PERSON>," and row.result["choices"][0]["text"] == "Dear <PERSON>,"
    assert sealed is not None and b"Ada" not in sealed
    assert outcome.result == answer  # what is published is untouched
    job = Job(id=job_id, tenant="acme", domain="llm", model="m", status="succeeded", priority=3, attempts=1, metadata_={}, result=row.result,
              result_sealed=sealed, created_at=dt.datetime.now(dt.UTC))
    assert JobView.of(job, keys, Principal("k", "acme", {"jobs"})).result == answer
    assert JobView.of(job, keys, Principal("k", "ops", {"admin"})).result == row.result
    failed = JobOutcome(job_id=outcome.job_id, status=JobStatus.failed, error=JobError(type="EngineError", message="could not answer ada.lovelace.4711@example.org"))
    assert asyncio.run(books.stored_outcome(failed)) == (failed.model_copy(update={"error": JobError(type="EngineError", message="could not answer <EMAIL_ADDRESS>")}), None)
    # The catalog's model names are no one's data: kept in stored error messages (the NER model
    # alone reads this one as a place).
    named = JobOutcome(job_id=outcome.job_id, status=JobStatus.failed,
                       error=JobError(type="EngineUnavailable", message="every endpoint of smollm2-135m-instruct failed; tell ada.lovelace.4711@example.org"))
    assert "smollm2-135m-instruct" not in guard.redact_text(named.error.message)[0]  # type: ignore[union-attr]
    books_with_names = JobBookkeeping(store, bus, keys=keys, pii=guard, model_names=lambda: ["smollm2-135m-instruct"])  # type: ignore[arg-type]
    stored, _ = asyncio.run(books_with_names.stored_outcome(named))
    assert stored.error is not None and stored.error.message == "every endpoint of smollm2-135m-instruct failed; tell <EMAIL_ADDRESS>"
    # An answer without personal data is stored as it is, with nothing sealed.
    clean = JobOutcome(job_id=outcome.job_id, status=JobStatus.succeeded, result={"text": "Four.", "choices": [{"index": 0, "text": "Four."}]})
    assert asyncio.run(books.stored_outcome(clean)) == (clean, None)
    # Without a guard (the vision worker) the outcome is stored as it is.
    assert asyncio.run(JobBookkeeping(store, bus, keys=keys).stored_outcome(outcome)) == (outcome, None)  # type: ignore[arg-type]
