"""Kubernetes-style probes of ``web``: ``GET /healthz`` (liveness) and ``GET /readyz`` (readiness).

Liveness answers from the process alone: a dependency that is down must not
get every web process restarted. Readiness asks Redis and the database, each
check in a thread of its own bounded by ``PROBE_TIMEOUT_SECONDS``, so a probe
never hangs on a server that accepts connections but does not answer; a check
that overruns counts as down. The checks run on a small shared pool: probes
that keep arriving while a dependency hangs wait for a free thread and time
out in turn, rather than piling up threads.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import redis
import sqlalchemy as sa
from flask import Blueprint, current_app
from redis.backoff import NoBackoff
from redis.retry import Retry

from clipqueue import defaults

probes_bp = Blueprint("probes", __name__)

_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="readyz")


@probes_bp.get("/healthz")
def healthz():
    """Liveness: 200 while the process serves requests."""
    return {"status": "ok"}


@probes_bp.get("/readyz")
def readyz():
    """Readiness: 200 when Redis and the database answer; otherwise 503 naming what is down."""
    timeout = defaults.PROBE_TIMEOUT_SECONDS
    client: redis.Redis = current_app.extensions["clipqueue.probe_redis"]
    engine = current_app.extensions["sqlalchemy"].engine
    began = time.monotonic()
    pending = {"redis": _pool.submit(client.ping), "database": _pool.submit(_select_one, engine)}
    checks: dict[str, dict] = {}
    for name, future in pending.items():
        try:
            future.result(timeout=max(0.0, timeout - (time.monotonic() - began)))
            checks[name] = {"status": "ok"}
        except FutureTimeout:
            future.cancel()
            checks[name] = {"status": "down", "error": f"no answer within {timeout:g} s"}
        except Exception as exc:  # noqa: BLE001 - any failure of a dependency means "down", named
            checks[name] = {"status": "down", "error": f"{type(exc).__name__}: {exc}"[:300]}
    down = [name for name, check in checks.items() if check["status"] != "ok"]
    body = {"status": "unavailable" if down else "ok", "down": down, "checks": checks}
    return body, 503 if down else 200


def _select_one(engine: sa.Engine) -> None:
    with engine.connect() as connection:
        connection.execute(sa.text("SELECT 1"))


def probe_redis_client(redis_url: str) -> redis.Redis:
    """A client of its own for readiness, with timeouts shorter than the probe's."""
    timeout = defaults.PROBE_TIMEOUT_SECONDS
    # No retries: one failed ping is the answer, within the probe's time.
    return redis.Redis.from_url(redis_url, socket_connect_timeout=timeout, socket_timeout=timeout,
                                retry=Retry(NoBackoff(), 0))
