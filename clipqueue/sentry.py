"""Errors from web and workers to Sentry, when ``SENTRY_DSN`` is set, each event tagged with its clip id.

sentry-sdk's Flask integration reports a request's unexpected error, its
Celery integration a task's; the logging integration reports ERROR lines
(a job dead-lettered, an unhandled request error logged by the API's 500
handler). Nothing personal is sent (``send_default_pii`` stays off).
"""

from __future__ import annotations

import sentry_sdk
from flask import Flask, request
from sentry_sdk.integrations.celery import CeleryIntegration
from sentry_sdk.integrations.flask import FlaskIntegration

from clipqueue.config import Settings

CLIP_ID_TAG = "clip_id"


def init_sentry(app: Flask, settings: Settings) -> bool:
    """Start reporting to ``SENTRY_DSN`` from this process; False (and nothing done) without one.

    Called by :func:`clipqueue.create_app`, so ``web`` and every worker (whose
    pool processes are forked from an initialised parent) report alike.
    """
    if not settings.sentry_dsn:
        return False
    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        integrations=[FlaskIntegration(), CeleryIntegration()],
        send_default_pii=False,
    )

    @app.before_request
    def _tag_request_with_clip_id() -> None:
        clip_id = (request.view_args or {}).get("clip_id")
        if clip_id:
            tag_clip(str(clip_id))

    return True


def tag_clip(clip_id: str | None) -> None:
    """Tag what this request or task reports with its clip (a no-op without Sentry)."""
    if clip_id:
        sentry_sdk.set_tag(CLIP_ID_TAG, clip_id)
