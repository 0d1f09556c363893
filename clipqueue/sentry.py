"""Errors from web and workers to Sentry, when ``SENTRY_DSN`` is set, each event tagged with its clip id.

sentry-sdk's Flask integration reports a request's unexpected error, its
Celery integration a task's; the logging integration reports ERROR lines
(a job dead-lettered, an unhandled request error logged by the API's 500
handler). Nothing personal is sent (``send_default_pii`` stays off). Without
``SENTRY_DSN`` sentry-sdk is not even imported.
"""

from __future__ import annotations

from flask import Flask, request

from clipqueue.config import Settings

CLIP_ID_TAG = "clip_id"

# Set in the process that reads SENTRY_DSN; a worker's pool processes, forked from it, inherit it.
_enabled = False


def init_sentry(app: Flask, settings: Settings) -> bool:
    """Start reporting to ``SENTRY_DSN`` from this process; False (and nothing done) without one.

    Called by :func:`clipqueue.create_app`, so ``web`` and every worker (whose
    pool processes are forked from an initialised parent) report alike.
    """
    global _enabled
    if not settings.sentry_dsn:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.flask import FlaskIntegration

    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        integrations=[FlaskIntegration(), CeleryIntegration()],
        send_default_pii=False,
    )
    _enabled = True

    @app.before_request
    def _tag_request_with_clip_id() -> None:
        tag_clip((request.view_args or {}).get("clip_id"))

    return True


def tag_clip(clip_id: object) -> None:
    """Tag what this request or task reports with its clip (nothing without Sentry)."""
    if _enabled and clip_id:
        import sentry_sdk

        sentry_sdk.set_tag(CLIP_ID_TAG, str(clip_id))
