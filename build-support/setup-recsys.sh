#!/usr/bin/env bash
# Groundwork for Switchyard's recsys domain (see docs/recsys.md), all under .cache/switchyard/recsys/
# (gitignored), plus the Feast registry (PostgreSQL) and online store (Redis):
#
#   venv/     feast[redis,postgres]==0.67.0, onnxruntime, lightgbm, onnx/onnxmltools, numpy, pandas, pyarrow,
#             and the recsys worker's runtime (temporalio, tritonclient, ...: WORKER_PKGS below).
#             Its own venv, like vision's: Feast pins numpy>=2, pulls ~150 packages (SQLAlchemy 2, psycopg 3,
#             its own protobuf/pyarrow/pandas) and costs ~4 s CPU to import. DESIGN.md keeps it out of the
#             Pants default resolve ("Feast only in the recsys worker", default resolve is numpy 1.26): the
#             recsys worker runs from this venv, and nothing in the default resolve imports feast.
#   data/     build-support/gen_recsys_data.py (seeded, deterministic): interactions, items, weekly user and
#             item feature snapshots, user history at the log's end (parquet); train_recsys.py adds
#             user_embeddings.parquet
#   models/   build-support/train_recsys.py: retrieval.onnx, item_embeddings.npy, ranker.onnx, ranker_v2.onnx,
#             popular_items.json, training_report.json (NDCG@10 / recall@50 vs popularity; fails below +10 %)
#   triton_repository/  Triton model recsys_ranker (infra/triton/recsys_ranker.config.pbtxt.in + model.py +
#             ranker.onnx), served by infra/triton/run-tritonserver.sh beside the vision repository
#   Feast     infra/feast: `feast apply` (SQL registry in database $SWITCHYARD_FEAST_DB, created if missing)
#             and `feast materialize` of the whole log into Redis; a marker key in Redis
#             (switchyard:recsys:materialized) records what was loaded, so a flushed Redis is reloaded.
#
# Environment (defaults in brackets; the worker and recsys_probe.py need the first two as well):
#   SWITCHYARD_FEAST_REGISTRY_DSN  [postgresql+psycopg://postgres@127.0.0.1:5432/$SWITCHYARD_FEAST_DB]
#   SWITCHYARD_FEAST_REDIS         [127.0.0.1:6379]     Feast's format: host:port[,db=N][,password=...]
#   SWITCHYARD_FEAST_DB            [switchyard_feast]   only used to build the default DSN
#
# Idempotent: stamp files make a re-run take about a second (plus one registry/Redis check). Run:
#   build-support/setup-recsys.sh [--force] [--skip-feast]
# Then: .cache/switchyard/recsys/venv/bin/python -O build-support/recsys_probe.py --push
set -Eeuo pipefail

FEAST_VERSION="0.67.0"
ONNXRUNTIME_VERSION="1.32.0"
NUMPY_VERSION="2.4.6"        # feast 0.67 needs numpy>=2; onnxruntime 1.32 runs on it (checked by the ONNX round trips)
PANDAS_VERSION="2.3.3"
PYARROW_VERSION="26.0.1"
SCIPY_VERSION="1.17.1"
LIGHTGBM_VERSION="4.7.0"
ONNX_VERSION="1.23.2"
ONNXMLTOOLS_VERSION="1.16.0"  # LightGBM -> ONNX (TreeEnsembleRegressor, ai.onnx.ml opset 1, onnx opset 8)
# What the recsys worker (apps/worker-recsys, run from this venv with the repo's source roots on PYTHONPATH)
# imports through switchyard.common: the versions of 3rdparty/python/requirements.txt, except two that
# Feast 0.67 caps: redis<8 and prometheus_client<0.25 (the newest allowed below; switchyard.common runs on both:
# the worker imports and serves its metrics page with them).
WORKER_PKGS=("temporalio==1.35.0" "asyncpg==0.32.0" "sqlalchemy[asyncio]==2.1.9" "cryptography==50.0.2"
             "pydantic==2.14.4" "pydantic-settings==2.16.3" "prometheus-client==0.24.1" "redis==7.4.1"
             "opentelemetry-api==1.45.2" "opentelemetry-sdk==1.45.2" "opentelemetry-exporter-otlp-proto-http==1.45.2"
             "opentelemetry-proto==1.45.2" "grpcio==1.85.3" "protobuf==6.33.6" "uvicorn[standard]==0.54.0"
             "uvloop==0.23.0" "httptools==0.9.0" "httpx==0.28.1" "starlette==1.10.0" "fastapi==0.165.0"
             "pybreaker==1.4.1" "pyyaml==6.0.4" "nvidia-ml-py==13.615.71" "tritonclient[http,grpc]==2.73.0")

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SWITCHYARD_CACHE_DIR:-$ROOT/.cache/switchyard}"
BASE="$CACHE/recsys"
VENV="$BASE/venv"
DATA="$BASE/data"
MODELS="$BASE/models"
FEAST_REPO="$ROOT/infra/feast"
GEN="$ROOT/build-support/gen_recsys_data.py"
TRAIN="$ROOT/build-support/train_recsys.py"
SEED=13

export SWITCHYARD_FEAST_DB="${SWITCHYARD_FEAST_DB:-switchyard_feast}"
export SWITCHYARD_FEAST_REGISTRY_DSN="${SWITCHYARD_FEAST_REGISTRY_DSN:-postgresql+psycopg://postgres@127.0.0.1:5432/$SWITCHYARD_FEAST_DB}"
export SWITCHYARD_FEAST_REDIS="${SWITCHYARD_FEAST_REDIS:-127.0.0.1:6379}"
export SWITCHYARD_RECSYS_DATA="$DATA"
export FEAST_USAGE=False   # no usage telemetry calls (nothing outside is reachable anyway)
MARKER_KEY="switchyard:recsys:materialized"

SY_TAG=setup-recsys
# shellcheck source=build-support/lib.sh
source "$ROOT/build-support/lib.sh"
sy_trap_errors

FORCE=0
SKIP_FEAST="${SWITCHYARD_RECSYS_SKIP_FEAST:-0}"
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    --skip-feast) SKIP_FEAST=1 ;;
    *) die "unknown argument '$arg' (known: --force, --skip-feast)" ;;
  esac
done


mkdir -p "$BASE"
t_start=$SECONDS

# ---------------------------------------------------------------- (a) venv
DATA_PKGS=("feast[redis,postgres]==$FEAST_VERSION" "onnxruntime==$ONNXRUNTIME_VERSION" "numpy==$NUMPY_VERSION"
           "pandas==$PANDAS_VERSION" "pyarrow==$PYARROW_VERSION" "scipy==$SCIPY_VERSION" "lightgbm==$LIGHTGBM_VERSION"
           "onnx==$ONNX_VERSION" "onnxmltools==$ONNXMLTOOLS_VERSION")
VENV_PKGS=("${DATA_PKGS[@]}" "${WORKER_PKGS[@]}")  # one pip run: one consistent resolution
VENV_KEY="${VENV_PKGS[*]}"
if fresh "$VENV/.switchyard-stamp" "$VENV_KEY"; then
  log "venv up to date ($VENV)"
else
  log "creating venv $VENV (feast, onnxruntime, lightgbm; ~1 GB, about two minutes)"
  t0=$SECONDS
  rm -rf "$VENV"
  "$(host_python)" -m venv "$VENV"
  pip_quiet "$VENV/bin/python" install -q --progress-bar off "${VENV_PKGS[@]}" \
    || die "pip install into $VENV failed (see pip's output above)"
  "$VENV/bin/python" -c 'import feast, onnxruntime, lightgbm, onnxmltools, pyarrow, redis, psycopg, temporalio, asyncpg
import tritonclient.http.aio, tritonclient.grpc.aio, pynvml, uvloop, pybreaker, prometheus_client, opentelemetry.sdk' \
    || die "the recsys venv does not import"
  log "venv ready in $((SECONDS - t0)) s, $(du -sh "$VENV" | cut -f1)"
  echo "$VENV_KEY" > "$VENV/.switchyard-stamp"
fi
PY="$VENV/bin/python"

# ---------------------------------------------------------------- (b) synthetic log + feature snapshots
DATA_KEY="$(sum16 "$GEN") seed=$SEED ${DATA_PKGS[*]}"  # the worker's packages do not change the data or the models
if fresh "$DATA/.switchyard-stamp" "$DATA_KEY"; then
  log "data up to date ($DATA)"
else
  t0=$SECONDS
  rm -rf "$DATA.tmp"
  "$PY" "$GEN" --out "$DATA.tmp" --seed "$SEED" >&2 || die "gen_recsys_data.py failed"
  rm -rf "$DATA" && mv "$DATA.tmp" "$DATA"
  echo "$DATA_KEY" > "$DATA/.switchyard-stamp"
  rm -f "$MODELS/.switchyard-stamp"  # new data: retrain
  log "data ready in $((SECONDS - t0)) s ($(du -sh "$DATA" | cut -f1))"
fi

# ---------------------------------------------------------------- (c) retrieval + ranker, ONNX, evaluation
MODELS_KEY="$(sum16 "$TRAIN" "$DATA/.switchyard-stamp")"
if fresh "$MODELS/.switchyard-stamp" "$MODELS_KEY" && [[ -f "$DATA/user_embeddings.parquet" ]]; then
  log "models up to date ($MODELS)"
else
  t0=$SECONDS
  rm -rf "$MODELS.tmp"
  # Writes data/user_embeddings.parquet too (the Feast user_embedding view's offline source).
  "$PY" "$TRAIN" --data "$DATA" --out "$MODELS.tmp" >&2 \
    || die "train_recsys.py failed (a model that does not beat popularity by 10 % fails here too)"
  rm -rf "$MODELS" && mv "$MODELS.tmp" "$MODELS"
  echo "$MODELS_KEY" > "$MODELS/.switchyard-stamp"
  log "models ready in $((SECONDS - t0)) s: $("$PY" -c 'import json,sys; e=json.load(open(sys.argv[1]))["evaluation"]; r=e["results"]["two_stage"]; l=e["relative_lift_over_best_popularity"]; print("NDCG@10 %s (%+.0f %% vs popularity), recall@50 %s (%+.0f %%)" % (r["ndcg@10"], 100 * l["ndcg@10"], r["recall@50"], 100 * l["recall@50"]))' "$MODELS/training_report.json")"
fi

# ---------------------------------------------------------------- (d) Triton model repository (recsys_ranker)
# A second repository beside vision's (infra/triton/run-tritonserver.sh passes both): the ranker on
# Triton's Python backend, vision's model.py running onnxruntime on the same ranker.onnx.
TRITON_REPO="$BASE/triton_repository"
TRITON_TEMPLATES="$ROOT/infra/triton"
RANKER_MAX_BATCH=1024   # rows (candidates) per onnxruntime call; one request has up to 1,000
RANKER_THREADS=1        # a 100-tree ensemble on <= 1,024 rows: one thread is enough, the worker gets the other core
RANKER_QUEUE_DELAY_US=0
TRITON_KEY="$(sum16 "$TRITON_TEMPLATES/recsys_ranker.config.pbtxt.in" "$TRITON_TEMPLATES/model.py" "$MODELS/.switchyard-stamp") $RANKER_MAX_BATCH $RANKER_THREADS $RANKER_QUEUE_DELAY_US"
if fresh "$TRITON_REPO/.switchyard-stamp" "$TRITON_KEY"; then
  log "triton repository up to date ($TRITON_REPO)"
else
  rm -rf "$TRITON_REPO.tmp" && mkdir -p "$TRITON_REPO.tmp/recsys_ranker/1"
  sed -e "s|@MAX_BATCH_SIZE@|$RANKER_MAX_BATCH|g" -e "s|@INTRA_OP_THREADS@|$RANKER_THREADS|g" \
      -e "s|@MAX_QUEUE_DELAY_US@|$RANKER_QUEUE_DELAY_US|g" \
      "$TRITON_TEMPLATES/recsys_ranker.config.pbtxt.in" > "$TRITON_REPO.tmp/recsys_ranker/config.pbtxt"
  ! grep -q '@[A-Z_]*@' "$TRITON_REPO.tmp/recsys_ranker/config.pbtxt" || die "unrendered placeholder in recsys_ranker/config.pbtxt"
  cp "$TRITON_TEMPLATES/model.py" "$TRITON_REPO.tmp/recsys_ranker/1/model.py"
  cp "$MODELS/ranker.onnx" "$TRITON_REPO.tmp/recsys_ranker/1/model.onnx"
  rm -rf "$TRITON_REPO" && mv "$TRITON_REPO.tmp" "$TRITON_REPO"
  echo "$TRITON_KEY" > "$TRITON_REPO/.switchyard-stamp"
  log "triton repository ready: $TRITON_REPO (model recsys_ranker)"
fi

# ---------------------------------------------------------------- (e) Feast: registry, apply, materialize
if [[ "$SKIP_FEAST" == 1 ]]; then
  log "skipping feast apply/materialize (--skip-feast)"
else
  FEAST_KEY="$(sum16 "$FEAST_REPO/feature_store.yaml" "$FEAST_REPO/definitions.py" "$MODELS/.switchyard-stamp") $SWITCHYARD_FEAST_REGISTRY_DSN $SWITCHYARD_FEAST_REDIS"
  # The marker lives in Redis itself: a flushed or fresh Redis has no marker and is loaded again.
  # (redis-py only: importing feast would cost ~4 s on every up-to-date run.)
  marker() {  # marker get | marker set VALUE
    "$PY" - "$MARKER_KEY" "$@" <<'EOF'
import json, os, sys
import redis
host_port, *opts = os.environ["SWITCHYARD_FEAST_REDIS"].split(",")  # Feast's "host:port,k=v,..." format
host, port = host_port.rsplit(":", 1)
kw = {}
for o in opts:
    k, v = o.split("=", 1)
    try:
        kw[k] = json.loads(v)
    except json.JSONDecodeError:
        kw[k] = v
r = redis.Redis(host=host, port=int(port), socket_timeout=5, **kw)
try:
    if sys.argv[2] == "set":
        r.set(sys.argv[1], sys.argv[3])
    else:
        v = r.get(sys.argv[1])
        print(v.decode() if v else "")
except redis.RedisError as e:
    sys.exit(f"Redis unreachable at {os.environ['SWITCHYARD_FEAST_REDIS']}: {e}")
EOF
  }
  have="$(marker get)" || die "cannot reach the Feast online store (SWITCHYARD_FEAST_REDIS=$SWITCHYARD_FEAST_REDIS)"
  if [[ $FORCE == 0 && "$have" == "$FEAST_KEY" ]]; then
    log "feast online store up to date (registry $SWITCHYARD_FEAST_DB, Redis $SWITCHYARD_FEAST_REDIS)"
  else
    t0=$SECONDS
    "$PY" - <<'EOF' || die "cannot create the Feast registry database (SWITCHYARD_FEAST_REGISTRY_DSN)"
import os
import psycopg
from sqlalchemy.engine import make_url
url = make_url(os.environ["SWITCHYARD_FEAST_REGISTRY_DSN"])
with psycopg.connect(host=url.host, port=url.port or 5432, user=url.username, password=url.password,
                     dbname="postgres", autocommit=True, connect_timeout=3) as conn:
    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,)).fetchone():
        conn.execute(f'CREATE DATABASE "{url.database}"')
EOF
    (cd "$FEAST_REPO" && "$VENV/bin/feast" apply >&2) || die "feast apply failed"
    t1=$SECONDS
    read -r start end < <("$PY" -c 'import json,sys; m=json.load(open(sys.argv[1])); print(m["start"][:19], m["end"][:19])' "$DATA/meta.json")
    # END is exclusive in the data; +1 s so the last snapshot (at END) is included.
    (cd "$FEAST_REPO" && "$VENV/bin/feast" materialize "$start" "${end%:*}:01" >&2) || die "feast materialize failed"
    marker set "$FEAST_KEY"
    log "feast apply $((t1 - t0)) s, materialize $((SECONDS - t1)) s (registry $SWITCHYARD_FEAST_DB, Redis $SWITCHYARD_FEAST_REDIS)"
  fi
fi

log "done in $((SECONDS - t_start)) s ($(du -sh "$BASE" | cut -f1) in all). Check: SWITCHYARD_FEAST_REGISTRY_DSN=$SWITCHYARD_FEAST_REGISTRY_DSN SWITCHYARD_FEAST_REDIS=$SWITCHYARD_FEAST_REDIS $PY -O build-support/recsys_probe.py --push"
