"""clipqueue: cut clips out of Twitch-style VODs behind an HTTP API and Celery workers."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping
from pathlib import Path

import redis
from flask import Flask, send_from_directory
from flask_migrate import Migrate
from sqlalchemy import event
from sqlalchemy.engine import Engine

from clipqueue.config import Settings

MIGRATIONS_DIR = str(Path(__file__).parent / "migrations")

migrate = Migrate()


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, _record) -> None:
    """Let web and several workers share one SQLite file without 'database is locked'."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()


def _engine_options(database_url: str) -> dict:
    if database_url.startswith("sqlite"):
        return {"connect_args": {"timeout": 30}}
    # pre_ping replaces connections the server dropped (restart, failover).
    options = {"pool_pre_ping": True, "pool_recycle": 1800}
    if database_url.startswith("postgresql"):
        # A server that does not answer fails a connection attempt instead of hanging it.
        options["connect_args"] = {"connect_timeout": 5}
    return options


def _cooperative_postgres() -> None:
    """Under gunicorn's gevent worker, let psycopg2 wait on PostgreSQL without blocking every greenlet."""
    try:
        from gevent import monkey
    except ImportError:
        return
    if monkey.is_module_patched("socket"):
        from psycogreen.gevent import patch_psycopg

        patch_psycopg()


def create_app(env: Mapping[str, str] | None = None) -> Flask:
    """Build the Flask app from the environment (or from ``env``, for tests)."""
    from clipqueue.api import bp, register_error_handlers
    from clipqueue.celery_app import celery_init_app
    from clipqueue.metrics import metrics_bp
    from clipqueue.models import db
    from clipqueue.openapi import openapi_bp
    from clipqueue.probes import probe_redis_client, probes_bp
    from clipqueue.publicurl import Publisher, web_base_url
    from clipqueue.ratelimit import init_rate_limits
    from clipqueue.streams import clip_events  # noqa: F401 - adds the event streams to the API blueprint
    from clipqueue.sentry import init_sentry
    from clipqueue.webpage import init_webpage

    settings = Settings.from_env(env)
    app = Flask(__name__)
    if settings.trusted_proxy_hops:
        # Behind a load balancer, rate limits and /metrics must see the client, not the proxy.
        from werkzeug.middleware.proxy_fix import ProxyFix

        hops = settings.trusted_proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
    app.config.update(
        CLIPQUEUE=settings,
        SQLALCHEMY_DATABASE_URI=settings.database_url,
        SQLALCHEMY_ENGINE_OPTIONS=_engine_options(settings.database_url),
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        JSON_SORT_KEYS=False,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    _cooperative_postgres()
    db.init_app(app)
    migrate.init_app(app, db, directory=MIGRATIONS_DIR)
    app.extensions["clipqueue.redis"] = redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=10
    )
    app.extensions["clipqueue.probe_redis"] = probe_redis_client(settings.redis_url)
    celery_init_app(app, settings)
    init_sentry(app, settings)

    app.register_blueprint(bp)
    app.register_blueprint(openapi_bp)
    app.register_blueprint(metrics_bp)
    app.register_blueprint(probes_bp)
    init_webpage(app)
    # Workers link local storage under web's address unless PUBLIC_BASE_URL tells them (clipqueue.publicurl).
    app.before_request(Publisher(app.extensions["clipqueue.probe_redis"], web_base_url(settings)))
    init_rate_limits(app, settings)
    register_error_handlers(app)

    if not settings.s3_bucket:
        @app.get("/media/<path:key>")
        def media(key: str):
            """Serve local storage (a CDN or S3 does this in larger deployments)."""
            return send_from_directory(settings.storage_local_dir, key, max_age=3600)

    return app
