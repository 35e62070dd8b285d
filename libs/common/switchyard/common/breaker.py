"""Circuit breaker per upstream endpoint (pybreaker), safe for asyncio, with one half-open probe.

pybreaker counts failures and opens after ``fail_max`` in a row; after ``reset_timeout_s`` it lets
calls through again (half-open) and closes on the first success. Two rules are added here:
- only one call probes a half-open endpoint; the others are refused at once like an open breaker,
  instead of piling onto an endpoint that is probably still down;
- callers learn how long until the next probe (``BreakerOpen.retry_after_s``), for Retry-After.

Use ``async with breaker.guard(): ...`` and raise inside it only for failures of the endpoint
(unreachable, timeout, 5xx); a 4xx answer is the caller's fault and must not open the breaker.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator, Sequence

import pybreaker


class BreakerOpen(Exception):
    def __init__(self, name: str, retry_after_s: float) -> None:
        super().__init__(f"circuit open for {name}; next probe in {retry_after_s:.1f}s")
        self.name = name
        self.retry_after_s = retry_after_s


class _OpenedAt(pybreaker.CircuitBreakerListener):
    def __init__(self) -> None:
        self.at = 0.0

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: object, new_state: pybreaker.CircuitBreakerState) -> None:
        if new_state.name == pybreaker.STATE_OPEN:
            self.at = time.monotonic()


class Breaker:
    def __init__(self, name: str, *, fail_max: int = 5, reset_timeout_s: float = 5.0, exclude: Sequence[type[BaseException]] = ()) -> None:
        """``exclude``: exceptions raised inside ``guard()`` that say nothing about the endpoint."""
        self.name = name
        self.reset_timeout_s = reset_timeout_s
        self._opened = _OpenedAt()
        self._cb = pybreaker.CircuitBreaker(fail_max=fail_max, reset_timeout=reset_timeout_s, name=name, listeners=[self._opened],
                                            exclude=list(exclude))
        self._probing = False

    @property
    def state(self) -> str:
        """closed, open or half-open."""
        state = str(self._cb.current_state)
        if state == pybreaker.STATE_OPEN and self.retry_after_s() == 0:
            return pybreaker.STATE_HALF_OPEN  # the next call will probe
        return state

    def retry_after_s(self) -> float:
        return max(0.0, self._opened.at + self.reset_timeout_s - time.monotonic())

    @contextlib.asynccontextmanager
    async def guard(self) -> AsyncIterator[None]:
        state = self.state
        if state == pybreaker.STATE_OPEN:
            raise BreakerOpen(self.name, self.retry_after_s())
        probe = state == pybreaker.STATE_HALF_OPEN
        if probe:
            if self._probing:
                raise BreakerOpen(self.name, max(self.retry_after_s(), 0.5))
            self._probing = True
        try:
            with self._cb.calling():
                yield
        except pybreaker.CircuitBreakerError as e:
            # Raised by the failure that opened the breaker: report the endpoint's own error.
            raise (e.__cause__ or e.__context__ or BreakerOpen(self.name, self.retry_after_s())) from None
        finally:
            if probe:
                self._probing = False


# Gauge values of ``switchyard_breaker_state`` (docs/metrics.md).
STATE_VALUES = {pybreaker.STATE_CLOSED: 0, pybreaker.STATE_HALF_OPEN: 1, pybreaker.STATE_OPEN: 2}


class BreakerBoard:
    """One breaker per upstream (by key, e.g. an engine endpoint's URL), made on first use, all with
    the same settings. A process keeps one board per kind of upstream."""

    def __init__(self, *, fail_max: int = 5, reset_timeout_s: float = 5.0, exclude: Sequence[type[BaseException]] = ()) -> None:
        self.fail_max, self.reset_timeout_s, self.exclude = fail_max, reset_timeout_s, tuple(exclude)
        self._breakers: dict[str, Breaker] = {}

    def get(self, key: str) -> Breaker:
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = self._breakers[key] = Breaker(key, fail_max=self.fail_max, reset_timeout_s=self.reset_timeout_s, exclude=self.exclude)
        return breaker

    def state(self, key: str) -> str:
        """closed (also for an upstream never called), open or half-open."""
        breaker = self._breakers.get(key)
        return breaker.state if breaker is not None else pybreaker.STATE_CLOSED

    def __iter__(self) -> Iterator[tuple[str, Breaker]]:
        return iter(list(self._breakers.items()))
