"""The HTTP API: one blueprint under ``/api/v1``, JSON in and out."""

from __future__ import annotations

import logging
import uuid

import redis
from flask import Blueprint, current_app, jsonify, request, url_for
from pydantic import ValidationError as PydanticValidationError
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter
from werkzeug.routing import ValidationError as NoRouteMatch

from clipqueue import clips, deadletter, defaults, schemas, webhooks
from clipqueue.auth import presented_token, token_is_valid
from clipqueue.config import Settings
from clipqueue.exceptions import ForbiddenSource, InvalidTwitchLink, SourceUnavailable, ValidationError
from clipqueue.jobs import job_logger, job_store
from clipqueue.media.twitch import parse_twitch_link
from clipqueue.models import Clip, db
from clipqueue.openapi import SAFE_METHODS, operation, view_operation
from clipqueue.queue import dead_letter_count, enqueue_job, pending_count, unqueued_count
from clipqueue.urlpolicy import SourcePolicy, check_url, host_allowed

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/api/v1")


class ClipIdConverter(BaseConverter):
    """``<clip_id:...>``: a UUID in any spelling ``uuid.UUID`` reads, handed to the view in its one spelling.

    Unlike a plain string it leaves ``/dead-letter/replay`` to its own route.
    """

    regex = r"(?:[Uu][Rr][Nn]:[Uu][Uu][Ii][Dd]:)?\{?[0-9A-Fa-f-]{32,36}\}?"

    def to_python(self, value: str) -> str:
        clip_id = clip_uuid(value)
        if clip_id is None:
            raise NoRouteMatch()
        return clip_id

    def to_url(self, value: str) -> str:
        return value


# Before any route: a rule needs its converters when it is added.
bp.record_once(lambda state: state.app.url_map.converters.setdefault("clip_id", ClipIdConverter))

IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 255
IDEMPOTENCY_PARAMETER = {
    "name": IDEMPOTENCY_HEADER, "in": "header", "required": False,
    "description": "Retrying the same POST with the same key returns the first clip (200).",
    # Printable ASCII, not blank at either end (the API trims and checks printable characters).
    "schema": {"type": "string",
               "pattern": rf"^[\x21-\x7e](?:[\x20-\x7e]{{0,{MAX_IDEMPOTENCY_KEY - 2}}}[\x21-\x7e])?$"},
}


def error_response(status: int, code: str, message: str, field: str | None = None):
    body = schemas.ErrorBody(error=schemas.ErrorDetail(code=code, message=message, field=field))
    return jsonify(body.model_dump()), status


@bp.before_request
def require_token():
    """With ``API_TOKENS`` set, writes and the dead-letter reads need a bearer token."""
    tokens = current_app.config["CLIPQUEUE"].api_tokens
    op = view_operation(current_app, request.endpoint)
    # A view that declared nothing gets the safe default: its writes need the token.
    needs_token = op.needs_token(request.method) if op is not None else request.method not in SAFE_METHODS
    if not tokens or not needs_token:
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


@bp.errorhandler(OperationalError)
@bp.errorhandler(InterfaceError)
def database_unavailable(exc: OperationalError | InterfaceError):
    """A database that is down or unreachable is a 503 to retry, not an internal error."""
    log.warning("database unavailable: %s", exc.orig if exc.orig is not None else exc)
    return error_response(503, "database_unavailable", "the database is unavailable; try again")


def clip_uuid(clip_id: str) -> str | None:
    """The clip id in its one spelling (lower case, hyphens), or None if it is not a UUID.

    Upper case, braces and ``urn:uuid:`` all name the same clip, its job and its dead letter.
    """
    try:
        return str(uuid.UUID(clip_id))
    except ValueError:
        return None


def _find_clip(clip_id: str | None) -> Clip | None:
    return None if clip_id is None else db.session.get(Clip, uuid.UUID(clip_id))


def _clip_not_found(clip_id: str):
    return error_response(404, "not_found", f"no clip with id {clip_id!r}", "clip_id")


def check_source(vod_url: str, settings: Settings) -> None:
    """Refuse a source the policy forbids (code ``forbidden_source``), with a bounded DNS lookup.

    A Twitch link is not looked up here: the worker resolves it through
    Twitch's APIs and applies the policy to every URL they hand back.
    """
    policy = SourcePolicy.from_settings(settings)
    try:
        link = parse_twitch_link(vod_url)
    except InvalidTwitchLink as exc:
        raise ValidationError(str(exc), "vod_url", "invalid_field") from exc
    if link is not None:
        if not host_allowed("twitch.tv", policy):
            raise ValidationError("forbidden source: Twitch links need twitch.tv in ALLOWED_SOURCE_HOSTS",
                                  "vod_url", "forbidden_source")
        return
    _refuse_forbidden(vod_url, policy, "vod_url")


def check_callback(callback_url: str, settings: Settings) -> None:
    """Refuse a ``callback_url`` the source URL policy forbids (code ``forbidden_source``).

    Each delivery is checked again (the name may resolve elsewhere by then).
    """
    _refuse_forbidden(callback_url, SourcePolicy.from_settings(settings), "callback_url", what="callback_url")


def _refuse_forbidden(url: str, policy: SourcePolicy, field: str, what: str = "source") -> None:
    """Raise a 400 naming ``field`` if the policy forbids ``url``, after a DNS lookup bounded for the API.

    A lookup that is failing or slow leaves the URL undecided, not refused: it
    is checked again before anything is fetched from or sent to it.
    """
    try:
        check_url(url, policy, dns_timeout=defaults.API_DNS_TIMEOUT_SECONDS)
    except ForbiddenSource as exc:
        raise ValidationError(str(exc).replace("forbidden source", f"forbidden {what}", 1),
                              field, "forbidden_source") from exc
    except SourceUnavailable:
        pass


def _idempotency_key() -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    key = key.strip()
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise ValidationError(f"{IDEMPOTENCY_HEADER} must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters",
                              IDEMPOTENCY_HEADER)
    return key


def _clip_response(clip: Clip):
    return jsonify(schemas.Clip.of(clip).model_dump())


def _created(clip: Clip, status: int):
    response = _clip_response(clip)
    response.status_code = status
    response.headers["Location"] = url_for("api.get_clip", clip_id=str(clip.id))
    return response


def _earlier_create(key: str, clip_input: schemas.ClipRequest):
    """A retried POST: the clip its key made before, or 409 if the key now asks for another clip."""
    clip = Clip.query.filter_by(idempotency_key=key).one()
    asked = clip_input.columns
    if asked != {name: getattr(clip, name) for name in asked}:
        return error_response(409, "idempotency_key_reused",
                              f"{IDEMPOTENCY_HEADER} {key!r} was used for a different clip", IDEMPOTENCY_HEADER)
    return _created(clip, 200)


@bp.post("/clips")
@operation("createClip", {
    201: ("the clip, still processing", schemas.Clip),
    200: ("the clip an earlier POST with this Idempotency-Key made", schemas.Clip),
    400: ("a field is missing or invalid (error.field names it), the source is forbidden, "
          "or the body is not JSON", None),
    409: ("the Idempotency-Key was used for a different clip", None),
}, body=True, headers=(IDEMPOTENCY_PARAMETER,))
def create_clip():
    """Validate, record the clip as ``processing``, then queue its job.

    With an ``Idempotency-Key`` header, retrying the same POST returns the
    clip the first one made (``200``) instead of making another.
    """
    data = request.get_json(silent=True)
    if data is None:
        return error_response(400, "invalid_json", "the request body must be JSON (Content-Type: application/json)")
    key = _idempotency_key()
    settings = current_app.config["CLIPQUEUE"]
    clip_input = schemas.parse_clip_request(data, settings)
    check_source(clip_input.vod_url, settings)
    if clip_input.callback_url is not None:
        check_callback(clip_input.callback_url, settings)
    if key is not None and Clip.query.filter_by(idempotency_key=key).first() is not None:
        return _earlier_create(key, clip_input)
    clip = Clip(**clip_input.columns, idempotency_key=key)
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
@operation("getClip", {200: ("the clip", schemas.Clip), 404: ("no such clip", None)})
def get_clip(clip_id: str):
    """The clip record."""
    clip = _find_clip(clip_uuid(clip_id))
    if clip is None:
        return _clip_not_found(clip_id)
    return _clip_response(clip)


@bp.post("/clips/<clip_id>/cancel")
@operation("cancelClip", {
    202: ("canceled: a queued job never starts, a running one stops within seconds", schemas.Clip),
    404: ("no such clip", None),
    409: ("the clip is no longer processing (ready, failed or canceled already); nothing changed", None),
})
def cancel_clip(clip_id: str):
    """Cancel a queued or running clip: it ends ``canceled``, its files are not kept."""
    key = clip_uuid(clip_id)
    clip = _find_clip(key)
    if clip is None:
        return _clip_not_found(clip_id)
    if not clips.mark_canceled(key):
        clip = clips.get(key)
        return error_response(409, "not_cancelable",
                              f"clip is {clip.status}; only a processing clip can be canceled", "clip_id")
    return _clip_response(clips.get(key)), 202


@bp.get("/webhooks/deliveries")
@operation("listWebhookDeliveries", {
    200: ("webhook deliveries, oldest first; without status, the undelivered ones",
          schemas.WebhookDeliveries),
    400: ("status or limit is not valid", None),
}, query=schemas.WebhookDeliveryQuery, private=True)
def list_webhook_deliveries():
    """Webhook deliveries by status: pending (still being tried), failed (given up), delivered."""
    try:
        query = schemas.WebhookDeliveryQuery.model_validate(request.args.to_dict())
    except PydanticValidationError as exc:
        raise schemas.validation_error(exc) from None
    statuses = (query.status,) if query.status else (webhooks.DELIVERY_PENDING, webhooks.DELIVERY_FAILED)
    return jsonify({"deliveries": webhooks.list_deliveries(statuses, query.limit)})


@bp.post("/webhooks/deliveries/<delivery_id>/retry")
@operation("retryWebhookDelivery", {
    202: ("sent again now, with a fresh WEBHOOK_RETRY_HOURS", schemas.WebhookDelivery),
    404: ("no such delivery", None),
    409: ("the delivery was delivered already", None),
})
def retry_webhook_delivery(delivery_id: str):
    """Try an undelivered (pending or failed) webhook delivery again now."""
    delivery = webhooks.get(delivery_id)
    if delivery is None:
        return error_response(404, "not_found", f"no webhook delivery with id {delivery_id!r}", "delivery_id")
    if not webhooks.retry(delivery_id):
        return error_response(409, "already_delivered", "the delivery was delivered already", "delivery_id")
    return jsonify(webhooks.record(webhooks.get(delivery_id))), 202


@bp.get("/clips/<clip_id>/job")
@operation("getJob", {
    200: ("the job's metadata", schemas.Job),
    404: ("no such clip, or no job metadata (not queued yet, or expired)", None),
})
def get_job(clip_id: str):
    """The job's metadata from Redis (the seed's GetJobStatus)."""
    key = clip_uuid(clip_id)
    if key is None:
        return _clip_not_found(clip_id)
    job = job_store().get(key)
    if job is None:
        return error_response(
            404, "job_not_found",
            f"no job metadata for clip {clip_id!r} (not queued yet, or expired)", "clip_id",
        )
    return jsonify(job)


@bp.get("/queue")
@operation("getQueueCounts", {200: ("jobs waiting", schemas.QueueCounts)})
def queue_counts():
    """Jobs waiting in ``clip_extraction_jobs`` and in the dead-letter queue."""
    counts = schemas.QueueCounts(
        pending=pending_count(), dead_letter=dead_letter_count(), not_yet_queued=unqueued_count(),
    )
    return jsonify(counts.model_dump())


@bp.get("/dead-letter")
@operation("listDeadLetters", {
    200: ("jobs that failed for good, oldest first", schemas.DeadLetters),
    400: ("limit is not 1 to 1000", None),
}, query=schemas.DeadLetterQuery, private=True)
def list_dead_letters():
    """Jobs that failed for good, with error, traceback and attempts."""
    try:
        query = schemas.DeadLetterQuery.model_validate(request.args.to_dict())
    except PydanticValidationError as exc:
        raise schemas.validation_error(exc) from None
    entries = deadletter.list_entries(query.limit)
    return jsonify({"count": dead_letter_count(), "jobs": entries})


@bp.post("/dead-letter/<clip_id>/replay")
@operation("replayDeadLetter", {
    202: ("queued again", schemas.Replay),
    200: ("nothing to replay (not dead-lettered)", schemas.Replay),
    404: ("no such clip", None),
})
def replay_dead_letter(clip_id: str):
    """Queue a dead-lettered job again; a second replay finds nothing to do and says so."""
    key = clip_uuid(clip_id)
    clip = _find_clip(key)
    if clip is None:
        return _clip_not_found(clip_id)
    replayed = deadletter.replay(key)
    db.session.refresh(clip)
    answer = schemas.Replay(clip_id=key, replayed=replayed, status=clip.status)
    return jsonify(answer.model_dump()), 202 if replayed else 200


@bp.get("/dead-letter/<clip_id:clip_id>")
@operation("showDeadLetter", {
    200: ("the dead-lettered job, with its traceback", schemas.DeadLetter),
    404: ("the clip is not in the dead-letter queue", None),
}, private=True)
def show_dead_letter(clip_id: str):
    """One dead-lettered job, with its payload, error and traceback."""
    entry = deadletter.get_entry(clip_id)
    if entry is None:
        return error_response(404, "not_found", f"clip {clip_id!r} is not in the dead-letter queue",
                              "clip_id")
    return jsonify(entry)


@bp.post("/dead-letter/replay")
@operation("replayAllDeadLetters", {
    202: ("the clips queued again", schemas.ReplayAll),
    200: ("nothing was dead-lettered", schemas.ReplayAll),
})
def replay_all_dead_letters():
    """Queue every dead-lettered job again."""
    clip_ids = [entry["clip_id"] for entry in deadletter.list_entries()]
    replayed = [clip_id for clip_id in clip_ids if deadletter.replay(clip_id)]
    answer = schemas.ReplayAll(replayed=replayed, count=len(replayed))
    return jsonify(answer.model_dump()), 202 if replayed else 200


@bp.delete("/dead-letter")
@operation("purgeDeadLetters", {200: ("how many were dropped", schemas.Purged)})
def purge_dead_letters():
    """Drop every dead-lettered job; their clips stay failed."""
    return jsonify(schemas.Purged(purged=deadletter.purge()).model_dump())


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
