#!/usr/bin/env bash
# One entry point for a fresh Debian/Ubuntu machine with Python 3.11:
#   scripts/dev.sh demo   -> installs everything, then runs the end-to-end demo
#   scripts/dev.sh test   -> installs everything, then runs the whole test suite
# Installs Debian packages (when missing), a virtual environment in .venv with the project
# and its test extras, and .venv-device: Debian's python3 with only the device package
# (./device: numpy, ai-edge-litert, tuf), a board's view for the tests. Re-running skips
# what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(python3-venv qemu-user-static debootstrap openssh-server binutils xz-utils postgresql chromium)
VENV=${TFEDGE_VENV:-.venv}
DEVICE_VENV=${TFEDGE_DEVICE_VENV:-.venv-device}
# Optional on a board, installed in .venv-device so the tests cover it (zstd OTA targets and
# pushes); Debian's python3 without it stands for a board that lacks it.
DEVICE_EXTRAS=(zstandard)

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else log "need root for: $*"; return 1; fi
}

install_debian_packages() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
}

find_python() {
  for py in python3.11 python3; do
    if command -v "$py" >/dev/null && "$py" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 10))'; then
      echo "$py"; return 0
    fi
  done
  log "Python 3.10 or newer is required"; return 1
}

install_python_packages() {
  [ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$(find_python)" -m venv "$VENV"; }
  local stamp="$VENV/.tfedge-stamp" want
  want=$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing tfedge and its Python dependencies into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e ".[test]"
    echo "$want" > "$stamp"
  fi
}

install_device_venv() {
  # Rebuilt when the device package's sources change (the tests check it is current).
  local stamp="$DEVICE_VENV/.tfedge-device-stamp" want
  want=$( { find device -type f \( -name '*.py' -o -name '*.toml' -o -name '*.service' \) \
    -not -path '*/build/*' | sort | xargs cat; echo "${DEVICE_EXTRAS[*]}"; } | sha256sum | cut -c1-16)
  [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && return 0
  log "device-only environment in $DEVICE_VENV (Debian's python3 + ./device)"
  [ -x "$DEVICE_VENV/bin/python" ] || /usr/bin/python3 -m venv "$DEVICE_VENV"
  "$DEVICE_VENV/bin/python" -m pip install -q ./device "${DEVICE_EXTRAS[@]}"
  "$DEVICE_VENV/bin/python" -m pip install -q --no-deps --force-reinstall ./device
  chmod -R a+rX "$DEVICE_VENV"
  echo "$want" > "$stamp"
}

setup_emulator() {
  # The emulated aarch64 Raspberry Pi for `tfedge bench --target qemu` (cached, idempotent).
  log "emulated aarch64 root (tfedge emulator setup; built once, then cached)"
  if [ "$(id -u)" -eq 0 ] || unshare --map-root-user true 2>/dev/null; then
    "$VENV/bin/tfedge" emulator setup
  else  # build as root into this user's cache, then hand the files back
    local cache="${XDG_CACHE_HOME:-$HOME/.cache}"
    as_root env XDG_CACHE_HOME="$cache" "$VENV/bin/tfedge" emulator setup
    as_root chown -R "$(id -u):$(id -g)" "$cache/tfedge"
  fi
}

setup() {
  install_debian_packages
  install_python_packages
  install_device_venv
  setup_emulator
}

case "${1:-}" in
  demo)
    setup
    shift
    exec "$VENV/bin/tfedge" demo "$@"
    ;;
  test)
    setup
    shift
    exec "$VENV/bin/python" -m pytest -ra --durations=40 "$@"
    ;;
  setup)
    setup
    ;;
  *)
    echo "usage: scripts/dev.sh demo|test|setup [args...]" >&2
    exit 2
    ;;
esac
