"""Periodic repair, run by beat: no job waits for a human.

- a job whose worker died (lease expired, status still ``running``) is queued
  again, at most ``MAX_REDELIVERIES`` times, then dead-lettered;
- a job whose metadata vanished from Redis (Redis restarted without
  persistence) is queued again;
- a clip still ``processing`` past ``PROCESSING_DEADLINE_SECONDS`` with no
  live job is failed with that reason.

Clips whose job never reached Redis are the outbox sweep's (``queue.sweep_outbox``).
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timedelta

from flask import current_app

from clipqueue.deadletter import fail_job
from clipqueue.jobs import JOB_RUNNING, decode_record, get_redis
from clipqueue.keys import job_key, lease_key
from clipqueue.models import STATUS_PROCESSING, Clip, as_utc, utcnow
from clipqueue.queue import requeue_job

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
    clips = (
        Clip.query.filter(Clip.status == STATUS_PROCESSING, Clip.enqueued_at.isnot(None))
        .order_by(Clip.created_at)
        .limit(BATCH)
        .all()
    )
    pipe = get_redis().pipeline(transaction=False)
    for clip in clips:
        pipe.hgetall(job_key(str(clip.id)))
        pipe.exists(lease_key(str(clip.id)))
    replies = pipe.execute() if clips else []

    tally: Counter = Counter()
    for index, clip in enumerate(clips):
        raw_job, leased = replies[2 * index], replies[2 * index + 1]
        clip_id = str(clip.id)
        if leased:
            continue
        job = decode_record(raw_job) if raw_job else None
        if now - as_utc(clip.created_at) > deadline:
            fail_job(clip_id, f"no worker finished the job within {settings.processing_deadline_seconds:g} s",
                     "", (job or {}).get("attempts") or 0)
            tally["failed_past_deadline"] += 1
        elif job is None:
            if now - as_utc(clip.enqueued_at) > lease_ttl:
                requeue_job(clip, "job metadata lost from Redis", 1)
                tally["requeued_lost_metadata"] += 1
        elif job.get("status") == JOB_RUNNING and job.get("stage") != "finalizing":
            updated = _parse_time(job.get("updated_at")) or as_utc(clip.enqueued_at)
            if now - updated <= lease_ttl:
                continue
            redeliveries = (job.get("redeliveries") or 0) + 1
            if redeliveries > settings.max_redeliveries:
                fail_job(clip_id, f"worker lost {redeliveries - 1} times; giving up",
                         "", job.get("attempts") or 0)
                tally["failed_worker_lost"] += 1
            else:
                requeue_job(clip, "worker lost (lease expired)", redeliveries)
                tally["requeued_worker_lost"] += 1
    if tally:
        log.info("janitor: %s", dict(tally))
    return tally
