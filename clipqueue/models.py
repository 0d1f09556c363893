"""The clip record, stored with Flask-SQLAlchemy (SQLite by default, PostgreSQL via ``DATABASE_URL``)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import sqlalchemy as sa
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)

STATUS_PROCESSING = "processing"
STATUS_READY = "ready"
STATUS_FAILED = "failed"
STATUS_CANCELED = "canceled"
CLIP_STATUSES = (STATUS_PROCESSING, STATUS_READY, STATUS_FAILED, STATUS_CANCELED)

PRIORITY_HIGH = "high"
PRIORITY_NORMAL = "normal"
PRIORITY_LOW = "low"
PRIORITIES = (PRIORITY_HIGH, PRIORITY_NORMAL, PRIORITY_LOW)

# Outputs a clip may ask for beside the clip, its thumbnails and its preview.
OUTPUT_PORTRAIT = "portrait"
OUTPUTS = (OUTPUT_PORTRAIT,)
# How a portrait version fills 9:16: a centre crop, or the whole picture over a blurred copy of itself.
PORTRAIT_FILLS = ("crop", "blur")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; they are UTC here."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def isoformat(value: datetime | None) -> str | None:
    """ISO 8601 UTC with a ``Z``; SQLite hands back naive datetimes, which are UTC here."""
    if value is None:
        return None
    return as_utc(value).astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


class Clip(db.Model):
    """One requested clip and, once processed, where its files are."""

    __tablename__ = "clips"
    # GET /api/v1/clips pages newest first by (created_at, id), with or without a status.
    __table_args__ = (
        sa.Index("ix_clips_created_at_id", "created_at", "id"),
        sa.Index("ix_clips_status_created_at_id", "status", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    vod_url: Mapped[str] = mapped_column(sa.Text)
    start_time: Mapped[float] = mapped_column(sa.Float)
    end_time: Mapped[float] = mapped_column(sa.Float)
    quality: Mapped[str] = mapped_column(sa.String(16))
    quality_used: Mapped[str | None] = mapped_column(sa.String(32))
    mode: Mapped[str] = mapped_column(sa.String(16))
    title: Mapped[str | None] = mapped_column(sa.String(255))
    status: Mapped[str] = mapped_column(sa.String(16), index=True, default=STATUS_PROCESSING)
    video_url: Mapped[str | None] = mapped_column(sa.Text)
    thumbnail_url: Mapped[str | None] = mapped_column(sa.Text)
    duration: Mapped[float | None] = mapped_column(sa.Float)
    actual_start_time: Mapped[float | None] = mapped_column(sa.Float)
    actual_end_time: Mapped[float | None] = mapped_column(sa.Float)
    width: Mapped[int | None] = mapped_column(sa.Integer)
    height: Mapped[int | None] = mapped_column(sa.Integer)
    size_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    muted_ranges: Mapped[list | None] = mapped_column(sa.JSON)
    extraction_method: Mapped[str | None] = mapped_column(sa.String(32))
    codec: Mapped[str | None] = mapped_column(sa.String(16))  # the clip's video codec; None for audio only
    # Where this clip's events are POSTed, beside WEBHOOK_URL (clipqueue.webhooks).
    callback_url: Mapped[str | None] = mapped_column(sa.Text)
    # A queued high job starts before any queued normal one, low after both (clipqueue.queue).
    priority: Mapped[str] = mapped_column(sa.String(8), default=PRIORITY_NORMAL, server_default=PRIORITY_NORMAL)
    # Extra outputs asked for (OUTPUTS), and how the portrait version fills its frame.
    outputs: Mapped[list | None] = mapped_column(sa.JSON)
    portrait_fill: Mapped[str | None] = mapped_column(sa.String(8))
    preview_url: Mapped[str | None] = mapped_column(sa.Text)
    thumbnails: Mapped[dict | None] = mapped_column(sa.JSON)  # {"small": url, "medium": url, "large": url}
    portrait_url: Mapped[str | None] = mapped_column(sa.Text)
    error: Mapped[str | None] = mapped_column(sa.Text)
    # Why a failed clip failed, as a short code metrics count by (the exception's code: tasks.failure_code).
    failure_code: Mapped[str | None] = mapped_column(sa.String(32))
    # Starts of its job (retries and redeliveries alike) and re-queues after a lost worker:
    # the poison-job counters, kept here so that a Redis that restarts empty cannot reset them.
    deliveries: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    redeliveries: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    # What the job stored (URLs and figures), written before its lease is released, so
    # that finalizing can be sent again if it is lost (clipqueue.clips.record_output).
    output: Mapped[dict | None] = mapped_column(sa.JSON)
    # The client's Idempotency-Key: a retried POST finds its clip instead of making a second one.
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(255), unique=True)
    # Null until the job reached Redis: the outbox sweep queues such clips.
    enqueued_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), index=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )
    processed_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


class DeadLetter(db.Model):
    """A job that failed for good and that an operator may replay.

    The database keeps these records; the Redis list ``clip_extraction_jobs_failed``
    mirrors them and is rebuilt from here if Redis loses it.
    """

    __tablename__ = "dead_letters"

    clip_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("clips.id", ondelete="CASCADE"),
                                               primary_key=True)
    error: Mapped[str] = mapped_column(sa.Text)
    traceback: Mapped[str] = mapped_column(sa.Text, default="")
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    failed_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow, index=True)


DELIVERY_PENDING = "pending"
DELIVERY_DELIVERED = "delivered"
DELIVERY_FAILED = "failed"
DELIVERY_STATUSES = (DELIVERY_PENDING, DELIVERY_DELIVERED, DELIVERY_FAILED)


class WebhookDelivery(db.Model):
    """One event for one receiver: written with the clip's transition, sent until it is answered 2xx.

    The database is the record of what is owed: a delivery whose Celery
    message was lost (a worker killed, Redis restarted) is sent again by
    beat's sweep (:func:`clipqueue.webhooks.sweep_deliveries`).
    """

    __tablename__ = "webhook_deliveries"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    # The event's id, the same on every attempt and for every receiver of the event.
    event_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, index=True)
    event_type: Mapped[str] = mapped_column(sa.String(32))
    clip_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("clips.id", ondelete="CASCADE"),
                                               index=True)
    # "webhook" (WEBHOOK_URL, the operator's) or "callback" (the clip's callback_url, the URL policy applies).
    target: Mapped[str] = mapped_column(sa.String(16))
    url: Mapped[str] = mapped_column(sa.Text)
    # The exact body every attempt sends (the signature covers it).
    payload: Mapped[str] = mapped_column(sa.Text)
    status: Mapped[str] = mapped_column(sa.String(16), default=DELIVERY_PENDING, index=True)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow, index=True)
    # Attempts stop after this (WEBHOOK_RETRY_HOURS after the event, or after an operator's retry).
    expires_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    # An attempt in progress holds the delivery until then, so two messages never send it at once.
    claimed_until: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    last_status_code: Mapped[int | None] = mapped_column(sa.Integer)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    last_response: Mapped[str | None] = mapped_column(sa.String(200))  # the receiver's answer, an excerpt
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    last_attempt_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
