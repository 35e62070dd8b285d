"""Endpoint fallback: a model's endpoints are tried in order, the next one only when one failed
before producing any output (a client never sees output of two endpoints mixed).

Each endpoint may sit behind a circuit breaker (``breakers``, one per endpoint URL, single-probe
half-open: switchyard.common.breaker): an endpoint whose breaker is open is skipped at once, and
when every endpoint's is open the call fails fast with the time until the next probe.

Used by the LLM worker (streamed generations) and the API's embeddings (one short call).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TypeVar

import httpx

from switchyard.common import metrics
from switchyard.common.breaker import STATE_VALUES, Breaker, BreakerBoard, BreakerOpen
from switchyard.common.engines.base import EngineError
from switchyard.common.engines.oom import EngineOutOfMemory
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

    def __init__(self, model: str, last: Exception, retry_after_s: float | None = None) -> None:
        self.model = model
        # The last failure as raised, and as an engine error (its kind, retryable).
        self.last = last
        self.error = as_engine_error(last)
        # Set when every endpoint's breaker was open: seconds until the first of them takes a probe.
        self.retry_after_s = retry_after_s
        super().__init__(f"every endpoint of {model} failed; last: {self.error}")


def breaker_key(endpoint: Endpoint) -> str:
    """Endpoints are broken per engine server: models served by the same URL share its breaker."""
    return f"{endpoint.engine} {endpoint.url}"


def breaker_target(model: str, position: int, endpoint: Endpoint) -> str:
    """The ``target`` label of an engine endpoint's breaker: ``<model>/<engine>-<position>`` (no URL)."""
    return f"{model}/{metrics.endpoint_label(endpoint.engine, position)}"


def export_breaker_states(board: BreakerBoard, endpoints: dict[str, Endpoint]) -> None:
    """``switchyard_breaker_state`` of each target (``breaker_target``) -> endpoint."""
    for target, endpoint in endpoints.items():
        metrics.BREAKER_STATE.labels(target=target).set(STATE_VALUES.get(board.state(breaker_key(endpoint)), 0))


def hurts_endpoint(e: Exception) -> bool:
    """Whether a failure counts against the endpoint's breaker: unreachable, timed out, 5xx. Not the
    caller's own bad request (4xx), and not an out-of-memory answer (the engine is up; OOMs have
    their own policy, see docs/engines.md)."""
    err = as_engine_error(e)
    return err.retryable and not isinstance(err, EngineOutOfMemory)


async def _guarded(breaker: Breaker | None, call: Callable[[Attempt], Awaitable[T]], attempt: Attempt) -> T:
    """``call`` behind ``breaker``; failures that say nothing about the endpoint pass through uncounted."""
    if breaker is None:
        return await call(attempt)
    harmless: Exception | None = None
    async with breaker.guard():
        try:
            return await call(attempt)
        except (EngineError, httpx.HTTPError) as e:
            if hurts_endpoint(e):
                raise
            harmless = e
    assert harmless is not None
    raise harmless


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
                                    count_running: bool = False, breakers: BreakerBoard | None = None,
                                    skip: Collection[int] = (), oom_ends_attempt: bool = False) -> tuple[T, Endpoint]:
    """``call`` on each endpoint in turn until one succeeds; returns its result and endpoint.

    A failure after output, or one that retrying cannot fix (the request itself is bad), ends the
    loop: it is raised as an ``EngineError``. When every endpoint failed retryably before output,
    raises ``NoEndpointAnswered``.

    Each endpoint tried counts once in ``switchyard_engine_requests_total`` (a call cancelled by its
    caller, e.g. a client that left, counts in none of ok/error/timeout); with ``count_running``
    (generations) the call is in ``switchyard_engine_requests_running`` while it runs.

    ``breakers``: each endpoint behind its breaker (an open one is skipped and not counted as
    tried). ``skip``: positions not to try this time. ``oom_ends_attempt``: an out-of-memory answer
    ends the loop (raised as ``EngineOutOfMemory``; the caller counts it and retries later) instead
    of moving on at once.
    """
    last: Exception | None = None
    waits: list[float] = []  # time to the next probe of each endpoint skipped for an open breaker
    tried = 0
    for position, endpoint in enumerate(endpoints):
        if position in skip:
            continue
        attempt = Attempt(endpoint)
        labels = {"model": model, "endpoint": metrics.endpoint_label(endpoint.engine, position)}
        breaker = breakers.get(breaker_key(endpoint)) if breakers is not None else None
        running = metrics.ENGINE_RUNNING.labels(**labels) if count_running else None
        if running is not None:
            running.inc()
        try:
            result = await _guarded(breaker, call, attempt)
            metrics.ENGINE_REQUESTS.labels(**labels, outcome="ok").inc()
            return result, endpoint
        except BreakerOpen as e:
            waits.append(e.retry_after_s)
            logger.warning("endpoint's circuit is open; trying the next", extra={"endpoint": endpoint.url, "error": str(e)})
        except (EngineError, httpx.HTTPError) as e:
            tried += 1
            metrics.ENGINE_REQUESTS.labels(**labels, outcome=outcome_of(e)).inc()
            err = as_engine_error(e)
            if attempt.produced_output or not err.retryable or (oom_ends_attempt and isinstance(err, EngineOutOfMemory)):
                if err is e:
                    raise
                raise err from e
            last = e
            logger.warning("endpoint failed before output; trying the next", extra={"endpoint": endpoint.url, "error": str(err)})
        finally:
            if running is not None:
                running.dec()
            if breakers is not None:
                export_breaker_states(breakers, {breaker_target(model, position, endpoint): endpoint})
    if tried == 0 and waits:
        raise NoEndpointAnswered(model, EngineError(503, f"the circuit of every endpoint of {model} is open", kind="EngineUnavailable", retryable=True),
                                 retry_after_s=min(waits))
    if last is None:
        raise NoEndpointAnswered(model, EngineError(503, "the model has no endpoints", kind="EngineUnavailable", retryable=True))
    raise NoEndpointAnswered(model, last)
