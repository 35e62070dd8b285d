"""Endpoint fallback: a model's endpoints are tried in order, the next one only when one failed
before producing any output (a client never sees output of two endpoints mixed).

Used by the LLM worker (streamed generations) and the API's embeddings (one short call).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import httpx

from switchyard.common import metrics
from switchyard.common.engines.base import EngineError
from switchyard.common.model_registry import Endpoint

T = TypeVar("T")

log = logging.getLogger("switchyard.engines")


@dataclass
class Attempt:
    """One endpoint's try; the caller sets ``produced_output`` once anything reached a client."""

    endpoint: Endpoint
    produced_output: bool = False


class NoEndpointAnswered(Exception):
    """Every endpoint failed before producing output, each in a way another try could fix."""

    def __init__(self, model: str, last: Exception) -> None:
        self.model = model
        # The last failure as raised, and as an engine error (its kind, retryable).
        self.last = last
        self.error = as_engine_error(last)
        super().__init__(f"every endpoint of {model} failed; last: {self.error}")


def outcome_of(e: Exception) -> str:
    """The ``outcome`` label of a failed engine call: ``timeout`` or ``error``."""
    if isinstance(e, httpx.TimeoutException | asyncio.TimeoutError) or (isinstance(e, EngineError) and e.status in (408, 504)):
        return "timeout"
    return "error"


def as_engine_error(e: Exception) -> EngineError:
    """An endpoint that could not be reached (or answered garbage) is unavailable, retryably."""
    return e if isinstance(e, EngineError) else EngineError(503, f"unreachable: {e!r}", kind="EngineUnavailable", retryable=True)


async def first_endpoint_that_works(model: str, endpoints: Sequence[Endpoint], call: Callable[[Attempt], Awaitable[T]], *,
                                    logger: logging.Logger | logging.LoggerAdapter[logging.Logger] = log,
                                    count_running: bool = False) -> tuple[T, Endpoint]:
    """``call`` on each endpoint in turn until one succeeds; returns its result and endpoint.

    A failure after output, or one that retrying cannot fix (the request itself is bad), ends the
    loop: it is raised as an ``EngineError``. When every endpoint failed retryably before output,
    raises ``NoEndpointAnswered``.

    Each endpoint tried counts once in ``switchyard_engine_requests_total`` (a call cancelled by its
    caller, e.g. a client that left, counts in none of ok/error/timeout); with ``count_running``
    (generations) the call is in ``switchyard_engine_requests_running`` while it runs.
    """
    last: Exception | None = None
    for position, endpoint in enumerate(endpoints):
        attempt = Attempt(endpoint)
        labels = {"model": model, "endpoint": metrics.endpoint_label(endpoint.engine, position)}
        running = metrics.ENGINE_RUNNING.labels(**labels) if count_running else None
        if running is not None:
            running.inc()
        try:
            result = await call(attempt)
            metrics.ENGINE_REQUESTS.labels(**labels, outcome="ok").inc()
            return result, endpoint
        except (EngineError, httpx.HTTPError) as e:
            metrics.ENGINE_REQUESTS.labels(**labels, outcome=outcome_of(e)).inc()
            err = as_engine_error(e)
            if attempt.produced_output or not err.retryable:
                if err is e:
                    raise
                raise err from e
            last = e
            logger.warning("endpoint failed before output; trying the next", extra={"endpoint": endpoint.url, "error": str(err)})
        finally:
            if running is not None:
                running.dec()
    if last is None:
        raise NoEndpointAnswered(model, EngineError(503, "the model has no endpoints", kind="EngineUnavailable", retryable=True))
    raise NoEndpointAnswered(model, last)
