#!/usr/bin/env bash
# Install what is missing and start the whole service from the Procfile:
# release (migrations), then web, worker, beat and flower.
#
# With nothing configured it runs on the embedded default: a local Redis
# (started here if none answers), SQLite (./clipqueue.db) and local storage
# (./media, served by web under /media/). It also serves a generated sample
# VOD on http://127.0.0.1:8089/ for the README's example (SAMPLE_VOD=0 to skip).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh run
export PATH="$PWD/.venv/bin:$PATH"
mkdir -p .run

if [ -z "${REDIS_URL:-}${REDIS_HOST:-}" ]; then
  port="${REDIS_PORT:-6379}"
  if ! redis-cli -p "$port" ping >/dev/null 2>&1; then
    echo "starting a local Redis on 127.0.0.1:$port (data in .run/)"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --dir "$PWD/.run" \
      --appendonly yes --logfile "$PWD/.run/redis.log"
    for _ in $(seq 1 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
fi

# Flower refuses to start without credentials; the local default makes some once.
if [ -z "${FLOWER_BASIC_AUTH:-}${FLOWER_AUTH_PROVIDER:-}" ]; then
  [ -f .run/flower-credentials ] || echo "admin:$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')" > .run/flower-credentials
  export FLOWER_BASIC_AUTH="$(cat .run/flower-credentials)"
  echo "Flower: http://localhost:${FLOWER_PORT:-5555} (login in .run/flower-credentials)"
fi

export PORT="${PORT:-8000}"
export PUBLIC_BASE_URL="${PUBLIC_BASE_URL:-http://localhost:$PORT}"
export BEAT_SCHEDULE_FILE="${BEAT_SCHEDULE_FILE:-$PWD/.run/beat-schedule}"

children=()
trap 'kill "${children[@]}" 2>/dev/null || true' EXIT
if [ "${SAMPLE_VOD:-1}" = 1 ]; then
  # The sample VOD is on loopback, which only a local demo may fetch from.
  export ALLOW_PRIVATE_SOURCES="${ALLOW_PRIVATE_SOURCES:-true}"
  if [ ! -f .run/sample-vod/master.m3u8 ]; then
    echo "generating the sample VOD in .run/sample-vod"
    python -m clipqueue.sample generate .run/sample-vod --duration 120 --muted 5
  fi
  python -m clipqueue.sample serve .run/sample-vod --port "${SAMPLE_VOD_PORT:-8089}" &
  children+=($!)
fi

clipqueue db upgrade
honcho start -p "$PORT" web worker beat flower
