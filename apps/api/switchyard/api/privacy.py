"""A request's personal data under its model's PII policy (``pii`` in the catalog; the guard is
switchyard.common.pii): what the engine gets, what the job row keeps, and the ``block`` refusal.

Used by ``/v1/jobs`` (LLM input; metadata of every domain), the OpenAI completions
(``openai/admission.py``) and ``/v1/embeddings``. V2 models take tensors, not text: none is
screened today; a V2 model that takes text would screen its BYTES inputs here before forwarding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from switchyard.api.deps import Resources
from switchyard.api.errors import ApiError
from switchyard.common.model_registry import ModelEntry
from switchyard.common.pii import PiiBlocked, Screened


def _refused(e: PiiBlocked, status: int, param: str) -> ApiError:
    # The message names the entity types only: it must not echo the values it refuses.
    return ApiError(status, "pii_detected", f"{param}: {e}", param=param)


async def screen_llm_input(res: Resources, entry: ModelEntry, inp: Mapping[str, Any], *, status: int, param: str) -> Screened:
    """The engine's input and the stored one; ``block`` with PII → ``status`` ``pii_detected``.

    The OpenAI routes answer 400 (as OpenAI answers a refused input), the job API 422 (its
    validation status)."""
    try:
        return await res.pii.screen_llm_input(entry.pii, inp)
    except PiiBlocked as e:
        raise _refused(e, status, param) from None


async def screen_embedding_input(res: Resources, entry: ModelEntry, texts: list[str]) -> list[str]:
    """What the engine embeds. Nothing of it is stored, so ``pass`` needs no analysis."""
    if entry.pii == "pass":
        return texts
    try:
        screened = await res.pii.screen_embedding_input(entry.pii, texts)
    except PiiBlocked as e:
        raise _refused(e, 400, "input") from None
    return list(screened.engine)


async def stored_metadata(res: Resources, metadata: Mapping[str, str]) -> dict[str, str]:
    """Job metadata is stored and listed as given: its values are redacted for every domain."""
    if not metadata:
        return {}
    return dict((await res.pii.redact_metadata(metadata)).value)
