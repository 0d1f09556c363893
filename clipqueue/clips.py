"""A clip's life: ``processing`` → ``ready``, ``failed`` or ``canceled``; a replay takes ``failed`` back.

This module is the only writer of a clip's status. Each transition is one
conditional ``UPDATE`` on the clip's row, so of two writers racing (a late
failure and a success, a cancel and a success, two replays) exactly one wins;
the winner then writes what must follow the transition: the dead-letter
record and the event's webhook deliveries (in the same transaction), the job
metadata in Redis, the dead-letter list that mirrors the records, the cancel
flag a running job looks for, and the messages that send the deliveries.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import redis
import sqlalchemy as sa
from flask import current_app

from clipqueue import deadletter, metrics, webhooks
from clipqueue.jobs import JOB_CANCELED, JOB_COMPLETED, JOB_FAILED, get_redis, job_logger, job_store, now_iso
from clipqueue.keys import cancel_key
from clipqueue.models import (
    STATUS_CANCELED,
    STATUS_FAILED,
    STATUS_PROCESSING,
    STATUS_READY,
    Clip,
    DeadLetter,
    as_utc,
    db,
    utcnow,
)

log = logging.getLogger(__name__)

MAX_TRACEBACK_CHARS = 4000

# What a ready clip takes from the job's output, beside its status.
_OUTPUT_COLUMNS = (
    "video_url", "thumbnail_url", "quality_used", "duration", "actual_start_time", "actual_end_time",
    "width", "height", "size_bytes", "muted_ranges", "codec", "preview_url", "thumbnails", "portrait_url",
)


def _uuid(clip_id: str | uuid.UUID) -> uuid.UUID:
    return clip_id if isinstance(clip_id, uuid.UUID) else uuid.UUID(str(clip_id))


def get(clip_id: str) -> Clip | None:
    """The clip as the database has it now (not as this session last saw it)."""
    return db.session.get(Clip, _uuid(clip_id), populate_existing=True)


def _transition(clip_id: str, from_status: str, **values: Any) -> bool:
    """Move the clip out of ``from_status``; True only for the caller whose update did it."""
    now = utcnow()
    return db.session.execute(
        sa.update(Clip)
        .where(Clip.id == _uuid(clip_id), Clip.status == from_status)
        .values(updated_at=now, **values)
    ).rowcount == 1


def _increment(clip_id: str, column: sa.Column) -> int:
    db.session.execute(sa.update(Clip).where(Clip.id == _uuid(clip_id)).values({column: column + 1}))
    value = db.session.execute(sa.select(column).where(Clip.id == _uuid(clip_id))).scalar_one()
    db.session.commit()
    return int(value)


def count_delivery(clip_id: str) -> int:
    """Count one more start of the clip's job (retries and redeliveries alike); return the count."""
    return _increment(clip_id, Clip.deliveries)


def count_redelivery(clip_id: str) -> int:
    """Count one more re-queue after a lost worker; return the count."""
    return _increment(clip_id, Clip.redeliveries)


def record_output(clip_id: str, output: dict[str, Any]) -> bool:
    """Keep what the job stored, durably, before its lease is released.

    A finalize that is lost after this is sent again by the janitor; a
    redelivered job finds the output and does not redo the work.
    """
    changed = _transition(clip_id, STATUS_PROCESSING, output=output)
    db.session.commit()
    return changed


def mark_ready(clip_id: str, output: dict[str, Any]) -> bool:
    """``processing`` → ``ready`` with the stored files; then the job is ``completed``.

    Returns False when the clip was not processing; a clip already ``ready``
    gets its job metadata written again (a retried finalize), anything else is
    left alone.
    """
    jlog = job_logger(log, clip_id)
    db.session.rollback()
    now = utcnow()
    changed = _transition(
        clip_id, STATUS_PROCESSING, status=STATUS_READY, output=output, error=None, failure_code=None,
        processed_at=now, extraction_method=output.get("method"),
        **{name: output.get(name) for name in _OUTPUT_COLUMNS},
    )
    deliveries = webhooks.record_event(clip_id, webhooks.EVENT_READY) if changed else []
    db.session.commit()
    if not changed:
        status = db.session.execute(sa.select(Clip.status).where(Clip.id == _uuid(clip_id))).scalar_one()
        if status != STATUS_READY:
            jlog.info("clip is %s; not finalizing it", status)
            return False
        jlog.info("clip was already finalized; only the job metadata is written again")
    # Required: a retry of the finalizing task writes it again (the update above is then a no-op).
    job_store().update(
        clip_id, required=True, status=JOB_COMPLETED, stage="finalizing", progress=100, completed_at=now_iso(),
        error=None, video_url=output["video_url"], thumbnail_url=output.get("thumbnail_url"),
        quality_used=output.get("quality_used"), preview_url=output.get("preview_url"),
    )
    if changed:
        metrics.count_ready(clip_id, now)
        jlog.info("clip ready: %s", output["video_url"])
        webhooks.send_all(deliveries)
    return changed


def mark_failed(clip_id: str, error: str, *, code: str, attempts: int, traceback: str | None = None) -> bool:
    """``processing`` → ``failed`` with a reason; then the job is ``failed``.

    With a ``traceback`` (a failure an operator can act on and replay) the job
    is also dead-lettered, in the same transaction. Without one (the clip's own
    input cannot be cut) the clip just fails, logged on one line. A clip that
    is no longer processing is left alone: a late failure never undoes a success.
    """
    jlog = job_logger(log, clip_id)
    db.session.rollback()
    changed = _transition(clip_id, STATUS_PROCESSING, status=STATUS_FAILED, error=error, failure_code=code,
                          processed_at=utcnow())
    if changed and traceback is not None:
        db.session.add(DeadLetter(clip_id=_uuid(clip_id), error=error,
                                  traceback=traceback[-MAX_TRACEBACK_CHARS:], attempts=attempts))
    deliveries = webhooks.record_event(clip_id, webhooks.EVENT_FAILED) if changed else []
    db.session.commit()
    if not changed:
        jlog.info("not failing the clip: it is no longer processing")
        return False
    metrics.count_job("failed" if traceback is None else "dead_lettered")
    job_store().update(clip_id, status=JOB_FAILED, error=error, completed_at=now_iso(), attempts=attempts)
    webhooks.send_all(deliveries)
    if traceback is None:
        jlog.warning("clip failed (%s): %s", code, error)
        return True
    deadletter.mirror_push(db.session.get(DeadLetter, _uuid(clip_id)))
    jlog.error("job failed for good after %d attempt(s), dead-lettered (%s): %s", attempts, code, error)
    return True


def mark_canceled(clip_id: str) -> bool:
    """``processing`` → ``canceled``; then the job is ``canceled`` and a running one stops.

    Returns False, changing nothing, for a clip that is not processing. The
    cancel flag in Redis is what a running job's heartbeat looks for (it then
    kills its FFmpeg children); whatever it would still do is refused by the
    database status: :func:`record_output` and :func:`mark_ready` need
    ``processing``.
    """
    jlog = job_logger(log, clip_id)
    db.session.rollback()
    changed = _transition(clip_id, STATUS_PROCESSING, status=STATUS_CANCELED, error=None, failure_code=None)
    deliveries = webhooks.record_event(clip_id, webhooks.EVENT_CANCELED) if changed else []
    db.session.commit()
    if not changed:
        return False
    settings = current_app.config["CLIPQUEUE"]
    try:
        get_redis().set(cancel_key(clip_id), "1", ex=settings.job_ttl_seconds)
    except redis.RedisError as exc:
        # The database refuses the job's output all the same; only the stop waits for its next step.
        jlog.warning("cancel flag not set (Redis unavailable): %s", exc)
    metrics.count_job("canceled")
    job_store().update(clip_id, status=JOB_CANCELED, completed_at=now_iso())
    jlog.info("clip canceled")
    webhooks.send_all(deliveries)
    return True


def replay(clip_id: str) -> bool:
    """``failed`` → ``processing`` for a dead-lettered clip, and queue its job again.

    Removing the dead-letter record is the lock: of two replays of one clip,
    one queues it and the other returns False. The replayed job starts with a
    fresh budget of retries and redeliveries.
    """
    from clipqueue.queue import enqueue_job

    db.session.rollback()
    removed = db.session.execute(
        sa.delete(DeadLetter).where(DeadLetter.clip_id == _uuid(clip_id))
    ).rowcount == 1
    if not removed:
        db.session.rollback()
        return False
    _transition(clip_id, STATUS_FAILED, status=STATUS_PROCESSING, error=None, failure_code=None,
                enqueued_at=None, processed_at=None, output=None, deliveries=0, redeliveries=0)
    db.session.commit()
    deadletter.mirror_remove(str(_uuid(clip_id)))
    clip = get(clip_id)
    if clip.status != STATUS_PROCESSING:
        return True
    job_logger(log, clip_id).info("replaying dead-lettered job")
    enqueue_job(clip)
    return True


# --- reading clips in bulk ------------------------------------------------------

def by_ids(clip_ids: list[str], status: str | None = None) -> dict[str, Clip]:
    """The clips among ``clip_ids`` (in any status, or in ``status``), by id."""
    query = sa.select(Clip).where(Clip.id.in_([_uuid(clip_id) for clip_id in clip_ids]))
    if status is not None:
        query = query.where(Clip.status == status)
    return {str(clip.id): clip for clip in db.session.scalars(query)}


def _cursor(clip: Clip) -> str:
    created = as_utc(clip.created_at)
    micros = (created - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}_{clip.id.hex}"


def _position(cursor: str) -> tuple[datetime, uuid.UUID]:
    micros, clip_id = cursor.split("_")
    return _EPOCH + timedelta(microseconds=int(micros)), uuid.UUID(hex=clip_id)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def page(status: str | None, limit: int, cursor: str | None) -> tuple[list[Clip], str | None]:
    """Up to ``limit`` clips, newest first (``created_at``, then id), after ``cursor``; and the next cursor.

    A keyset page: each reads the indexes ``ix_clips_created_at_id`` or
    ``ix_clips_status_created_at_id`` from where the last one stopped, so a
    deep page costs what the first does, and clips created meanwhile do not
    shift the pages.
    """
    query = sa.select(Clip)
    if status is not None:
        query = query.where(Clip.status == status)
    if cursor is not None:
        created, clip_id = _position(cursor)
        query = query.where(sa.or_(Clip.created_at < created,
                                   sa.and_(Clip.created_at == created, Clip.id < clip_id)))
    rows = list(db.session.scalars(query.order_by(Clip.created_at.desc(), Clip.id.desc()).limit(limit + 1)))
    if len(rows) <= limit:
        return rows, None
    return rows[:limit], _cursor(rows[limit - 1])
