# Shell helpers shared by ./switchyard and the build-support scripts. Source it after setting
# SY_TAG (the prefix of log lines); call sy_trap_errors to turn any failing command into a message.

log() { printf '[%s] %s\n' "${SY_TAG:-switchyard}" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "${SY_TAG:-switchyard}" "$*" >&2; exit 1; }
sy_trap_errors() { trap 'die "failed at line $LINENO (command: $BASH_COMMAND)"' ERR; }

# CPython 3.11 (the code's interpreter), or die.
host_python() {
  local c
  for c in python3.11 /root/.pyenv/versions/3.11.7/bin/python3.11 python3; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      command -v "$c"; return
    fi
  done
  die "CPython 3.11 is required"
}

# pip through PYTHON, without its once-per-package warnings about the machine's local file:// indexes.
pip_quiet() { local py="$1"; shift; "$py" -m pip "$@" 2> >(grep -v "^WARNING: Location 'file://" >&2 || true); }

# Stamp files for idempotent set-up steps: a step is fresh when its stamp holds the key of what it
# was built from (and the script was not run with --force, i.e. FORCE=0 in the sourcing script).
sum16() { cat "$@" | sha256sum | cut -c1-16; }
fresh() { [[ ${FORCE:-0} == 0 && -f "$1" && "$(cat "$1")" == "$2" ]]; }  # fresh STAMP KEY
