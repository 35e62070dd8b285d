"""The shared KServe V2 REST front end (switchyard.common.v2.rest_frontend) in the API's FastAPI
app: the same endpoints, registered as FastAPI routes so that they are in the OpenAPI document,
behind the API's key check (``authorize``; the health probes stay open)."""

from __future__ import annotations

from fastapi import FastAPI

from switchyard.api.v2.gateway import gateway_of
from switchyard.common.v2 import rest_frontend
from switchyard.common.v2.asgi import Authorize


def add_routes(app: FastAPI, authorize: Authorize) -> None:
    for e in rest_frontend.endpoints(gateway_of, authorize):
        app.add_api_route(e.path, e.handler, methods=list(e.methods), tags=["kserve-v2"])
