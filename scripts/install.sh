#!/usr/bin/env bash
# Install what clipqueue needs on a Debian machine: system packages, then the
# Python package (with extras "$@") into .venv. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || need+=(ffmpeg)
command -v redis-server >/dev/null || need+=(redis-server)
command -v python3 >/dev/null || need+=(python3 python3-venv python3-pip)
extras="${1:-}"
# The multi-host test (tests/test_multihost.py) makes network namespaces with ip and runs a
# PostgreSQL cluster of its own on one of them (initdb and postgres, started by the test only).
# The web page's browser tests drive Debian's chromium (never a browser download).
if [ "$extras" = test ]; then
  command -v ip >/dev/null || [ -x /usr/sbin/ip ] || need+=(iproute2)
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
  [ -x /usr/bin/chromium ] || need+=(chromium)
fi
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing system packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"

# The tests check the alert rules (ops/prometheus) with promtool. It is taken out of
# Debian's prometheus package into .venv/bin: installing the package would also
# enable a Prometheus server (listening on all addresses) on this machine.
install_promtool() {
  local unpack status
  unpack=$(mktemp -d)
  (cd "$unpack" && { apt-get download -qq prometheus >/dev/null 2>&1 ||
    { $SUDO apt-get update -qq && apt-get download -qq prometheus >/dev/null 2>&1; }; }) &&
    dpkg-deb -x "$unpack"/prometheus_*.deb "$unpack/root" &&
    cp "$unpack/root/usr/bin/promtool" .venv/bin/promtool
  status=$?
  rm -rf "$unpack"
  return $status
}
if [ "$extras" = test ] && ! command -v promtool >/dev/null && [ ! -x .venv/bin/promtool ]; then
  if install_promtool; then
    echo "installed promtool from Debian's prometheus package in .venv/bin"
  else
    echo "promtool could not be installed: the alert-rule tests skip (and fail under CI)" >&2
  fi
fi
