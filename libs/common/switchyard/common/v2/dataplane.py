"""The KServe V2 data plane interface (after KServe's ``DataPlane``), served by the two front ends:
REST (switchyard.common.v2.rest_frontend) and gRPC (switchyard.common.v2.grpc_frontend).

Defined once here, from the catalog's V2 models: server metadata and liveness, model lookup (404s),
model metadata, Triton's model configuration, the repository index. Readiness, statistics and
inference belong to the implementation: the API's gateway forwards them (raw bytes) to the worker
that serves the model; a worker's ``LocalDataPlane`` (switchyard.common.v2.local_plane) runs them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

from switchyard.common.v2.config import V2Model
from switchyard.common.v2.errors import V2Error
from switchyard.common.v2.statistics import StatisticsResponse

VERSION = "0.1.0"
# Triton's names for the protocol extensions every Switchyard data plane implements.
EXTENSIONS = ("binary_tensor_data", "classification", "model_configuration", "statistics")


def model_path(name: str, version: str | None) -> str:
    """``/v2/models/{name}[/versions/{version}]`` (unquoted)."""
    return f"/v2/models/{name}/versions/{version}" if version else f"/v2/models/{name}"


class DataPlane(ABC):
    def __init__(self, server_name: str) -> None:
        self.server_name = server_name

    # ------------------------------------------------------------ server

    def server_metadata(self) -> dict[str, Any]:
        return {"name": self.server_name, "version": VERSION, "extensions": list(EXTENSIONS)}

    async def live(self) -> bool:
        return True

    @abstractmethod
    async def ready(self) -> bool: ...

    # ------------------------------------------------------------ models

    @abstractmethod
    def known_models(self) -> Iterable[V2Model]:
        """The catalog's V2 models this plane knows of (served or not)."""

    def serves(self, model: V2Model) -> bool:
        return True

    def find(self, name: str) -> V2Model | None:
        m = next((m for m in self.known_models() if m.name == name), None)
        return m if m is not None and self.serves(m) else None

    def model(self, name: str, version: str | None = None) -> V2Model:
        m = self.find(name)
        if m is None:
            raise V2Error(404, f"unknown model '{name}'")
        if version and version not in m.versions:
            raise V2Error(404, f"model '{name}' has no version '{version}' (versions: {', '.join(m.versions)})")
        return m

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        return self.model(name, version).metadata()

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        return self.model(name, version).triton_config()

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index: every known model version, READY where this plane serves it."""
        index = []
        for m in self.known_models():
            served = self.serves(m)
            if ready_only and not served:
                continue
            for version in m.versions:
                index.append({"name": m.name, "version": version, "state": "READY" if served else "UNAVAILABLE",
                              "reason": "" if served else f"no worker serves domain '{m.domain}'"})
        return index

    @abstractmethod
    async def model_ready(self, name: str, version: str | None = None) -> bool: ...

    @abstractmethod
    async def statistics(self, name: str | None = None, version: str | None = None) -> StatisticsResponse:
        """Triton's inference statistics of one model (all its versions unless ``version``), or of all."""

    # ------------------------------------------------------------ inference, on the wire formats

    @abstractmethod
    async def infer_rest(self, name: str, version: str | None, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        """A REST infer request body (JSON, or JSON + binary tensors) → (status, body, headers)."""

    @abstractmethod
    async def infer_grpc(self, request: bytes, timeout_s: float | None) -> bytes:
        """A serialized ``ModelInferRequest`` → a serialized ``ModelInferResponse`` (or a V2Error)."""
