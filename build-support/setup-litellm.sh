#!/usr/bin/env bash
# LiteLLM's proxy in its own venv (.cache/switchyard/litellm/venv), for `./switchyard bench llm` only:
# the stateless gateway the LLM lane is measured against (issue 14). Every package is pinned in
# benchmarks/litellm-pins.txt. Idempotent (a stamp holds the requirements' hash).
#   build-support/setup-litellm.sh [--force]
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SWITCHYARD_CACHE_DIR:-$ROOT/.cache/switchyard}"
VENV="$CACHE/litellm/venv"
REQS="$ROOT/benchmarks/litellm-pins.txt"

SY_TAG=setup-litellm
# shellcheck source=build-support/lib.sh
source "$ROOT/build-support/lib.sh"
sy_trap_errors

FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1
STAMP="$VENV/.switchyard-stamp"
KEY="$(sha256sum "$REQS" | cut -d' ' -f1)"
if fresh "$STAMP" "$KEY"; then
  log "venv up to date ($VENV)"
  exit 0
fi
started=$(date +%s)
rm -rf "$VENV"
"$(host_python)" -m venv "$VENV"
log "installing litellm[proxy] (pinned, $(grep -vc '^#' "$REQS") packages) into $VENV; about a minute"
pip_quiet "$VENV/bin/python" install -q --no-deps -r "$REQS"
LITELLM_LOCAL_MODEL_COST_MAP=True "$VENV/bin/python" -c "import litellm.proxy.proxy_server" >/dev/null
echo "$KEY" > "$STAMP"
log "done in $(( $(date +%s) - started )) s"
