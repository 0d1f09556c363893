"""Webhooks: the outbox of clip events, their signature, and the delivery task.

A clip's transition to ``ready``, ``failed`` or ``canceled`` writes one
:class:`~clipqueue.models.WebhookDelivery` per receiver (``WEBHOOK_URL``, the
clip's ``callback_url``) in the same database transaction
(:func:`record_event`, called by :mod:`clipqueue.clips`). The database is
the record of what is owed; a Celery message (:func:`send`) only says
"try it now". Each attempt claims its delivery with one conditional
``UPDATE``, so duplicate messages never send it twice at once, and a message
that was lost (a worker killed, Redis restarted) is made up for by beat's
:func:`sweep_deliveries`, which sends deliveries that are overdue and not
claimed. Waits longer than :data:`MAX_COUNTDOWN_SECONDS` are left to the
sweep rather than held by a worker as an ETA message.

Signing: ``Clipqueue-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
"<t>.<raw body>")>`` with ``WEBHOOK_SECRET``, for ``WEBHOOK_URL`` (which
needs the secret) and for ``callback_url`` alike; without a secret,
``callback_url`` deliveries go unsigned. The body, and so the event id, is
fixed when the event is recorded: every retry sends the same bytes.

``callback_url`` is a request to a caller's address, so it goes through the
pinned transport under the source URL policy (:func:`clipqueue.media.http.open_checked`);
``WEBHOOK_URL`` is the operator's own and is sent as configured. Neither
follows redirects: a 3xx is a failed attempt.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import time
import uuid
from datetime import timedelta
from typing import Any

import redis
import requests
import sqlalchemy as sa
from flask import current_app
from kombu.exceptions import OperationalError as BrokerError

from clipqueue import metrics
from clipqueue.config import Settings
from clipqueue.exceptions import ClipqueueError
from clipqueue.keys import CONTROL_QUEUE
from clipqueue.models import (
    DELIVERY_DELIVERED,
    DELIVERY_FAILED,
    DELIVERY_PENDING,
    Clip,
    WebhookDelivery,
    as_utc,
    db,
    isoformat,
    utcnow,
)

log = logging.getLogger(__name__)

DELIVER_TASK = "clipqueue.deliver_webhook"
SWEEP_TASK = "clipqueue.sweep_webhooks"

EVENT_READY = "clip.ready"
EVENT_FAILED = "clip.failed"
EVENT_CANCELED = "clip.canceled"
EVENT_TYPES = (EVENT_READY, EVENT_FAILED, EVENT_CANCELED)

TARGET_WEBHOOK = "webhook"  # WEBHOOK_URL
TARGET_CALLBACK = "callback"  # the clip's callback_url

SIGNATURE_HEADER = "Clipqueue-Signature"
USER_AGENT = "clipqueue-webhooks/1"
RESPONSE_EXCERPT_CHARS = 200
ERROR_CHARS = 500
CONNECT_TIMEOUT_SECONDS = 5.0
# Longer waits are not held by a worker as an ETA message: the sweep sends them when due.
MAX_COUNTDOWN_SECONDS = 300.0
# How long an attempt holds its delivery beyond the request timeout (a killed worker's claim lapses then).
CLAIM_MARGIN_SECONDS = 30.0
# A message may run a little before its delivery is due (clocks of different hosts).
EARLY_SECONDS = 2.0
SWEEP_BATCH = 500


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Clipqueue-Signature`` value of ``body`` sent at ``timestamp`` (unix seconds)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def _settings() -> Settings:
    return current_app.config["CLIPQUEUE"]


def record_event(clip_id: str | uuid.UUID, event_type: str) -> list[uuid.UUID]:
    """Add the event's deliveries to the current transaction; the caller commits. Returns their ids.

    The event's ``data`` is the clip record as this transaction sees it (the
    transition just made). No receiver configured: nothing is written.
    """
    from clipqueue.schemas import Clip as ClipRecord

    settings = _settings()
    clip = db.session.get(Clip, clip_id if isinstance(clip_id, uuid.UUID) else uuid.UUID(str(clip_id)),
                          populate_existing=True)
    targets = []
    if settings.webhook_url:
        targets.append((TARGET_WEBHOOK, settings.webhook_url))
    if clip.callback_url:
        targets.append((TARGET_CALLBACK, clip.callback_url))
    if not targets:
        return []
    now = utcnow()
    event_id = uuid.uuid4()
    body = json.dumps({
        "id": str(event_id), "type": event_type, "created_at": isoformat(now),
        "data": ClipRecord.of(clip).model_dump(),
    }, separators=(",", ":"))
    ids = []
    for target, url in targets:
        delivery = WebhookDelivery(
            id=uuid.uuid4(), event_id=event_id, event_type=event_type, clip_id=clip.id, target=target,
            url=url, payload=body, status=DELIVERY_PENDING, attempts=0, next_attempt_at=now, created_at=now,
            expires_at=now + timedelta(hours=settings.webhook_retry_hours),
        )
        db.session.add(delivery)
        ids.append(delivery.id)
    return ids


def send(delivery_id: str | uuid.UUID, countdown: float | None = None) -> bool:
    """Ask a worker to attempt the delivery (after ``countdown`` s); False if Redis could not be reached.

    Nothing is lost when this fails: the sweep sends it once it is overdue.
    """
    nonce = uuid.uuid4().hex[:8]
    try:
        current_app.extensions["celery"].signature(
            DELIVER_TASK, args=(str(delivery_id),), queue=CONTROL_QUEUE,
        ).set(task_id=f"webhook-{delivery_id}-{nonce}").apply_async(retry=False, countdown=countdown)
    except (redis.RedisError, BrokerError, OSError) as exc:
        log.warning("webhook delivery %s not sent to a worker now (the sweep will): %s", delivery_id, exc)
        return False
    return True


def send_all(delivery_ids: list[uuid.UUID]) -> None:
    """:func:`send` each of the deliveries a transition recorded, once it is committed."""
    for delivery_id in delivery_ids:
        if not send(delivery_id):
            return


def _backoff(settings: Settings, attempts: int) -> float:
    """Seconds before attempt ``attempts + 1``: doubling from WEBHOOK_BACKOFF_SECONDS, capped, with jitter."""
    delay = min(settings.webhook_backoff_seconds * 2 ** max(0, attempts - 1),
                settings.webhook_backoff_max_seconds)
    return delay * random.uniform(0.9, 1.1)


def _claim(delivery_id: uuid.UUID, settings: Settings) -> bool:
    """Hold the delivery for one attempt if it is pending, due and held by no other attempt."""
    now = utcnow()
    claimed = db.session.execute(
        sa.update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == DELIVERY_PENDING,
               WebhookDelivery.next_attempt_at <= now + timedelta(seconds=EARLY_SECONDS),
               sa.or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now))
        .values(claimed_until=now + timedelta(seconds=settings.webhook_timeout_seconds
                                              + CONNECT_TIMEOUT_SECONDS + CLAIM_MARGIN_SECONDS))
    ).rowcount == 1
    db.session.commit()
    return claimed


def _post(delivery: WebhookDelivery, settings: Settings) -> tuple[int, str]:
    """POST the delivery's body once; return the status code and an excerpt of the answer."""
    from clipqueue.media.http import checked_session, open_checked
    from clipqueue.urlpolicy import SourcePolicy

    body = delivery.payload.encode()
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if settings.webhook_secret:
        headers[SIGNATURE_HEADER] = sign(settings.webhook_secret, int(time.time()), body)
    timeout = (CONNECT_TIMEOUT_SECONDS, settings.webhook_timeout_seconds)
    if delivery.target == TARGET_CALLBACK:
        session = checked_session(pool_maxsize=1)
        response = open_checked(session, delivery.url, SourcePolicy.from_settings(settings), method="POST",
                                headers=headers, data=body, timeout=timeout, follow_redirects=False)
    else:
        session = requests.Session()
        response = session.post(delivery.url, data=body, headers=headers, timeout=timeout,
                                allow_redirects=False, stream=True)
    try:
        # Only an excerpt of the answer is read and kept: a receiver cannot fill the database or memory.
        excerpt = next(response.iter_content(RESPONSE_EXCERPT_CHARS * 4), b"")
        return response.status_code, excerpt.decode(errors="replace")[:RESPONSE_EXCERPT_CHARS]
    finally:
        response.close()
        session.close()


# An attempt as clipqueue_webhook_deliveries_total counts it: one to be retried failed; a delivery given up expired.
_METRIC_OUTCOMES = {"delivered": "delivered", "retrying": "failed", "failed": "expired"}


def deliver(delivery_id: str) -> str:
    """Attempt one delivery; return what became of it: delivered, retrying, failed or skipped.

    Skipped: delivered already, not due yet, or another attempt holds it
    (a duplicate message). A failed attempt schedules the next one, until
    the delivery expires.
    """
    settings = _settings()
    key = uuid.UUID(delivery_id)
    if not _claim(key, settings):
        return "skipped"
    delivery = db.session.get(WebhookDelivery, key, populate_existing=True)
    attempt = delivery.attempts + 1
    prefix = (f"[clip_id={delivery.clip_id}] webhook {delivery.event_type} "
              f"({delivery.target}, event {delivery.event_id})")
    started = utcnow()
    status_code, excerpt, error = None, None, None
    try:
        status_code, excerpt = _post(delivery, settings)
        if not 200 <= status_code < 300:
            error = f"answered {status_code}"
            if 300 <= status_code < 400:
                error += " (redirects are not followed)"
    except (requests.RequestException, ClipqueueError, OSError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]
    now = utcnow()
    values: dict[str, Any] = {
        "attempts": WebhookDelivery.attempts + 1, "last_attempt_at": started, "claimed_until": None,
        "last_status_code": status_code, "last_response": excerpt, "last_error": error,
    }
    countdown = None
    if error is None:
        values.update(status=DELIVERY_DELIVERED, delivered_at=now)
        outcome = "delivered"
    elif now >= as_utc(delivery.expires_at):
        values.update(status=DELIVERY_FAILED)
        outcome = "failed"
    else:
        next_at = min(now + timedelta(seconds=_backoff(settings, attempt)),
                      as_utc(delivery.expires_at))
        values.update(next_attempt_at=next_at)
        countdown = (next_at - now).total_seconds()
        outcome = "retrying"
    db.session.execute(sa.update(WebhookDelivery).where(WebhookDelivery.id == key).values(**values))
    db.session.commit()
    metrics.increment(metrics.WEBHOOK_DELIVERIES, _METRIC_OUTCOMES[outcome])
    if outcome == "delivered":
        log.info("%s delivered (%s) after %d attempt(s)", prefix, status_code, attempt)
    elif outcome == "failed":
        log.error("%s gave up after %d attempt(s): %s", prefix, attempt, error)
    else:
        log.warning("%s attempt %d failed (%s); next in %.0f s", prefix, attempt, error, countdown)
        if countdown <= MAX_COUNTDOWN_SECONDS:
            send(key, countdown=countdown)
    return outcome


def sweep_grace_seconds(settings: Settings) -> float:
    """How overdue a delivery is before the sweep sends it: its own message had its chance."""
    return min(10.0, settings.webhook_sweep_seconds)


def overdue_ids(settings: Settings, limit: int = SWEEP_BATCH) -> list[uuid.UUID]:
    """Pending deliveries past due by the grace, held by no attempt: their message is lost or never was."""
    now = utcnow()
    return list(db.session.execute(
        sa.select(WebhookDelivery.id)
        .where(WebhookDelivery.status == DELIVERY_PENDING,
               WebhookDelivery.next_attempt_at <= now - timedelta(seconds=sweep_grace_seconds(settings)),
               sa.or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now))
        .order_by(WebhookDelivery.next_attempt_at).limit(limit)
    ).scalars())


def sweep_deliveries() -> int:
    """Send every overdue delivery again; return how many were sent."""
    sent = 0
    for delivery_id in overdue_ids(_settings()):
        if not send(delivery_id):
            break
        sent += 1
    if sent:
        log.info("webhook sweep sent %d overdue delivery(ies)", sent)
    return sent


def record(delivery: WebhookDelivery) -> dict[str, Any]:
    """A delivery as the API and the CLI show it (the body is not repeated: it is the event)."""
    return {
        "id": str(delivery.id),
        "event_id": str(delivery.event_id),
        "event_type": delivery.event_type,
        "clip_id": str(delivery.clip_id),
        "target": delivery.target,
        "url": delivery.url,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "next_attempt_at": isoformat(delivery.next_attempt_at) if delivery.status == DELIVERY_PENDING
        else None,
        "expires_at": isoformat(delivery.expires_at),
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "last_response": delivery.last_response,
        "created_at": isoformat(delivery.created_at),
        "last_attempt_at": isoformat(delivery.last_attempt_at),
        "delivered_at": isoformat(delivery.delivered_at),
    }


def list_deliveries(statuses: tuple[str, ...] = (DELIVERY_PENDING, DELIVERY_FAILED),
                    limit: int = 100) -> list[dict[str, Any]]:
    """Deliveries in ``statuses``, oldest first (by default the undelivered ones)."""
    rows = db.session.execute(
        sa.select(WebhookDelivery).where(WebhookDelivery.status.in_(statuses))
        .order_by(WebhookDelivery.created_at, WebhookDelivery.id).limit(limit)
    ).scalars()
    return [record(row) for row in rows]


def get(delivery_id: str) -> WebhookDelivery | None:
    try:
        key = uuid.UUID(delivery_id)
    except ValueError:
        return None
    return db.session.get(WebhookDelivery, key, populate_existing=True)


def retry(delivery_id: str) -> bool:
    """Try an undelivered delivery again now, with a fresh WEBHOOK_RETRY_HOURS; False if it was delivered."""
    delivery = get(delivery_id)
    if delivery is None or delivery.status == DELIVERY_DELIVERED:
        return False
    now = utcnow()
    changed = db.session.execute(
        sa.update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery.id, WebhookDelivery.status != DELIVERY_DELIVERED)
        .values(status=DELIVERY_PENDING, next_attempt_at=now, claimed_until=None,
                expires_at=now + timedelta(hours=_settings().webhook_retry_hours))
    ).rowcount == 1
    db.session.commit()
    if changed:
        log.info("[clip_id=%s] webhook delivery %s retried by an operator", delivery.clip_id, delivery.id)
        send(delivery.id)
    return changed
