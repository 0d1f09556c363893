"""Periodic repair, run by beat: no job waits for a human, and none is failed while it waits in a queue.

A job is judged by whether it is really lost, never by the clip's age:

- running, but nobody holds its lease and its metadata has not moved for a
  lease TTL: its worker died. It is queued again, at most
  ``MAX_REDELIVERIES`` times, then dead-lettered;
- its metadata vanished from Redis (Redis restarted without persistence):
  queued again;
- queued or retrying for longer than ``PROCESSING_DEADLINE_SECONDS`` since
  its latest enqueue, and its message is not in ``clip_extraction_jobs``
  (lost with Redis, or held by a worker that died before starting it):
  queued again. A message that waits in the queue is a backlog, not a loss;
- its output stored but the clip not finalized for a lease TTL (the
  finalizing task was lost or failed): finalizing is sent again.

It also rebuilds the Redis mirror of the dead-letter records when it differs
from the database. Clips whose job never reached Redis are the outbox sweep's
(``queue.sweep_outbox``).
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timedelta

from flask import current_app

from clipqueue import clips, deadletter
from clipqueue.jobs import JOB_QUEUED, JOB_RETRYING, JOB_RUNNING, decode_record, get_redis, job_store, now_iso
from clipqueue.keys import job_key, lease_key
from clipqueue.models import STATUS_PROCESSING, Clip, as_utc, utcnow
from clipqueue.queue import requeue_job, send_finalize, waiting_clip_ids

log = logging.getLogger(__name__)

BATCH = 1000


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def run_janitor() -> Counter:
    """Repair what needs it; return a tally of what was done."""
    settings = current_app.config["CLIPQUEUE"]
    now = utcnow()
    lease_ttl = timedelta(seconds=settings.lease_ttl_seconds)
    deadline = timedelta(seconds=settings.processing_deadline_seconds)
    candidates = (
        Clip.query.filter(Clip.status == STATUS_PROCESSING, Clip.enqueued_at.isnot(None))
        .order_by(Clip.enqueued_at)
        .limit(BATCH)
        .all()
    )
    pipe = get_redis().pipeline(transaction=False)
    for clip in candidates:
        pipe.hgetall(job_key(str(clip.id)))
        pipe.exists(lease_key(str(clip.id)))
    replies = pipe.execute() if candidates else []

    tally: Counter = Counter()
    waiting: set[str] | None = None  # read from Redis only if some job has waited past the deadline
    for index, clip in enumerate(candidates):
        raw_job, leased = replies[2 * index], replies[2 * index + 1]
        if leased:
            continue
        clip_id = str(clip.id)
        job = decode_record(raw_job) if raw_job else None
        enqueued = as_utc(clip.enqueued_at)
        moved = _parse_time((job or {}).get("updated_at")) or enqueued
        if clip.output is not None:
            if now - max(as_utc(clip.updated_at), moved) > lease_ttl:
                send_finalize(clip_id)
                # Moving the metadata on spaces the next resend a lease TTL out, not every round.
                job_store().update(clip_id, stage="finalizing", requeued_at=now_iso(),
                                   requeue_reason="finalizing lost; sent again")
                tally["finalize_sent_again"] += 1
        elif job is None:
            if now - enqueued > lease_ttl:
                requeue_job(clip, "job metadata lost from Redis")
                tally["requeued_lost_metadata"] += 1
        elif job.get("status") == JOB_RUNNING:
            if now - moved > lease_ttl:
                _worker_lost(clip, job, settings.max_redeliveries, tally)
        elif job.get("status") in (JOB_QUEUED, JOB_RETRYING) and now - max(enqueued, moved) > deadline:
            if waiting is None:
                waiting = waiting_clip_ids()
            if clip_id not in waiting:
                requeue_job(clip, f"job message lost (not in the queue after {deadline.total_seconds():g} s)")
                tally["requeued_lost_message"] += 1
    if deadletter.rebuild_mirror():
        tally["dead_letter_mirror_rebuilt"] += 1
    if tally:
        log.info("janitor: %s", dict(tally))
    return tally


def _worker_lost(clip: Clip, job: dict, max_redeliveries: int, tally: Counter) -> None:
    """A running job's worker died: queue it again, or give up after ``max_redeliveries``."""
    clip_id = str(clip.id)
    redeliveries = clips.count_redelivery(clip_id)
    if redeliveries > max_redeliveries:
        clips.mark_failed(clip_id, f"worker lost {redeliveries - 1} times; giving up", code="worker_lost",
                          attempts=job.get("attempts") or 0, traceback="")
        tally["failed_worker_lost"] += 1
        return
    clip.redeliveries = redeliveries
    requeue_job(clip, "worker lost (lease expired)")
    tally["requeued_worker_lost"] += 1
