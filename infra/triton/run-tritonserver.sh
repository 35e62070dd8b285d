#!/usr/bin/env bash
# Start the real tritonserver binary shipped by nvidia-pytriton on Switchyard's vision model
# repository (both built by build-support/setup-vision.sh). Runs in the foreground (exec): stop it
# with SIGTERM/SIGINT to its process group (the Python-backend stubs are its children).
#
#   infra/triton/run-tritonserver.sh [extra tritonserver flags]
#   env: SWITCHYARD_TRITON_HTTP_PORT (8100) _GRPC_PORT (8101) _METRICS_PORT (8102),
#        SWITCHYARD_TRITON_MODEL_REPOSITORY (default: the generated one), SWITCHYARD_CACHE_DIR
# The recsys ranker's repository (build-support/setup-recsys.sh: recsys/triton_repository) is served
# too when it exists (SWITCHYARD_TRITON_RECSYS_REPOSITORY overrides its path; empty: not served).
set -Eeuo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BASE="${SWITCHYARD_CACHE_DIR:-$ROOT/.cache/switchyard}/vision"
VENV="$BASE/venv"
REPO="${SWITCHYARD_TRITON_MODEL_REPOSITORY:-$BASE/model_repository}"
RECSYS_REPO="${SWITCHYARD_TRITON_RECSYS_REPOSITORY-${SWITCHYARD_CACHE_DIR:-$ROOT/.cache/switchyard}/recsys/triton_repository}"
EXTRA_REPOS=()
[[ -n "$RECSYS_REPO" && -d "$RECSYS_REPO" ]] && EXTRA_REPOS=(--model-repository "$RECSYS_REPO")
TRITON="$VENV/lib/python3.11/site-packages/pytriton/tritonserver"
[[ -x "$TRITON/bin/tritonserver" && -d "$REPO" && -e "$BASE/backends/python/libtriton_python.so" ]] \
  || { echo "run-tritonserver: run build-support/setup-vision.sh first" >&2; exit 1; }

# The Python-backend stub must load the libpython of the interpreter the venv was made from
# (otherwise Debian's libpython3.11 is picked and the stub crashes with `_recursion_count`), and
# finds its packages (numpy, onnxruntime) through `python3` on PATH, not through PYTHONPATH.
LIBDIR="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')"
export LD_LIBRARY_PATH="$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$VENV/bin:$PATH"

exec "$TRITON/bin/tritonserver" \
  --model-repository "$REPO" "${EXTRA_REPOS[@]}" \
  --backend-directory "$BASE/backends" \
  --http-address 127.0.0.1 --http-port "${SWITCHYARD_TRITON_HTTP_PORT:-8100}" \
  --grpc-address 127.0.0.1 --grpc-port "${SWITCHYARD_TRITON_GRPC_PORT:-8101}" \
  --metrics-address 127.0.0.1 --metrics-port "${SWITCHYARD_TRITON_METRICS_PORT:-8102}" \
  --allow-gpu-metrics=false \
  --strict-readiness=true \
  --exit-on-error=true \
  --exit-timeout-secs=5 \
  "$@"
