"""The base URL of links to local storage (``{base}/media/...``) when ``PUBLIC_BASE_URL`` is not set.

Links are built by the worker, when it stores a clip, but only ``web`` knows
where it listens: honcho and PaaS platforms give each process its own
``$PORT``, so a worker's own ``PORT`` says nothing about web's. So ``web``
publishes its base URL in Redis (``clipqueue:public-base-url``): its
``PUBLIC_BASE_URL`` if set there, else ``http://localhost:$PORT`` from its own
environment. It does so when it serves a request (the clip's creation comes
first), at most once a minute, so a Redis that lost it has it back at the next
request. A worker without ``PUBLIC_BASE_URL`` links with the published one.

Only web's own settings go into it, never a request's ``Host`` header, which a
client could forge to point every later link elsewhere. Deployments where
clients reach web under another name (a domain, a load balancer) set
``PUBLIC_BASE_URL`` (on web alone is enough), or use S3 and ``CDN_BASE_URL``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping

import redis

from clipqueue.config import Settings

log = logging.getLogger(__name__)

PUBLISHED_KEY = "clipqueue:public-base-url"
REFRESH_SECONDS = 60.0
DEFAULT_WEB_PORT = "8000"  # the Procfile's web binds ${PORT:-8000}


def web_base_url(settings: Settings, env: Mapping[str, str] = os.environ) -> str:
    """Where this web process is reached: ``PUBLIC_BASE_URL``, else ``http://localhost:$PORT``."""
    return settings.public_base_url or f"http://localhost:{env.get('PORT') or DEFAULT_WEB_PORT}"


class Publisher:
    """Web's side: write its base URL to Redis now and then, from a thread, when requests come.

    A request never waits for it: a Redis that hangs must not hold up the
    probes or the API (each write is bounded by short timeouts, one at a time).
    """

    def __init__(self, client: redis.Redis, base_url: str):
        self.client = client
        self.base_url = base_url
        self._next = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> None:
        now = time.monotonic()
        if now < self._next or not self._lock.acquire(blocking=False):
            return
        self._next = now + REFRESH_SECONDS
        threading.Thread(target=self._publish, name="publish-base-url", daemon=True).start()

    def _publish(self) -> None:
        try:
            self.client.set(PUBLISHED_KEY, self.base_url)
        except redis.RedisError as exc:
            # Try again soon, but not on every request while Redis is away.
            self._next = time.monotonic() + REFRESH_SECONDS / 6
            log.debug("public base URL not published: %s", exc)
        finally:
            self._lock.release()


def links_base_url(settings: Settings, client: redis.Redis) -> str:
    """The worker's side: ``PUBLIC_BASE_URL``, else the one web published, else web's default address."""
    if settings.public_base_url:
        return settings.public_base_url
    try:
        published = client.get(PUBLISHED_KEY)
    except redis.RedisError:
        published = None
    return published.decode() if published else f"http://localhost:{DEFAULT_WEB_PORT}"
