"""The error every KServe V2 surface answers with: REST ``{"error": message}`` + status; gRPC status."""

from __future__ import annotations

import json

# HTTP status → gRPC status code name (grpc.StatusCode member).
GRPC_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 413: "RESOURCE_EXHAUSTED", 429: "RESOURCE_EXHAUSTED",
              501: "UNIMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


class V2Error(Exception):
    """A V2 error: REST answers ``{"error": message}`` with ``status``; gRPC maps it to a status code."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}

    @property
    def grpc_code(self) -> str:
        return GRPC_CODES.get(self.status, "INTERNAL")


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def error_message(body: bytes, fallback: str) -> str:
    """The message of a V2 error body (``{"error": "..."}``, as Triton and Switchyard answer), else ``fallback``."""
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return fallback
