"""The HTTP client of LLM generations (the LLM worker's, and the API's fast-started runs): long
streams, many at once; engines see the caller's traceparent and X-Request-Id."""

from __future__ import annotations

import httpx

from switchyard.common import tracing
from switchyard.common.engines.base import ENGINE_KEEPALIVE_EXPIRY_S
from switchyard.common.request_log import send_request_id


def generation_client(timeout_s: float) -> httpx.AsyncClient:
    """``timeout_s``: the engine's read timeout (between chunks of a stream)."""
    hooks = tracing.httpx_event_hooks()
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=5.0), limits=httpx.Limits(max_connections=256, keepalive_expiry=ENGINE_KEEPALIVE_EXPIRY_S),
                             event_hooks={**hooks, "request": [*hooks.get("request", []), send_request_id]})
