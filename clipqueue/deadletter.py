"""The dead-letter queue: jobs that failed for good, for an operator to inspect and replay.

The database keeps the records (``models.DeadLetter``, written by
:func:`clipqueue.clips.mark_failed` with the clip's failure). The Redis list
``clip_extraction_jobs_failed`` mirrors them as JSON for tools that read
Redis; :func:`rebuild_mirror` (run by the janitor) makes it whole again when
Redis lost it.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import redis
import sqlalchemy as sa

from clipqueue.jobs import get_redis, job_fields
from clipqueue.keys import DEAD_LETTER_QUEUE
from clipqueue.models import Clip, DeadLetter, db, isoformat
from clipqueue.queue import dead_letter_count

log = logging.getLogger(__name__)


def record(letter: DeadLetter, clip: Clip | None = None) -> dict[str, Any]:
    """A dead letter as the API, the CLI and the Redis mirror show it."""
    clip = clip or db.session.get(Clip, letter.clip_id)
    return {
        "clip_id": str(letter.clip_id),
        "payload": job_fields(clip),
        "error": letter.error,
        "failure_code": clip.failure_code,
        "traceback": letter.traceback,
        "attempts": letter.attempts,
        "failed_at": isoformat(letter.failed_at),
    }


def _query():
    return (sa.select(DeadLetter, Clip).join(Clip, Clip.id == DeadLetter.clip_id)
            .order_by(DeadLetter.failed_at, DeadLetter.clip_id))


def list_entries(limit: int | None = None) -> list[dict[str, Any]]:
    """The records, oldest first."""
    query = _query() if limit is None else _query().limit(limit)
    return [record(letter, clip) for letter, clip in db.session.execute(query).all()]


def get_entry(clip_id: str) -> dict[str, Any] | None:
    row = db.session.execute(_query().where(DeadLetter.clip_id == uuid.UUID(clip_id))).first()
    return None if row is None else record(*row)


def replay(clip_id: str) -> bool:
    """Queue a dead-lettered clip again; False if it was not (or no longer) dead-lettered."""
    from clipqueue.clips import replay as replay_clip

    return replay_clip(clip_id)


def purge() -> int:
    """Drop every record (their clips stay failed); return how many there were."""
    purged = db.session.execute(sa.delete(DeadLetter)).rowcount
    db.session.commit()
    try:
        get_redis().delete(DEAD_LETTER_QUEUE)
    except redis.RedisError as exc:
        log.warning("dead-letter list not cleared (Redis unavailable; the janitor rebuilds it): %s", exc)
    return int(purged)


# --- the Redis mirror ------------------------------------------------------

def _mirror_text(entry: dict[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True)


def mirror_push(letter: DeadLetter) -> None:
    """Add a new record to the Redis list (best effort: the janitor rebuilds what is missing)."""
    try:
        mirror_remove(str(letter.clip_id))
        get_redis().rpush(DEAD_LETTER_QUEUE, _mirror_text(record(letter)))
    except redis.RedisError as exc:
        log.warning("dead letter %s not mirrored in Redis (the janitor rebuilds it): %s", letter.clip_id, exc)


def mirror_remove(clip_id: str) -> None:
    """Remove a clip's record from the Redis list."""
    client = get_redis()
    try:
        for raw in client.lrange(DEAD_LETTER_QUEUE, 0, -1):
            if json.loads(raw).get("clip_id") == clip_id:
                client.lrem(DEAD_LETTER_QUEUE, 0, raw)
    except redis.RedisError as exc:
        log.warning("dead letter %s not removed from Redis (the janitor rebuilds it): %s", clip_id, exc)


def rebuild_mirror() -> bool:
    """Make the Redis list match the database when their counts differ; True if it was rebuilt."""
    client = get_redis()
    if client.llen(DEAD_LETTER_QUEUE) == dead_letter_count():
        return False
    entries = [_mirror_text(entry) for entry in list_entries()]
    pipe = client.pipeline(transaction=True)
    pipe.delete(DEAD_LETTER_QUEUE)
    if entries:
        pipe.rpush(DEAD_LETTER_QUEUE, *entries)
    pipe.execute()
    log.warning("dead-letter list in Redis rebuilt from the database (%d job(s))", len(entries))
    return True
