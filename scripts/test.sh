#!/usr/bin/env bash
# Run the whole test suite against real services: installs what is missing,
# makes sure PostgreSQL answers, then runs pytest in parallel. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh test
# The Procfile's commands (celery, gunicorn, clipqueue), which some tests run as written, come from .venv.
export PATH="$PWD/.venv/bin:$PATH"

# PostgreSQL: use the one given (TEST_POSTGRES_URL), or the local one, or install and start one.
export TEST_POSTGRES_URL="${TEST_POSTGRES_URL:-postgresql://postgres@127.0.0.1:5432/test}"
if ! .venv/bin/python - <<'PY' 2>/dev/null
import os, psycopg2
psycopg2.connect(os.environ["TEST_POSTGRES_URL"], connect_timeout=3).close()
PY
then
  echo "no PostgreSQL at $TEST_POSTGRES_URL; starting a local one"
  if ! command -v pg_ctlcluster >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  version=$(ls /etc/postgresql | sort -n | tail -1)
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 && break; sleep 1; done
  runuser -u postgres -- psql -q -c "ALTER USER postgres PASSWORD 'postgres'"
  export TEST_POSTGRES_URL="postgresql://postgres:postgres@127.0.0.1:5432/postgres"
fi

# Most tests wait on real services (workers, ffmpeg, sleeps until a job is ready), so they run in parallel
# xdist workers, each with its own Redis, S3 API and VOD server. TEST_WORKERS=N changes how many; 0 runs serially.
# Tests marked xdist_group share a worker and run one after another (loadgroup).
exec .venv/bin/python -m pytest -n "${TEST_WORKERS:-6}" --dist loadgroup "$@"
