"""The model catalog: every served model of every domain, in one checked-in file plus overlays.

``SWITCHYARD_CATALOG`` names the file (YAML or JSON; ``infra/catalog/models.yaml`` in this
repository); ``SWITCHYARD_CATALOG_OVERLAYS`` optionally names more files, separated by ``:``
(both are fields of every process's settings, ``CatalogSettings``),
applied in order: a model with a name already declared replaces it, a new name is added, names
listed under ``remove`` go away, ``backends`` are merged. String values may use ``${VAR}`` or
``${VAR:-default}`` (deployment addresses, context sizes, ``enabled`` switches), so one catalog
serves the local stack, CI and a cluster; the process's entry point passes the environment they
are read from.

LLM models (``domain: llm``) list engine endpoints in fallback order; V2 models (vision, recsys)
are step graphs over named backends (switchyard.common.v2.config). Every process loads the catalog
at start-up and refuses a bad one with a message naming the file, the model and the field;
``CatalogHolder.reload`` (on SIGHUP) swaps in a new catalog only once it validated.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from switchyard.common.config_files import read_config
from switchyard.common.model_registry import LLM_ENGINES, ModelEntry, ModelRegistry
from switchyard.common.queues import DOMAINS
from switchyard.common.shadow.overlay import CatalogChange, apply_changes
from switchyard.common.shadow.spec import COMPARISON_OF
from switchyard.common.v2.config import V2_ENGINES, Backend, V2Config, V2Model

log = logging.getLogger("switchyard.catalog")

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class CatalogError(ValueError):
    """A catalog that must not be served; the message names the file, the model and the field."""


class _Overlay(BaseModel):
    """The top level of a catalog or overlay file."""

    model_config = ConfigDict(extra="forbid")

    backends: dict[str, dict[str, Any]] = {}
    models: list[dict[str, Any]] = []
    # Overlays only: names of models to drop from what came before.
    remove: list[str] = []


@dataclass(frozen=True)
class Catalog:
    registry: ModelRegistry  # LLM models
    v2: V2Config  # V2 models (vision, recsys) and their backends
    files: tuple[Path, ...] = ()

    def model(self, name: str) -> ModelEntry | V2Model | None:
        """A model of any domain by its public name."""
        return self.registry.get(name) or self.v2.get(name)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.registry.models] + [m.name for m in self.v2.models]

    def snapshot(self, name: str) -> dict[str, Any] | None:
        """What a job needs of its model, kept with the job so that it finishes on the model it was
        accepted for even if a reload changes or removes that model meanwhile."""
        if (entry := self.registry.get(name)) is not None:
            return {"llm": entry.model_dump(mode="json")}
        if (m := self.v2.get(name)) is not None:
            used = {s.backend for s in m.steps if s.backend}
            return {"v2": m.model_dump(mode="json"), "backends": {b: self.v2.backends[b].model_dump(mode="json") for b in sorted(used)}}
        return None


def _substitute(value: Any, env: Mapping[str, str], where: Callable[[], str]) -> Any:
    if isinstance(value, str):
        def one(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is None:
                raise CatalogError(f"{where()}: environment variable {name} is not set (write ${{{name}:-default}} for a default)")
            return default
        return _VAR.sub(one, value)
    if isinstance(value, list):
        return [_substitute(v, env, where) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, env, where) for k, v in value.items()}
    return value


def _first_error(e: ValidationError, default_field: str) -> str:
    """``field 'a.b': message`` for the first error pydantic found."""
    err = e.errors()[0]
    fld = ".".join(str(p) for p in err["loc"]) or default_field
    return f"field {fld!r}: {str(err['msg']).removeprefix('Value error, ')}"


@dataclass
class _Declared:
    body: dict[str, Any]
    file: Path
    index: int

    @property
    def name(self) -> str:
        return str(self.body.get("name", f"models[{self.index}]"))

    def where(self, fld: str | None = None) -> str:
        return f"{self.file}: model {self.name!r}" + (f", field {fld!r}" if fld else "")


def _check_engine(engine: Any, llm: bool, where: str) -> None:
    """LLM endpoints need an LLM engine adapter; V2 backends (vision, recsys steps) a V2 one."""
    wanted, what = (LLM_ENGINES, "LLM endpoints") if llm else (V2_ENGINES, "V2 backends (vision, recsys)")
    if engine in wanted:
        return
    if engine in LLM_ENGINES + V2_ENGINES:
        raise CatalogError(f"{where}: engine {engine!r} has no adapter for {what} (engines there: {', '.join(wanted)})")
    raise CatalogError(f"{where}: unknown engine {engine!r} (known: {', '.join(LLM_ENGINES + V2_ENGINES)})")


def _read(path: Path, env: Mapping[str, str]) -> _Overlay:
    try:
        raw = read_config(path)
    except FileNotFoundError:
        raise CatalogError(f"{path}: file not found") from None
    except (ValueError, yaml.YAMLError) as e:  # JSON and YAML syntax errors
        raise CatalogError(f"{path}: not valid YAML/JSON: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise CatalogError(f"{path}: expected a mapping with 'models' (and optionally 'backends', 'remove')")
    try:
        doc = _Overlay.model_validate(raw)
    except ValidationError as e:
        raise CatalogError(f"{path}: {_first_error(e, '(top level)')}") from None
    doc.backends = {name: _substitute(b, env, lambda n=name: f"{path}: backend {n!r}") for name, b in doc.backends.items()}  # type: ignore[misc]
    doc.models = [_substitute(m, env, lambda i=i, m=m: _Declared(m, path, i).where()) for i, m in enumerate(doc.models)]  # type: ignore[misc]
    return doc


def build_catalog(files: list[Path], env: Mapping[str, str], changes: Sequence[CatalogChange] = ()) -> Catalog:
    """Read, substitute ``${VAR}`` from ``env``, merge, apply the promotions and rollbacks ``changes``
    (switchyard.common.shadow.overlay) and validate; raise CatalogError on the first problem."""
    declared: dict[str, _Declared] = {}
    backends: dict[str, tuple[Path, dict[str, Any]]] = {}
    for n, path in enumerate(files):
        doc = _read(path, env)
        if n == 0 and doc.remove:
            raise CatalogError(f"{path}: 'remove' belongs in an overlay file")
        for name, b in doc.backends.items():
            backends[name] = (path, b)
        seen: set[str] = set()
        for i, body in enumerate(doc.models):
            d = _Declared(body, path, i)
            if "name" not in body:
                raise CatalogError(f"{path}: models[{i}]: field 'name' is required")
            if d.name in seen:
                raise CatalogError(f"{d.where('name')}: duplicate model name in this file")
            seen.add(d.name)
            declared[d.name] = d  # an overlay replaces a model of the same name
        for name in doc.remove:
            if declared.pop(name, None) is None:
                raise CatalogError(f"{path}: field 'remove': no model {name!r} to remove")
    if changes:
        bodies = apply_changes({n: d.body for n, d in declared.items()}, changes)
        last = {c.model: c.id for c in changes}
        # A changed model's errors name the change that made it (its id), not a file.
        declared = {n: declared[n] if b is declared[n].body else _Declared(b, Path(f"catalog change {last[n]}"), 0) for n, b in bodies.items()}

    v2_backends: dict[str, Backend] = {}
    for name, (path, b) in backends.items():
        _check_engine(b.get("engine"), False, f"{path}: backend {name!r}, field 'engine'")
        try:
            v2_backends[name] = Backend.model_validate(b)
        except ValidationError as e:
            raise CatalogError(f"{path}: backend {name!r}, {_first_error(e, 'engine')}") from None

    llm: list[ModelEntry] = []
    v2: list[V2Model] = []
    disabled: set[str] = set()
    for d in declared.values():
        body = dict(d.body)
        domain = body.get("domain")
        if domain not in DOMAINS:
            raise CatalogError(f"{d.where('domain')}: unknown domain {domain!r} (domains: llm, vision, recsys)")
        enabled = body.pop("enabled", True)
        if str(enabled).lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise CatalogError(f"{d.where('enabled')}: expected true or false, got {enabled!r}")
        try:
            if domain == "llm":
                for j, ep in enumerate(body.get("endpoints") or []):
                    _check_engine(ep.get("engine") if isinstance(ep, dict) else None, True, d.where(f"endpoints.{j}.engine"))
                entry: ModelEntry | V2Model = ModelEntry.model_validate(body)
            else:
                entry = V2Model.model_validate(body)
                for s in entry.steps:
                    if s.backend is not None and s.backend not in v2_backends:
                        raise CatalogError(f"{d.where(f'steps.{s.name}.backend')}: unknown backend {s.backend!r} (declared: {', '.join(sorted(v2_backends))})")
        except ValidationError as e:
            # Errors of the whole model (cycles, unreachable steps) concern its steps.
            raise CatalogError(f"{d.where()}, {_first_error(e, 'steps')}") from None
        if str(enabled).lower() in ("false", "0", "no"):
            disabled.add(d.name)
            continue
        (llm if isinstance(entry, ModelEntry) else v2).append(entry)  # type: ignore[arg-type]
    every: list[ModelEntry | V2Model] = [*llm, *v2]
    served = {m.name: m for m in every}
    llm = [_with_shadow(m, served, disabled, declared[m.name]) for m in llm]  # type: ignore[misc]
    v2 = [_with_shadow(m, served, disabled, declared[m.name]) for m in v2]  # type: ignore[misc]
    return Catalog(registry=ModelRegistry(models=llm), v2=V2Config(backends=v2_backends, models=v2), files=tuple(files))


def _with_shadow(m: ModelEntry | V2Model, served: Mapping[str, ModelEntry | V2Model], disabled: set[str], d: _Declared) -> ModelEntry | V2Model:
    """The model, its ``shadow`` checked: the candidate is another served model that takes the same
    requests (same domain and kind; V2: the same inputs). A candidate switched off (``enabled:
    false``, e.g. vLLM where it is not installed) switches the shadow off."""
    sh = m.shadow
    if sh is None:
        return m
    if sh.candidate in disabled:
        log.info("shadow off: its candidate is disabled", extra={"fields": {"model": m.name, "candidate": sh.candidate}})
        return m.model_copy(update={"shadow": None})
    where = d.where("shadow.candidate")
    cand = served.get(sh.candidate)
    if cand is None:
        raise CatalogError(f"{where}: no model {sh.candidate!r} in the catalog")
    if cand.name == m.name:
        raise CatalogError(f"{where}: a model cannot be its own shadow candidate")
    if (cand.domain, cand.kind) != (m.domain, m.kind):
        raise CatalogError(f"{where}: {cand.name!r} is a {cand.domain} {cand.kind} model; {m.name!r} is a {m.domain} {m.kind} one")
    if isinstance(m, V2Model) and isinstance(cand, V2Model) and \
            [(i.name, i.datatype) for i in cand.inputs] != [(i.name, i.datatype) for i in m.inputs]:
        raise CatalogError(f"{where}: {cand.name!r} takes other inputs than {m.name!r}, so it cannot answer the same requests")
    if isinstance(m, ModelEntry) and m.kind != "chat":
        raise CatalogError(f"{d.where('shadow')}: only chat models are shadowed (embeddings are not compared)")
    want = COMPARISON_OF[m.domain]
    if sh.compare not in (None, want):
        raise CatalogError(f"{d.where('shadow.compare')}: {m.domain} models are compared by {want!r}")
    return m


class CatalogSettings(BaseModel):
    """Where the catalog is; every process's settings (switchyard.common.settings) include these fields."""

    # SWITCHYARD_CATALOG: the catalog file.
    catalog: Path | None = None
    # More files applied on top, separated by ':' (deployment overlays, tests' extra models).
    catalog_overlays: str = ""

    @field_validator("catalog", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: Any) -> Any:
        return None if v == "" else v

    def files(self) -> list[Path]:
        if self.catalog is None:
            raise CatalogError("SWITCHYARD_CATALOG is not set: name the model catalog file (infra/catalog/models.yaml)")
        return [self.catalog, *(Path(p) for p in self.catalog_overlays.split(":") if p.strip())]


@dataclass
class CatalogHolder:
    """The catalog a process serves now; ``reload`` replaces it only with one that validated."""

    current: Catalog
    files: list[Path]
    # The environment ``${VAR}`` values come from (the process's, as it started).
    env: Mapping[str, str] = field(default_factory=dict)
    # Called with the new catalog after a successful reload (e.g. a worker adding backends).
    listeners: list[Callable[[Catalog], None]] = field(default_factory=list)
    # Promotions and rollbacks applied on top of the files (switchyard.common.shadow.overlay), as
    # the process last read them from PostgreSQL (switchyard.common.db.catalog_changes).
    changes: list[CatalogChange] = field(default_factory=list)

    @classmethod
    def load(cls, where: CatalogSettings, env: Mapping[str, str]) -> CatalogHolder:
        files = where.files()
        return cls(build_catalog(files, env), files, dict(env))

    @classmethod
    def load_or_exit(cls, process: str, where: CatalogSettings, env: Mapping[str, str]) -> CatalogHolder:
        """At start-up: a process must not serve a bad catalog; say why in one line and exit 2."""
        try:
            return cls.load(where, env)
        except CatalogError as e:
            print(f"{process}: refusing to start: bad model catalog: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    @classmethod
    def empty(cls) -> CatalogHolder:
        """A holder serving no model (packaging checks build an app without a catalog)."""
        return cls(Catalog(registry=ModelRegistry(models=[]), v2=V2Config(backends={}, models=[])), [])

    def reload(self, changes: Sequence[CatalogChange] | None = None) -> bool:
        """Rebuild from the files and ``changes`` (default: those applied now, which a successful
        reload with new ``changes`` replaces)."""
        applied = list(self.changes if changes is None else changes)
        try:
            new = build_catalog(self.files, self.env, applied)
            for listener in self.listeners:
                listener(new)
        except CatalogError as e:
            log.error("catalog reload refused; still serving the previous catalog", extra={"fields": {"error": str(e)}})
            return False
        self.current, self.changes = new, applied
        log.info("catalog reloaded", extra={"fields": {"models": new.names, "files": [str(f) for f in self.files],
                                                       "changes": applied[-1].id if applied else 0}})
        return True

    def reload_on_sighup(self) -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload)
