"""Engine adapters by name: adding an engine is one adapter module plus a line here and config."""

from __future__ import annotations

from typing import Final

import httpx

from switchyard.common.engines.base import Engine
from switchyard.common.engines.llamacpp import LlamaCppEngine
from switchyard.common.engines.sglang import SGLangEngine
from switchyard.common.engines.vllm import VllmEngine
from switchyard.common.model_registry import Endpoint

ADAPTERS: Final[dict[str, type[Engine]]] = {cls.name: cls for cls in (LlamaCppEngine, VllmEngine, SGLangEngine)}


def engine_for(endpoint: Endpoint, http: httpx.AsyncClient) -> Engine:
    return ADAPTERS[endpoint.engine](endpoint.url, endpoint.engine_model, http, endpoint.params)
