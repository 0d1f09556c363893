"""The HTTP API: one blueprint under ``/api/v1``, JSON in and out."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import redis
import sqlalchemy as sa
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
from clipqueue.queue import dead_letter_count, enqueue_jobs, pending_count, unqueued_count
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


def _idempotency_key(room: int = 0) -> str | None:
    """The request's ``Idempotency-Key``, trimmed, leaving ``room`` characters for a batch item's suffix."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    key = key.strip()
    longest = MAX_IDEMPOTENCY_KEY - room
    if not 1 <= len(key) <= longest or not key.isprintable():
        raise ValidationError(f"{IDEMPOTENCY_HEADER} must be 1 to {longest} printable characters",
                              IDEMPOTENCY_HEADER)
    return key


# A batch item's key is the batch's key, this separator and the item's index. A header key is
# printable, so no single POST's key can be a batch item's.
_ITEM_KEY_SEPARATOR = "\x1f"
_ITEM_KEY_ROOM = 1 + len(str(defaults.MAX_BATCH * 10))


def _item_key(batch_key: str | None, index: int) -> str | None:
    return None if batch_key is None else f"{batch_key}{_ITEM_KEY_SEPARATOR}{index}"


def _clip_response(clip: Clip):
    return jsonify(schemas.Clip.of(clip).model_dump())


def _created(clip: Clip, status: int):
    response = _clip_response(clip)
    response.status_code = status
    response.headers["Location"] = url_for("api.get_clip", clip_id=str(clip.id))
    return response


class SourceChecks:
    """The source policy's verdicts on a request's URLs, each URL looked up once (a batch repeats its VOD)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._refusals: dict[tuple[str, str], ValidationError | None] = {}

    def check(self, clip_input: schemas.ClipRequest) -> None:
        """Raise ``ValidationError`` (code ``forbidden_source``) if the policy forbids a URL of the request."""
        self._check("vod_url", clip_input.vod_url, check_source)
        if clip_input.callback_url is not None:
            self._check("callback_url", clip_input.callback_url, check_callback)

    def _check(self, field: str, url: str, check) -> None:
        if (field, url) not in self._refusals:
            try:
                check(url, self.settings)
                self._refusals[field, url] = None
            except ValidationError as exc:
                self._refusals[field, url] = exc
        refusal = self._refusals[field, url]
        if refusal is not None:
            raise ValidationError(refusal.message, refusal.field, refusal.code)


@dataclass
class Creation:
    """What became of one clip request: made now (201), by an earlier request with its key (200), or 409."""

    status: int
    clip: Clip | None = None
    error: schemas.ErrorDetail | None = None

    def answer(self) -> dict:
        if self.clip is None:
            return schemas.ErrorBody(error=self.error).model_dump()
        return schemas.Clip.of(self.clip).model_dump()


def _earlier(clip: Clip, clip_input: schemas.ClipRequest) -> Creation:
    """A retried request: the clip its key made before, or 409 if the key now asks for another clip."""
    asked = clip_input.columns
    if asked != {name: getattr(clip, name) for name in asked}:
        return Creation(409, error=schemas.ErrorDetail(
            code="idempotency_key_reused", field=IDEMPOTENCY_HEADER,
            message=f"{IDEMPOTENCY_HEADER} {clip.idempotency_key.split(_ITEM_KEY_SEPARATOR)[0]!r} "
                    "was used for a different clip"))
    return Creation(200, clip)


def create_clips(requests: list[tuple[schemas.ClipRequest, str | None]]) -> list[Creation]:
    """Record the clips as ``processing`` in one transaction, then queue their jobs; one answer per request.

    The requests are valid and allowed by the source policy. One whose
    idempotency key an earlier request used gets that request's clip.
    """
    for attempt in (1, 2):
        keys = [key for _, key in requests if key is not None]
        earlier = {clip.idempotency_key: clip
                   for clip in Clip.query.filter(Clip.idempotency_key.in_(keys))} if keys else {}
        creations = [_earlier(earlier[key], clip_input) if key in earlier
                     else Creation(201, Clip(**clip_input.columns, idempotency_key=key))
                     for clip_input, key in requests]
        made = [creation.clip for creation in creations if creation.status == 201]
        db.session.add_all(made)
        # Commit before queuing: a worker must always find the row it is sent.
        try:
            db.session.commit()
            break
        except IntegrityError:
            # A concurrent request with one of these keys committed first: answer with its clips.
            db.session.rollback()
            if attempt == 2:
                raise
    _reload(made)
    for clip in made:
        job_logger(log, str(clip.id)).info("clip created for %s", clip.vod_url)
    enqueue_jobs(made)
    _reload(made)
    return creations


def _reload(made: list[Clip]) -> None:
    """Read the committed rows back in one query (each expired row would otherwise load itself)."""
    if made:
        db.session.scalars(sa.select(Clip).where(Clip.id.in_([clip.id for clip in made]))).all()


def _request_json():
    data = request.get_json(silent=True)
    if data is None:
        raise ValidationError("the request body must be JSON (Content-Type: application/json)", None,
                              "invalid_json")
    return data


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
    data = _request_json()
    key = _idempotency_key()
    settings = current_app.config["CLIPQUEUE"]
    clip_input = schemas.parse_clip_request(data, settings)
    SourceChecks(settings).check(clip_input)
    (creation,) = create_clips([(clip_input, key)])
    if creation.clip is None:
        return jsonify(creation.answer()), creation.status
    return _created(creation.clip, creation.status)


BATCH_IDEMPOTENCY_PARAMETER = {
    **IDEMPOTENCY_PARAMETER,
    "description": "Retrying the same batch with the same key answers, for each item, the clip the first "
                   "batch made (as a single POST's key does) instead of making another.",
    "schema": {"type": "string", "pattern": IDEMPOTENCY_PARAMETER["schema"]["pattern"].replace(
        f"{{0,{MAX_IDEMPOTENCY_KEY - 2}}}", f"{{0,{MAX_IDEMPOTENCY_KEY - _ITEM_KEY_ROOM - 2}}}")},
}


@bp.post("/clips/batch")
@operation("createClips", {
    201: ("every clip was created (or, with the same Idempotency-Key again, found)", schemas.BatchResult),
    207: ("some or all items were refused: each item is its clip or its error, in order",
          schemas.BatchResult),
    400: ("the body is not JSON, or clips is not a list of 1 to MAX_BATCH items (error.field is clips)",
          None),
}, body=schemas.batch_request_model, headers=(BATCH_IDEMPOTENCY_PARAMETER,))
def create_clips_batch():
    """Create up to ``MAX_BATCH`` clips at once, each validated and created or refused on its own.

    Valid items are recorded in one transaction, then their jobs are queued in
    the order given. The answer holds, in the items' order, each clip or the
    error (``{"error": {"code", "message", "field"}}``) that refused it.
    """
    settings = current_app.config["CLIPQUEUE"]
    # Each item may be as large as a single POST's body.
    request.max_content_length = settings.max_request_bytes * settings.max_batch
    data = _request_json()
    key = _idempotency_key(room=_ITEM_KEY_ROOM)
    items = schemas.parse_batch_request(data, settings)
    checks = SourceChecks(settings)
    answers: list[dict | None] = [None] * len(items)
    valid: list[tuple[int, schemas.ClipRequest]] = []
    for index, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise ValidationError("each item must be a clip request (a JSON object)", None, "invalid_body")
            clip_input = schemas.parse_clip_request(item, settings)
            checks.check(clip_input)
        except ValidationError as exc:
            answers[index] = schemas.ErrorBody(error=schemas.ErrorDetail(
                code=exc.code, message=exc.message, field=exc.field)).model_dump()
            continue
        valid.append((index, clip_input))
    creations = create_clips([(clip_input, _item_key(key, index)) for index, clip_input in valid])
    for (index, _), creation in zip(valid, creations):
        answers[index] = creation.answer()
    every_clip = len(valid) == len(items) and all(creation.clip is not None for creation in creations)
    return jsonify({"clips": answers}), 201 if every_clip else 207


@bp.get("/clips")
@operation("listClips", {
    200: ("clips, newest first; or the clips ids names, in its order", schemas.ClipList),
    400: ("status, limit, cursor or ids is not valid (error.field names it)", None),
}, query=schemas.ClipListQuery)
def list_clips():
    """Page through clips newest first (``status``, ``limit``, ``cursor``), or fetch up to 100 by ``ids``."""
    try:
        query = schemas.ClipListQuery.model_validate(request.args.to_dict())
    except PydanticValidationError as exc:
        raise schemas.validation_error(exc) from None
    if query.ids is not None:
        ids = list(dict.fromkeys(str(uuid.UUID(text)) for text in query.ids.split(",")))
        found = clips.by_ids(ids, query.status)
        return jsonify(schemas.ClipList(
            clips=[schemas.Clip.of(found[clip_id]) for clip_id in ids if clip_id in found],
            next_cursor=None, missing=[clip_id for clip_id in ids if clip_id not in found],
        ).model_dump())
    page, next_cursor = clips.page(query.status, query.limit, query.cursor)
    return jsonify(schemas.ClipList(clips=[schemas.Clip.of(clip) for clip in page], next_cursor=next_cursor,
                                    missing=[]).model_dump())


@bp.get("/clips/<clip_id:clip_id>")  # not /clips/batch
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
