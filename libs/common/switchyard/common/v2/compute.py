"""What a worker's V2 front end reports to the API about one request: the time its model took
(``x-switchyard-engine-ms``, the engine's share of the API's total, for X-Switchyard-Overhead-Ms)
and the items (images) it processed. The data plane notes them (``report``) into the holder the
front end opened for the request (``measuring``); the API reads and strips both headers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from switchyard.common.request_log import ENGINE_MS_HEADER, ITEMS_HEADER


@dataclass(slots=True)
class Compute:
    engine_ms: float | None = None
    items: int | None = None

    def headers(self) -> dict[str, str]:
        out = {}
        if self.engine_ms is not None:
            out[ENGINE_MS_HEADER] = f"{self.engine_ms:.3f}"
        if self.items is not None:
            out[ITEMS_HEADER] = str(self.items)
        return out


_CURRENT: ContextVar[Compute | None] = ContextVar("switchyard_v2_compute", default=None)


@contextmanager
def measuring() -> Iterator[Compute]:
    """A holder for the request being answered (the front end's)."""
    holder = Compute()
    token = _CURRENT.set(holder)
    try:
        yield holder
    finally:
        _CURRENT.reset(token)


def report(engine_ms: float, items: int) -> None:
    """The data plane's note (a no-op outside a measured request: the durable lane's activity)."""
    holder = _CURRENT.get()
    if holder is not None:
        holder.engine_ms = engine_ms
        holder.items = items
