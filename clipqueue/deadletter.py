"""The dead-letter queue ``clip_extraction_jobs_failed``: jobs that failed for good.

Each entry is a JSON record (clip id, job payload, error, short traceback,
attempts, times). Replaying removes the record and queues the same clip again;
the record's removal is the lock, so replaying twice queues it once.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import sqlalchemy as sa

from clipqueue.jobs import JOB_FAILED, get_redis, job_logger, job_store, now_iso
from clipqueue.keys import DEAD_LETTER_QUEUE
from clipqueue.models import STATUS_FAILED, STATUS_PROCESSING, Clip, db, utcnow
from clipqueue.queue import enqueue_job, job_fields

log = logging.getLogger(__name__)

MAX_TRACEBACK_CHARS = 4000


def fail_job(clip_id: str, error: str, traceback: str, attempts: int) -> None:
    """End a job for good: clip ``failed``, job ``failed``, record in the dead-letter queue.

    A clip that is already ``ready`` is left alone: a late failure never undoes a success.
    """
    jlog = job_logger(log, clip_id)
    db.session.rollback()
    now = utcnow()
    changed = db.session.execute(
        sa.update(Clip)
        .where(Clip.id == uuid.UUID(clip_id), Clip.status == STATUS_PROCESSING)
        .values(status=STATUS_FAILED, error=error, processed_at=now, updated_at=now)
    ).rowcount
    db.session.commit()
    if not changed:
        jlog.info("not failing the clip: it is no longer processing")
        return
    clip = db.session.get(Clip, uuid.UUID(clip_id))
    job_store().update(clip_id, status=JOB_FAILED, error=error, completed_at=now_iso(), attempts=attempts)
    push(clip_id, job_fields(clip), error, traceback, attempts)
    jlog.error("job failed for good after %d attempt(s): %s", attempts, error)


def push(clip_id: str, payload: dict[str, Any], error: str, traceback: str, attempts: int) -> None:
    """Park a job that failed for good, replacing an older record of the same clip."""
    remove(clip_id)
    record = {
        "clip_id": clip_id,
        "payload": payload,
        "error": error,
        "traceback": traceback[-MAX_TRACEBACK_CHARS:],
        "attempts": attempts,
        "failed_at": now_iso(),
    }
    get_redis().rpush(DEAD_LETTER_QUEUE, json.dumps(record, sort_keys=True))


def _raw_entries() -> list[bytes]:
    return get_redis().lrange(DEAD_LETTER_QUEUE, 0, -1)


def list_entries(limit: int | None = None) -> list[dict[str, Any]]:
    """The records, oldest first."""
    end = -1 if limit is None else limit - 1
    return [json.loads(raw) for raw in get_redis().lrange(DEAD_LETTER_QUEUE, 0, end)]


def get_entry(clip_id: str) -> dict[str, Any] | None:
    for raw in _raw_entries():
        record = json.loads(raw)
        if record.get("clip_id") == clip_id:
            return record
    return None


def remove(clip_id: str) -> bool:
    """Remove the clip's record; True only for the caller that removed it."""
    removed = 0
    for raw in _raw_entries():
        if json.loads(raw).get("clip_id") == clip_id:
            removed += get_redis().lrem(DEAD_LETTER_QUEUE, 1, raw)
    return removed > 0


def replay(clip_id: str) -> bool:
    """Queue a dead-lettered clip again; False if it was not (or no longer) dead-lettered."""
    if not remove(clip_id):
        return False
    clip = db.session.get(Clip, uuid.UUID(clip_id))
    if clip is None:
        return False
    if clip.status == STATUS_FAILED:
        clip.status = STATUS_PROCESSING
        clip.error = None
        clip.enqueued_at = None
        clip.processed_at = None
        db.session.commit()
    job_logger(log, clip_id).info("replaying dead-lettered job")
    enqueue_job(clip)
    return True


def purge() -> int:
    """Drop every record; return how many there were."""
    client = get_redis()
    pipe = client.pipeline(transaction=True)
    pipe.llen(DEAD_LETTER_QUEUE)
    pipe.delete(DEAD_LETTER_QUEUE)
    count, _ = pipe.execute()
    return int(count)
