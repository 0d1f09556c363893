"""The HTTP API: one blueprint under ``/api/v1``, JSON in and out."""

from __future__ import annotations

import logging
import uuid

import redis
from flask import Blueprint, current_app, jsonify, request, url_for
from sqlalchemy.exc import IntegrityError
from werkzeug.exceptions import HTTPException

from clipqueue import deadletter
from clipqueue.auth import presented_token, token_is_valid
from clipqueue.exceptions import ValidationError
from clipqueue.jobs import job_logger, job_store
from clipqueue.models import Clip, db
from clipqueue.queue import dead_letter_count, enqueue_job, pending_count, unqueued_count
from clipqueue.validation import ClipInput, validate_clip_request

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/api/v1")

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 255


def error_response(status: int, code: str, message: str, field: str | None = None):
    return jsonify({"error": {"code": code, "message": message, "field": field}}), status


@bp.before_request
def require_token():
    """With ``API_TOKENS`` set, calls that change anything need a bearer token."""
    tokens = current_app.config["CLIPQUEUE"].api_tokens
    if not tokens or request.method in SAFE_METHODS:
        return None
    token = presented_token()
    if token is None:
        return error_response(401, "unauthorized", "this call needs Authorization: Bearer <token>")
    if not token_is_valid(token, tokens):
        return error_response(403, "forbidden", "the bearer token is not valid")
    return None


@bp.errorhandler(ValidationError)
def validation_failed(exc: ValidationError):
    return error_response(400, exc.code, exc.message, exc.field)


@bp.errorhandler(redis.RedisError)
def redis_unavailable(exc: redis.RedisError):
    log.warning("Redis unavailable: %s", exc)
    return error_response(503, "redis_unavailable", "the job store (Redis) is unavailable; try again")


def _find_clip(clip_id: str) -> Clip | None:
    try:
        key = uuid.UUID(clip_id)
    except ValueError:
        return None
    return db.session.get(Clip, key)


def _clip_not_found(clip_id: str):
    return error_response(404, "not_found", f"no clip with id {clip_id!r}", "clip_id")


def _idempotency_key() -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    key = key.strip()
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise ValidationError(f"{IDEMPOTENCY_HEADER} must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters",
                              IDEMPOTENCY_HEADER)
    return key


def _created(clip: Clip, status: int):
    response = jsonify(clip.to_dict())
    response.status_code = status
    response.headers["Location"] = url_for("api.get_clip", clip_id=str(clip.id))
    return response


def _earlier_create(key: str, clip_input: ClipInput):
    """A retried POST: the clip its key made before, or 409 if the key now asks for another clip."""
    clip = Clip.query.filter_by(idempotency_key=key).one()
    asked = (clip_input.vod_url, clip_input.start_time, clip_input.end_time, clip_input.quality,
             clip_input.mode, clip_input.title)
    made = (clip.vod_url, clip.start_time, clip.end_time, clip.quality, clip.mode, clip.title)
    if asked != made:
        return error_response(409, "idempotency_key_reused",
                              f"{IDEMPOTENCY_HEADER} {key!r} was used for a different clip", IDEMPOTENCY_HEADER)
    return _created(clip, 200)


@bp.post("/clips")
def create_clip():
    """Validate, record the clip as ``processing``, then queue its job.

    With an ``Idempotency-Key`` header, retrying the same POST returns the
    clip the first one made (``200``) instead of making another.
    """
    data = request.get_json(silent=True)
    if data is None:
        return error_response(400, "invalid_json", "the request body must be JSON (Content-Type: application/json)")
    key = _idempotency_key()
    clip_input = validate_clip_request(data, current_app.config["CLIPQUEUE"])
    if key is not None and Clip.query.filter_by(idempotency_key=key).first() is not None:
        return _earlier_create(key, clip_input)
    clip = Clip(
        vod_url=clip_input.vod_url,
        start_time=clip_input.start_time,
        end_time=clip_input.end_time,
        quality=clip_input.quality,
        mode=clip_input.mode,
        title=clip_input.title,
        idempotency_key=key,
    )
    db.session.add(clip)
    # Commit before queuing: a worker must always find the row it is sent.
    try:
        db.session.commit()
    except IntegrityError:
        # A concurrent request with the same key committed first.
        db.session.rollback()
        return _earlier_create(key, clip_input)
    job_logger(log, str(clip.id)).info("clip created for %s", clip.vod_url)
    enqueue_job(clip)
    return _created(clip, 201)


@bp.get("/clips/<clip_id>")
def get_clip(clip_id: str):
    clip = _find_clip(clip_id)
    if clip is None:
        return _clip_not_found(clip_id)
    return jsonify(clip.to_dict())


@bp.get("/clips/<clip_id>/job")
def get_job(clip_id: str):
    """The job's metadata from Redis (the seed's GetJobStatus)."""
    try:
        uuid.UUID(clip_id)
    except ValueError:
        return _clip_not_found(clip_id)
    job = job_store().get(clip_id)
    if job is None:
        return error_response(
            404, "job_not_found",
            f"no job metadata for clip {clip_id!r} (not queued yet, or expired)", "clip_id",
        )
    return jsonify(job)


@bp.get("/queue")
def queue_counts():
    """Jobs waiting in ``clip_extraction_jobs`` and in the dead-letter queue."""
    return jsonify({
        "pending": pending_count(),
        "dead_letter": dead_letter_count(),
        "not_yet_queued": unqueued_count(),
    })


@bp.get("/dead-letter")
def list_dead_letters():
    raw = request.args.get("limit", "100")
    # Not type=int: that silently turns "abc" into the default.
    limit = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 4 else None
    if limit is None or not 1 <= limit <= 1000:
        return error_response(400, "invalid_field", "limit must be 1 to 1000", "limit")
    entries = deadletter.list_entries(limit)
    return jsonify({"count": dead_letter_count(), "jobs": entries})


@bp.post("/dead-letter/<clip_id>/replay")
def replay_dead_letter(clip_id: str):
    """Queue a dead-lettered job again; a second replay finds nothing to do and says so."""
    clip = _find_clip(clip_id)
    if clip is None:
        return _clip_not_found(clip_id)
    replayed = deadletter.replay(clip_id)
    db.session.refresh(clip)
    return jsonify({"clip_id": clip_id, "replayed": replayed, "status": clip.status}), 202 if replayed else 200


@bp.get("/dead-letter/<uuid:clip_id>")
def show_dead_letter(clip_id: uuid.UUID):
    """One dead-lettered job, with its payload, error and traceback."""
    entry = deadletter.get_entry(str(clip_id))
    if entry is None:
        return error_response(404, "not_found", f"clip {str(clip_id)!r} is not in the dead-letter queue", "clip_id")
    return jsonify(entry)


@bp.post("/dead-letter/replay")
def replay_all_dead_letters():
    """Queue every dead-lettered job again."""
    clip_ids = [entry["clip_id"] for entry in deadletter.list_entries()]
    replayed = [clip_id for clip_id in clip_ids if deadletter.replay(clip_id)]
    return jsonify({"replayed": replayed, "count": len(replayed)}), 202 if replayed else 200


@bp.delete("/dead-letter")
def purge_dead_letters():
    """Drop every dead-lettered job; their clips stay failed."""
    return jsonify({"purged": deadletter.purge()})


def register_error_handlers(app) -> None:
    """Every HTTP error under ``/api/`` is JSON, never an HTML page."""

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if not request.path.startswith("/api/"):
            return exc
        code = (exc.name or "error").lower().replace(" ", "_")
        response, status = error_response(exc.code or 500, code, exc.description or exc.name)
        # Keep the error's own headers (Allow on 405, Retry-After...), not its HTML content type.
        for name, value in exc.get_headers():
            if name.lower() not in ("content-type", "content-length"):
                response.headers[name] = value
        return response, status

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception):
        if isinstance(exc, HTTPException):
            return http_error(exc)
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal error")
