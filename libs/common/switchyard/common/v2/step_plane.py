"""A LocalDataPlane whose models are the catalog's step graphs (switchyard.common.v2.config) over
backends the worker opened: what the vision and recsys planes share — the served models of one
domain, catalog reloads, readiness, each model's steps in dependency levels."""

from __future__ import annotations

import asyncio
from pathlib import Path

from switchyard.common.v2.backends import InferBackend
from switchyard.common.v2.config import Step, V2Config, V2Model
from switchyard.common.v2.local_plane import LocalDataPlane


class StepPlane(LocalDataPlane):
    def __init__(self, server_name: str, domain: str, backends: dict[str, InferBackend], model_dir: Path) -> None:
        """The subclass serves its first catalog (``update``) once it is set up."""
        super().__init__(server_name, model_dir)
        self.domain = domain
        self.backends = backends
        self._levels: dict[str, list[list[Step]]] = {}

    def update(self, config: V2Config, new_backends: dict[str, InferBackend] | None = None) -> None:
        """Serve the domain's models of a (re)loaded catalog. Backends are only ever added: a job
        accepted before a reload may still run on one that the new catalog no longer names."""
        models = {m.name: m for m in config.for_domain(self.domain)}
        self.backends.update(new_backends or {})
        self.serve(models)
        self._levels = {name: m.levels() for name, m in models.items()}

    def levels(self, m: V2Model) -> list[list[Step]]:
        """``m``'s steps, each level after the ones it needs; the served declaration's are computed
        once, a job's snapshot computes its own."""
        return self._levels[m.name] if self.models.get(m.name) is m else m.levels()

    async def model_ready(self, name: str, version: str | None = None) -> bool:
        m = self.model(name, version)
        used = {s.backend for s in m.steps if s.backend}
        return all(await asyncio.gather(*(self.backends[b].ready() for b in used)))

    async def ready(self) -> bool:
        return all(await asyncio.gather(*(b.ready() for b in self.backends.values())))
