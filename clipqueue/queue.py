"""Putting clip jobs on the Celery queue, and reading how many wait there."""

from __future__ import annotations

import json
import logging
import re
import uuid
from datetime import timedelta

import redis
import sqlalchemy as sa
from celery import Celery
from flask import current_app
from kombu.exceptions import OperationalError as BrokerError

from clipqueue.broker import BROKER_PRIORITIES, PRIORITY_STEPS, job_step_list
from clipqueue.jobs import JOB_QUEUED, get_redis, job_fields, job_logger, job_store, now_iso
from clipqueue.keys import CONTROL_QUEUE, JOB_QUEUE
from clipqueue.models import PRIORITY_NORMAL, STATUS_PROCESSING, Clip, DeadLetter, db, utcnow

log = logging.getLogger(__name__)

PROCESS_TASK = "clipqueue.process_clip"
FINALIZE_TASK = "clipqueue.finalize_clip"
SWEEP_OUTBOX_TASK = "clipqueue.sweep_outbox"
JANITOR_TASK = "clipqueue.janitor"


def broker_priority(priority: str) -> int:
    """The kombu priority of a clip's ``high``, ``normal`` or ``low``."""
    return BROKER_PRIORITIES[priority]


def celery_app() -> Celery:
    return current_app.extensions["celery"]


def task_id(clip_id: str, step: str, nonce: str) -> str:
    """Task ids carry the clip id, so Celery's own log lines (and a scan of a queue) name the clip."""
    return f"clip-{clip_id}-{step}-{nonce}"


def send_job(clip_id: str, priority: str = PRIORITY_NORMAL) -> None:
    """Send the clip's Celery chain: ``process_clip`` on the job queue at ``priority``, then finalizing.

    The priority rides twice: as the message's broker priority, which orders
    the queue (see :data:`BROKER_PRIORITIES`), and in the task's kwargs, where
    Flower and ``celery inspect`` show it.
    """
    app = celery_app()
    nonce = uuid.uuid4().hex[:8]
    chain = app.signature(
        PROCESS_TASK, kwargs={"clip_id": clip_id, "priority": priority}, queue=JOB_QUEUE, immutable=True,
        priority=broker_priority(priority),
    ).set(task_id=task_id(clip_id, "extract", nonce)) | app.signature(
        FINALIZE_TASK, kwargs={"clip_id": clip_id}, queue=CONTROL_QUEUE
    ).set(task_id=task_id(clip_id, "finalize", nonce))
    chain.apply_async(retry=False)


def send_finalize(clip_id: str) -> None:
    """Send ``finalize_clip`` alone, for a job whose output is stored but whose finalizing was lost."""
    celery_app().signature(FINALIZE_TASK, args=(None,), kwargs={"clip_id": clip_id}, queue=CONTROL_QUEUE).set(
        task_id=task_id(clip_id, "finalize", uuid.uuid4().hex[:8])).apply_async(retry=False)


def enqueue_jobs(clips: list[Clip]) -> int:
    """Mirror each clip's job metadata in Redis and queue its Celery chain, in order; return how many.

    The clip rows must already be committed. When Redis cannot be reached it
    stops there without raising: the clips left keep ``enqueued_at`` empty and
    the outbox sweep queues them once Redis is back.
    """
    queued = []
    for clip in clips:
        clip_id = str(clip.id)
        try:
            job_store().create(clip_id, job_fields(clip))
            send_job(clip_id, clip.priority or PRIORITY_NORMAL)
        except (redis.RedisError, BrokerError, OSError) as exc:
            job_logger(log, clip_id).warning(
                "job not queued, Redis unavailable (the outbox sweep will queue it): %s", exc)
            break
        queued.append(clip)
    if queued:
        now = utcnow()
        for clip in queued:
            clip.enqueued_at = now
        db.session.commit()
        for clip in queued:
            job_logger(log, str(clip.id)).info("job queued on %s (%s)", JOB_QUEUE, clip.priority)
    return len(queued)


def enqueue_job(clip: Clip) -> bool:
    """:func:`enqueue_jobs` for one clip: False, without raising, when Redis cannot be reached."""
    return enqueue_jobs([clip]) == 1


def requeue_job(clip: Clip, reason: str) -> None:
    """Queue a job again whose message or worker was lost, keeping its metadata.

    The clip's ``enqueued_at`` becomes now: waiting is counted from the latest enqueue.
    """
    clip_id = str(clip.id)
    store = job_store()
    if store.get(clip_id) is None:
        store.create(clip_id, job_fields(clip))
    store.update(clip_id, required=True, status=JOB_QUEUED, stage=None, requeued_at=now_iso(),
                 requeue_reason=reason, redeliveries=clip.redeliveries, deliveries=clip.deliveries)
    send_job(clip_id, clip.priority or PRIORITY_NORMAL)
    clip.enqueued_at = utcnow()
    db.session.commit()
    job_logger(log, clip_id).warning("job re-queued (%s), redeliveries so far %d", reason, clip.redeliveries)


_EXTRACT_TASK_ID = re.compile(
    rb"^clip-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})-extract-")
_SCAN_CHUNK = 1000
# kombu's Redis transport keeps each delivered, unacknowledged message (prefetched,
# running, or waiting for its ETA/countdown) in this hash until it is acknowledged.
UNACKED_KEY = "unacked"

# Read a slice of a list inside Redis and return only the clip ids of the extract
# jobs in it (from each message's task id, ``headers.id`` in Celery's protocol 2):
# a scan of thousands of messages moves 36 bytes per job, not whole messages.
_LIST_SLICE = """
local messages = redis.call('lrange', KEYS[1], ARGV[1], ARGV[2])
local found = {}
for _, message in ipairs(messages) do
  local ok, decoded = pcall(cjson.decode, message)
  if ok and type(decoded) == 'table' and type(decoded.headers) == 'table'
      and type(decoded.headers.id) == 'string' then
    local id = string.match(decoded.headers.id, '^clip%-([%x%-]+)%-extract%-')
    if id then found[#found + 1] = id end
  end
end
return {#messages, found}
"""


def job_queue_keys() -> list[str]:
    """The Redis lists of ``clip_extraction_jobs``, in the order workers take from them."""
    return [job_step_list(step) for step in PRIORITY_STEPS]


def job_list(priority: str = PRIORITY_NORMAL) -> str:
    """The Redis list where a queued job of ``priority`` waits (kombu's list for its step)."""
    return job_step_list(broker_priority(priority))  # each priority is sent at a step of its own


def waiting_clip_ids() -> set[str]:
    """The clips whose job message waits in ``clip_extraction_jobs`` (one pass in slices, inside Redis)."""
    client = get_redis()
    script = client.register_script(_LIST_SLICE)
    found: set[str] = set()
    for key in job_queue_keys():
        start = 0
        while True:
            count, ids = script(keys=[key], args=[start, start + _SCAN_CHUNK - 1])
            found.update(i.decode() if isinstance(i, bytes) else i for i in ids)
            if count < _SCAN_CHUNK:
                break
            start += _SCAN_CHUNK
    return found


def unacked_clip_ids() -> set[str]:
    """The clips whose job message a worker holds, delivered but not acknowledged (kombu's ``unacked``).

    Its size is what workers hold: their prefetched and running jobs, and
    retries waiting for their countdown.
    """
    found: set[str] = set()
    for _tag, entry in get_redis().hscan_iter(UNACKED_KEY, count=500):
        try:
            message, _exchange, routing_key = json.loads(entry)
            task = message["headers"]["id"]
        except (ValueError, TypeError, KeyError):
            continue
        match = _EXTRACT_TASK_ID.match(task.encode()) if routing_key == JOB_QUEUE else None
        if match:
            found.add(match.group(1).decode())
    return found


def pending_count() -> int:
    """Jobs waiting in ``clip_extraction_jobs`` at every priority (the seed's GetPendingJobsCount; a few LLENs)."""
    pipe = get_redis().pipeline(transaction=False)
    for key in job_queue_keys():
        pipe.llen(key)
    return int(sum(pipe.execute()))


def dead_letter_count() -> int:
    """Jobs in the dead-letter queue (the database's records; Redis mirrors them)."""
    return db.session.execute(sa.select(sa.func.count()).select_from(DeadLetter)).scalar_one()


def unqueued_count() -> int:
    """Clips whose job has not reached Redis yet (created while it was down)."""
    return db.session.execute(
        sa.select(sa.func.count()).where(Clip.status == STATUS_PROCESSING, Clip.enqueued_at.is_(None))
    ).scalar_one()


def unqueued_clips(limit: int = 500) -> list[Clip]:
    """Clips created while Redis was unreachable, old enough that no request is still queuing them."""
    grace = current_app.config["CLIPQUEUE"].outbox_grace_seconds
    cutoff = utcnow() - timedelta(seconds=grace)
    return (
        Clip.query.filter(
            Clip.status == STATUS_PROCESSING,
            Clip.enqueued_at.is_(None),
            Clip.created_at < cutoff,
        )
        .order_by(Clip.created_at)
        .limit(limit)
        .all()
    )


def sweep_outbox() -> int:
    """Queue every clip whose job never reached Redis; return how many were queued."""
    queued = 0
    for clip in unqueued_clips():
        if enqueue_job(clip):
            queued += 1
        else:
            break
    return queued


def oldest_waiting_clip_ids() -> list[str]:
    """The clip whose job has waited longest in each list of ``clip_extraction_jobs`` (the right end)."""
    pipe = get_redis().pipeline(transaction=False)
    for key in job_queue_keys():
        pipe.lindex(key, -1)
    found = []
    for message in pipe.execute():
        try:
            task = json.loads(message)["headers"]["id"] if message else ""
        except (ValueError, TypeError, KeyError):
            continue
        match = _EXTRACT_TASK_ID.match(task.encode())
        if match:
            found.append(match.group(1).decode())
    return found
