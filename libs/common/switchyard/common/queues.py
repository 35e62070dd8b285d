"""Task queues and workflow type names: the contract between the API and the workers.

The API starts workflows by name so it never imports worker code (apps never import apps).
"""

from __future__ import annotations

from typing import Final, Literal

Domain = Literal["llm", "vision", "recsys"]
DOMAINS: Final[tuple[Domain, ...]] = ("llm", "vision", "recsys")

# One task queue per domain, named for the domain (one worker image per queue).
TASK_QUEUES: Final[dict[str, str]] = {d: d for d in DOMAINS}

# One workflow type per domain.
WORKFLOW_TYPES: Final[dict[str, str]] = {
    "llm": "LlmJob",
    "vision": "VisionJob",
    "recsys": "RecsysJob",
}
