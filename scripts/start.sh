#!/usr/bin/env bash
# Install what is missing and start the whole service from the Procfile:
# release (migrations), then web, worker, beat and flower. Ctrl-C stops all of
# it, the local Redis and the sample server included; data stays in .run/.
#
# With nothing configured it runs on the embedded default: a local Redis
# (started here if none answers), SQLite (./clipqueue.db) and local storage
# (./media, served by web under /media/). web listens on loopback only
# (WEB_ADDRESS=127.0.0.1). It also serves a generated sample VOD on its own
# loopback address, http://127.0.0.89:8089/, for the README's example
# (SAMPLE_VOD=0 to skip); that one address is the only private one sources may
# be on.
#
#   scripts/start.sh               start everything
#   scripts/start.sh --print-env   print the environment the processes would get, start nothing
#
# RUN_DIR (default ./.run) holds Redis's data, the sample VOD, beat's schedule
# and Flower's login.
set -euo pipefail
cd "$(dirname "$0")/.."
run_dir="$(realpath -m "${RUN_DIR:-.run}")"

# --- the demo's environment ---------------------------------------------------
export PORT="${PORT:-8000}"
export WEB_ADDRESS="${WEB_ADDRESS:-127.0.0.1}"
export PUBLIC_BASE_URL="${PUBLIC_BASE_URL:-http://localhost:$PORT}"
export BEAT_SCHEDULE_FILE="${BEAT_SCHEDULE_FILE:-$run_dir/beat-schedule}"
local_redis=0
if [ -z "${REDIS_URL:-}${REDIS_HOST:-}" ]; then
  local_redis=1
  export REDIS_PORT="${REDIS_PORT:-6379}"
fi
if [ "${SAMPLE_VOD:-1}" = 1 ]; then
  # Its own address, so that admitting it admits no other loopback service (web, Redis, ...).
  export SAMPLE_VOD_ADDRESS="${SAMPLE_VOD_ADDRESS:-127.0.0.89}" SAMPLE_VOD_PORT="${SAMPLE_VOD_PORT:-8089}"
  export ALLOWED_PRIVATE_NETWORKS="${ALLOWED_PRIVATE_NETWORKS:+$ALLOWED_PRIVATE_NETWORKS,}$SAMPLE_VOD_ADDRESS/32"
fi
if [ "${1:-}" = --print-env ]; then
  env
  exit 0
fi

# --- start --------------------------------------------------------------------
# SKIP_INSTALL=1 leaves .venv as it is (the tests run this script while other tests use .venv).
[ "${SKIP_INSTALL:-0}" = 1 ] || scripts/install.sh run
export PATH="$PWD/.venv/bin:$PATH"
mkdir -p "$run_dir"

# Everything started here is a child that stops with this script: honcho first
# (its processes finish their work while Redis still answers), then the rest.
children=()
honcho_pid=
stop() {
  trap - INT TERM
  if [ -n "$honcho_pid" ]; then kill -TERM "$honcho_pid" 2>/dev/null || true; wait "$honcho_pid" 2>/dev/null || true; fi
  if [ "${#children[@]}" -gt 0 ]; then
    kill -TERM "${children[@]}" 2>/dev/null || true
    wait "${children[@]}" 2>/dev/null || true
  fi
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ "$local_redis" = 1 ] && ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  echo "starting a local Redis on 127.0.0.1:$REDIS_PORT (data in $run_dir; it stops with this script)"
  # Its own session: Ctrl-C reaches it only through stop(), after the workers are done with it.
  setsid redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$run_dir" \
    --appendonly yes --logfile "$run_dir/redis.log" &
  children+=($!)
  for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

# Flower refuses to start without credentials; the local default makes some once.
if [ -z "${FLOWER_BASIC_AUTH:-}${FLOWER_AUTH_PROVIDER:-}" ]; then
  [ -f "$run_dir/flower-credentials" ] || echo "admin:$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')" > "$run_dir/flower-credentials"
  export FLOWER_BASIC_AUTH="$(cat "$run_dir/flower-credentials")"
  echo "Flower: http://localhost:${FLOWER_PORT:-5555} (login in $run_dir/flower-credentials)"
fi

if [ "${SAMPLE_VOD:-1}" = 1 ]; then
  if [ ! -f "$run_dir/sample-vod/master.m3u8" ]; then
    echo "generating the sample VOD in $run_dir/sample-vod"
    python -m samplevod generate "$run_dir/sample-vod" --duration 120 --muted 5
  fi
  python -m samplevod serve "$run_dir/sample-vod" --host "$SAMPLE_VOD_ADDRESS" --port "$SAMPLE_VOD_PORT" &
  children+=($!)
fi

clipqueue db upgrade
echo "API: http://localhost:$PORT/api/v1/ · CLI: .venv/bin/clipqueue --help · Ctrl-C stops everything"
honcho start -p "$PORT" web worker beat flower &
honcho_pid=$!
wait "$honcho_pid"
