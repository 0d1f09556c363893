"""The page for people at ``/`` and the API explorer at ``/docs``, served by the same app as the API.

The page is one template and plain JavaScript (``static/app.js``) that talks
to ``/api/v1`` like any client: no build step, no framework, nothing from a
CDN. hls.js (for scrubbing an HLS source) is vendored under
``static/vendor/hls`` with its licence; Swagger UI's files come from the
``flask-swagger-ui`` package.
"""

from __future__ import annotations

from flask import Blueprint, Flask, current_app, render_template
from flask_swagger_ui import get_swaggerui_blueprint

from clipqueue.config import Settings
from clipqueue.media.extract import MODES
from clipqueue.media.playlist import QUALITIES
from clipqueue.models import PRIORITIES, PRIORITY_NORMAL
from clipqueue.schemas import DEFAULT_MODE, DEFAULT_QUALITY

webpage_bp = Blueprint("webpage", __name__)

DOCS_PATH = "/docs"
OPENAPI_URL = "/api/v1/openapi.json"

# The page's own scripts and styles only. Clips, thumbnails and the sources scrubbed
# may live on any origin (S3, a CDN, the VOD's host), so media, images and fetches
# may come from anywhere; hls.js feeds the <video> through blob: URLs.
PAGE_CSP = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src * data: blob:",
    "media-src * blob:",
    "connect-src *",
    "worker-src 'self' blob:",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
))


@webpage_bp.get("/")
def index():
    """The page: a form to create a clip, the clips as live cards, the dead-letter queue."""
    settings: Settings = current_app.config["CLIPQUEUE"]
    page = render_template(
        "index.html",
        needs_token=bool(settings.api_tokens),
        qualities=QUALITIES, default_quality=DEFAULT_QUALITY,
        modes=MODES, default_mode=DEFAULT_MODE,
        priorities=PRIORITIES, default_priority=PRIORITY_NORMAL,
        min_clip_seconds=settings.min_clip_seconds, max_clip_seconds=settings.max_clip_seconds,
    )
    return page, 200, {"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff",
                       "Referrer-Policy": "same-origin"}


def init_webpage(app: Flask) -> None:
    """Serve the page at ``/`` and Swagger UI, driven by the API's own document, at ``/docs``."""
    app.register_blueprint(webpage_bp)
    app.register_blueprint(get_swaggerui_blueprint(
        DOCS_PATH, OPENAPI_URL,
        config={"app_name": "clipqueue API", "layout": "BaseLayout", "deepLinking": True,
                "tryItOutEnabled": True, "persistAuthorization": False},
        blueprint_name="docs",
    ))
