"""Request priority → Temporal ``Priority(priority_key)`` (1 runs first, 5 last, 3 default), capped
by the caller's key tier."""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field

PriorityName = Literal["high", "normal", "low"]
PriorityValue = Annotated[int, Field(ge=1, le=5)] | PriorityName

NAMED: Final[dict[str, int]] = {"high": 1, "normal": 3, "low": 5}
DEFAULT_PRIORITY: Final[int] = 3


def priority_key(value: PriorityValue | None) -> int:
    """Map a validated priority (1..5 or a name) to Temporal's priority key."""
    if value is None:
        return DEFAULT_PRIORITY
    if isinstance(value, str):
        return NAMED[value]
    return value


def capped_priority(value: PriorityValue | None, tier: str) -> int:
    """The priority key of a request from a key of ``tier`` (high/normal/low): the tier's when none
    is asked for; a request may ask for a lower priority (a higher key), never a higher one."""
    floor = NAMED[tier]
    return floor if value is None else max(priority_key(value), floor)
