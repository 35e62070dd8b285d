#!/usr/bin/env bash
# Switchyard's per-app container images, built without a Docker daemon, each started once.
#
#   build-support/images.sh [--force] [APP...]    (./switchyard images; all apps by default:
#                                                 api worker-llm worker-vision worker-recsys worker-shadow)
#
# 1. Tools, Debian packages installed when missing (as root): podman (daemon-less; `podman build` is
#    buildah's builder), runc, mmdebstrap.
# 2. Base image localhost/switchyard/python:3.11-bookworm-<key>: Debian bookworm's essential set plus
#    python3.11 (+ venv), libstdc++6, ca-certificates and passwd (useradd), without docs, man
#    pages or locales, made by mmdebstrap from Debian's own packages. The tarball is cached under $SWITCHYARD_CACHE_DIR/images,
#    keyed by the recipe below (a new Debian point release needs --force).
# 3. `./pants package apps/<app>:docker` with podman standing in for `docker` (Pants' docker backend
#    runs `docker build --pull=False --tag ... --build-arg ... --file ... <context>`, which podman takes
#    unchanged) and BASE_IMAGE set to that base. The Dockerfiles stay docker's: without the build arg
#    they start from python:3.11.7-slim-bookworm.
# 4. Each image started as its Deployment runs it (uid 10001, read-only root filesystem), without a
#    network, with `--check`: every import of the app resolves and its settings parse. Then a table:
#    build time, size, and which of the heavy packages (DALI, onnxruntime, spaCy, ...) the image holds.
#
# Host notes (docs/deploy.md "Images"): this VM gives root no CAP_SYS_RESOURCE, so the OCI runtime cannot
# raise RLIMIT_NOFILE/NPROC to podman's defaults (explicit limits below, within the hard limits), and its
# cgroups are a v1/v2 hybrid, which crun refuses (runc instead).
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SWITCHYARD_CACHE_DIR:-$ROOT/.cache/switchyard}/images"
SY_TAG=images
# shellcheck source=build-support/lib.sh
source "$ROOT/build-support/lib.sh"
sy_trap_errors

ALL_APPS=(api worker-llm worker-vision worker-recsys worker-shadow)
SUITE=bookworm
# libstdc++6: manylinux wheels link it (greenlet, grpcio, onnxruntime, ...); PEP 599 counts it as present.
# python3.11-venv: ensurepip, for the recsys image's pip install (~3 MB of pip and setuptools wheels).
BASE_PKGS="python3.11,python3.11-venv,libstdc++6,ca-certificates,passwd"
# Packages whose presence says which stack an image carries (column "heavy" of the table).
HEAVY=(nvidia.dali onnxruntime tritonclient spacy torch feast llama_cpp vllm)

FORCE=0
APPS=()
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    api|worker-llm|worker-vision|worker-recsys|worker-shadow) APPS+=("$arg") ;;
    *) die "unknown argument: $arg (apps: ${ALL_APPS[*]}; --force rebuilds the base)" ;;
  esac
done
[[ ${#APPS[@]} -gt 0 ]] || APPS=("${ALL_APPS[@]}")
mkdir -p "$CACHE/bin"
# The Pants command; SWITCHYARD_PANTS may wrap it (e.g. "flock -o /tmp/pants.lock ./pants" on a shared tree).
read -ra PANTS <<< "${SWITCHYARD_PANTS:-$ROOT/pants}"

ensure_tools() {
  local missing=()
  command -v podman >/dev/null 2>&1 || missing+=(podman)
  command -v runc >/dev/null 2>&1 || missing+=(runc)
  command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
  [[ ${#missing[@]} -eq 0 ]] && return
  [[ "$(id -u)" == 0 ]] || die "missing: ${missing[*]} (apt-get install --no-install-recommends ${missing[*]}, as root)"
  log "installing ${missing[*]} (Debian packages)"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

containers_conf() {
  # Limits the runtime can set here (see the host notes above); a hard limit of "unlimited" keeps podman's.
  local nofile nproc
  nofile="$(ulimit -Hn)"; nproc="$(ulimit -Hu)"
  [[ "$nofile" == unlimited ]] && nofile=1048576
  [[ "$nproc" == unlimited ]] && nproc=32768
  (( nproc > 32768 )) && nproc=32768
  cat > "$CACHE/containers.conf" <<EOF
# Written by build-support/images.sh for this host.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
EOF
  export CONTAINERS_CONF="$CACHE/containers.conf"
}

ensure_base() {
  # The recipe is the key: change a package or an option and a new base is built.
  local opts=(--variant=essential --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr --skip=output/dev
              "--include=$BASE_PKGS"
              --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
              --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/doc/*'
              --dpkgopt='path-include=/usr/share/doc/*/copyright')
  local key tar t0
  key="$(printf '%s\n' "$SUITE" "${opts[@]}" | sha256sum | cut -c1-12)"
  BASE_IMAGE="localhost/switchyard/python:3.11-$SUITE-$key"
  tar="$CACHE/base-$SUITE-$key.tar"
  if [[ $FORCE == 0 ]] && podman image exists "$BASE_IMAGE"; then log "base $BASE_IMAGE"; return; fi
  if [[ $FORCE == 1 || ! -s "$tar" ]]; then
    log "building the base from Debian $SUITE packages (mmdebstrap, about a minute)"
    t0=$SECONDS
    # Debian's own mirrors (mmdebstrap's default for a stable suite: main, updates, security).
    mmdebstrap --format=tar "${opts[@]}" "$SUITE" "$tar.part" >"$CACHE/mmdebstrap.log" 2>&1 \
      || { tail -20 "$CACHE/mmdebstrap.log" >&2; die "mmdebstrap failed (log: $CACHE/mmdebstrap.log)"; }
    mv "$tar.part" "$tar"
    BASE_SECONDS=$((SECONDS - t0))
  fi
  podman import --quiet --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3.11"]' "$tar" "$BASE_IMAGE" >/dev/null
  log "base $BASE_IMAGE ($(du -h "$tar" | cut -f1))"
}

build() {
  # Pants finds `docker` on this path only: podman under that name.
  ln -sf "$(command -v podman)" "$CACHE/bin/docker"
  # The pex is bind-mounted, and a bind mount's content is not part of the layer cache's key: an
  # app image kept from an earlier build would come back unchanged for a changed pex. So the app's
  # image (and with it its cached layers) goes first; the base stays.
  podman rmi -f "switchyard/$1:dev" "switchyard/$1:latest" >/dev/null 2>&1 || true
  "${PANTS[@]}" --docker-executable-search-paths="['$CACHE/bin']" \
    --docker-env-vars="['CONTAINERS_CONF', 'PATH', 'HOME']" \
    --docker-build-args="['BASE_IMAGE=$BASE_IMAGE']" \
    package "apps/$1:docker"
}

image_size_mb() { podman image inspect --format '{{.Size}}' "$1" | awk '{printf "%.0f", $1 / 1e6}'; }

check() {
  # As the Deployments run it: its user, read-only root (podman mounts tmpfs on /tmp), no network.
  podman run --rm --read-only --network none "$1" --check
}

heavy() {
  local code
  code="import importlib.util as u
def has(m):
    try: return u.find_spec(m) is not None
    except ImportError: return False  # its parent package is missing
print(','.join(m for m in '${HEAVY[*]}'.split() if has(m)) or '-')"
  podman run --rm --read-only --network none --entrypoint /app/bin/python "$1" -c "$code"
}

ensure_tools
containers_conf
BASE_SECONDS=0
ensure_base
rc=0
rows=()
for app in "${APPS[@]}"; do
  image="localhost/switchyard/$app:dev"
  log "building $image"
  t0=$SECONDS
  if ! build "$app"; then log "$app: build failed"; rc=1; continue; fi
  secs=$((SECONDS - t0))
  t0=$SECONDS
  if out="$(check "$image" 2>&1)"; then status="ok: ${out##*$'\n'}"; else status="FAILED"; rc=1; log "$app --check failed: $out"; fi
  rows+=("$(printf '%-15s %7s %8s  %-44s %s' "$app" "$secs" "$(image_size_mb "$image")" "$(heavy "$image")" "$status ($((SECONDS - t0)) s)")")
done
base_mb="$(image_size_mb "$BASE_IMAGE")"
printf '\n%-15s %7s %8s  %-44s %s\n' "image" "build s" "size MB" "heavy" "--check in the container"
printf '%-15s %7s %8s  %-44s %s\n' "base" "$BASE_SECONDS" "$base_mb" "-" "$BASE_IMAGE"
printf '%s\n' "${rows[@]}"
exit $rc
