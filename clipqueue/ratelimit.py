"""Rate limits on the API, per token (per client address without one), counted in Redis.

``RATE_LIMIT`` limits calls that change anything, ``RATE_LIMIT_READS`` the
reads. The counters live in the deployment's Redis, so every ``web`` process
shares them. When Redis is down the limiter fails open to per-process
counters in memory: creating a clip must keep working then (its job is queued
when Redis is back).
"""

from __future__ import annotations

import hashlib

from flask import Flask, current_app, request
from flask_limiter import Limiter, RateLimitExceeded

from clipqueue.api import bp, error_response
from clipqueue.auth import presented_token, token_is_valid
from clipqueue.config import Settings

KEY_PREFIX = "clipqueue-ratelimit"
WRITE_METHODS = ["POST", "PUT", "PATCH", "DELETE"]
READ_METHODS = ["GET", "HEAD"]
STORAGE_TIMEOUT_SECONDS = 1  # a blackholed Redis must not hold every request


def client_key() -> str:
    """Who a request counts against: its API token if valid, else its address.

    Only a valid token gets its own counter, so inventing tokens does not buy
    fresh limits; the token itself never reaches Redis, only a digest of it.
    """
    settings: Settings = current_app.config["CLIPQUEUE"]
    token = presented_token()
    if token_is_valid(token, settings.api_tokens):
        return "token:" + hashlib.sha256(token.encode()).hexdigest()[:32]
    return f"address:{request.remote_addr or 'unknown'}"


def _rate_limited(exc: RateLimitExceeded):
    """429 in the API's error format."""
    return error_response(429, "rate_limited", f"rate limit exceeded ({exc.description}); retry later")


def init_rate_limits(app: Flask, settings: Settings) -> Limiter | None:
    """Apply ``RATE_LIMIT`` to the API's writes and ``RATE_LIMIT_READS`` to its reads."""
    if not settings.rate_limit and not settings.rate_limit_reads:
        return None
    limiter = Limiter(
        client_key,
        app=app,
        storage_uri=settings.redis_url,
        storage_options={
            "socket_connect_timeout": STORAGE_TIMEOUT_SECONDS,
            "socket_timeout": STORAGE_TIMEOUT_SECONDS,
        },
        strategy="sliding-window-counter",
        key_prefix=KEY_PREFIX,
        headers_enabled=True,
        in_memory_fallback_enabled=True,
        swallow_errors=True,
    )
    if settings.rate_limit:
        limiter.limit(settings.rate_limit, methods=WRITE_METHODS)(bp)
    if settings.rate_limit_reads:
        limiter.limit(settings.rate_limit_reads, methods=READ_METHODS)(bp)
    app.register_error_handler(RateLimitExceeded, _rate_limited)
    return limiter
