"""Periodic repair, run by beat: no job waits for a human, and none is failed while it waits in a queue.

The database is the source of truth: every round pages through every
``processing`` clip (by keyset, ``PAGE`` at a time) and compares it with what
Redis holds. A job is judged by whether it is really lost, never by the
clip's age:

- running, but nobody holds its lease and it has not moved (metadata or
  heartbeat) for a lease TTL: its worker died. If its last heartbeat came at
  its hard time limit, the time limit killed it: the clip fails with that
  reason. Otherwise it is queued again, at most ``MAX_REDELIVERIES`` times,
  then dead-lettered;
- its metadata vanished from Redis (Redis flushed, or restarted without
  persistence) and nobody holds its lease: queued again;
- queued or retrying, and its message is in none of the places a message can
  be: ``clip_extraction_jobs`` (any priority), kombu's ``unacked`` hash held
  by a live worker (reserved, or waiting for a retry's countdown; see
  :mod:`clipqueue.heartbeat`) or a lease (it runs): queued again. A message
  that waits in the queue is a backlog, not a loss;
- its output stored but the clip not finalized for a lease TTL (the
  finalizing task was lost or failed): finalizing is sent again.

A lost job is queued again only when two rounds more than a lease's and a
worker's heartbeat interval apart both found it lost: a
message between a worker's BRPOP and its ``unacked`` entry, or a lease a
heartbeat is about to take again after a flush, is not a loss. The rounds'
suspects live in Redis (``clipqueue:janitor:suspects``); if Redis loses them,
the next two rounds find them again. A round re-queues at most
``MAX_REQUEUES`` jobs; after a storm's loss the next rounds take the rest.

Searching the queue costs a pass over it (inside Redis, ids only), so it is
done only when the count says a message may be missing: fewer messages wait
than queued jobs nobody holds. Duplicate messages can hide a loss from that
count until they are consumed, so the queue is searched anyway at least every
``PROCESSING_DEADLINE_SECONDS``.

It also rebuilds the Redis mirror of the dead-letter records when it differs
from the database. Clips whose job never reached Redis are the outbox sweep's
(``queue.sweep_outbox``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta

import sqlalchemy as sa
from flask import current_app

from clipqueue import clips, deadletter
from clipqueue.config import Settings
from clipqueue.heartbeat import live_workers
from clipqueue.jobs import JOB_QUEUED, JOB_RETRYING, JOB_RUNNING, decode_record, get_redis, job_store, now_iso
from clipqueue.keys import job_key, lease_key
from clipqueue.models import STATUS_PROCESSING, Clip, as_utc, db, utcnow
from clipqueue.queue import (
    pending_count, requeue_job, send_finalize, unacked_clip_ids, waiting_clip_ids,
)

log = logging.getLogger(__name__)

PAGE = 500
# Re-queues per round: after a storm's loss a round stays well inside the janitor's lock
# (a re-queue is a few Redis writes and a commit); the rest are re-queued by the next rounds.
MAX_REQUEUES = 500
SUSPECTS_KEY = "clipqueue:janitor:suspects"
LAST_QUEUE_SCAN_KEY = "clipqueue:janitor:last-queue-scan"

# Why a job is suspected lost, and the reason written when it is queued again.
LOST_METADATA = "job metadata lost from Redis"
LOST_MESSAGE = "job message lost (in no queue, held by no worker)"


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _processing_clips(until: datetime, page_size: int) -> Iterator[list[Clip]]:
    """Every processing clip queued up to ``until``, a page at a time, by keyset (enqueued_at, id).

    A clip queued again during the round moves past ``until`` and is not seen twice.
    """
    after: tuple[datetime, uuid.UUID] | None = None
    while True:
        query = Clip.query.filter(Clip.status == STATUS_PROCESSING, Clip.enqueued_at.isnot(None),
                                  Clip.enqueued_at <= until)
        if after is not None:
            query = query.filter(sa.tuple_(Clip.enqueued_at, Clip.id) > sa.tuple_(*after))
        page = query.order_by(Clip.enqueued_at, Clip.id).limit(page_size).all()
        if not page:
            return
        after = (page[-1].enqueued_at, page[-1].id)
        yield page
        db.session.expunge_all()
        if len(page) < page_size:
            return


def run_janitor(page_size: int = PAGE, max_requeues: int = MAX_REQUEUES) -> Counter:
    """Repair what needs it; return a tally of what was done."""
    settings: Settings = current_app.config["CLIPQUEUE"]
    now = utcnow()
    lease_ttl = timedelta(seconds=settings.lease_ttl_seconds)
    client = get_redis()
    tally: Counter = Counter()
    suspects: dict[str, str] = {}  # clip id -> why, found lost this round
    unheld: set[str] = set()  # queued or retrying jobs that no lease holds
    quiet: dict[str, str | None] = {}  # ... of which those that have not moved for a lease TTL: their holder

    for page in _processing_clips(now, page_size):
        pipe = client.pipeline(transaction=False)
        for clip in page:
            pipe.hgetall(job_key(str(clip.id)))
            pipe.exists(lease_key(str(clip.id)))
        replies = pipe.execute()
        for index, clip in enumerate(page):
            raw_job, leased = replies[2 * index], replies[2 * index + 1]
            if leased:
                continue
            clip_id = str(clip.id)
            job = decode_record(raw_job) if raw_job else {}
            enqueued = as_utc(clip.enqueued_at)
            stamps = [_parse_time(job.get(name)) for name in ("updated_at", "heartbeat_at")]
            moved = max((stamp for stamp in stamps if stamp), default=enqueued)
            status = job.get("status")
            if clip.output is not None:
                if now - max(as_utc(clip.updated_at), moved) > lease_ttl:
                    send_finalize(clip_id)
                    # Moving the metadata on spaces the next resend a lease TTL out, not every round.
                    job_store().update(clip_id, stage="finalizing", requeued_at=now_iso(),
                                       requeue_reason="finalizing lost; sent again")
                    tally["finalize_sent_again"] += 1
            elif not status:
                # Gone, or re-created by a late write without its status: Redis lost it.
                suspects[clip_id] = LOST_METADATA
            elif status == JOB_RUNNING:
                if now - moved > lease_ttl:
                    _worker_lost(clip, job, settings, tally)
            elif status in (JOB_QUEUED, JOB_RETRYING):
                unheld.add(clip_id)
                if now - moved > lease_ttl:
                    quiet[clip_id] = job.get("held_by")

    suspects.update(dict.fromkeys(_lost_messages(settings, unheld, quiet), LOST_MESSAGE))
    _requeue_confirmed(settings, suspects, max_requeues, tally)
    if deadletter.rebuild_mirror():
        tally["dead_letter_mirror_rebuilt"] += 1
    if tally:
        log.info("janitor: %s", dict(tally))
    return tally


def _lost_messages(settings: Settings, unheld: set[str], quiet: dict[str, str | None]) -> set[str]:
    """Of the ``quiet`` queued jobs, those whose message is nowhere: not waiting, not held by a live worker.

    ``quiet`` maps each to the worker that last received its message, if known.
    """
    if not quiet:
        return set()
    client = get_redis()
    held = unacked_clip_ids()
    holders = {quiet[clip_id] for clip_id in held & quiet.keys()} - {None}
    if holders:
        alive = live_workers(client, holders)
        # A message in ``unacked`` stays there after its worker died, until the visibility timeout.
        held = {clip_id for clip_id in held if quiet.get(clip_id) is None or quiet[clip_id] in alive}
    quiet = quiet.keys() - held
    if not quiet:
        return set()
    expected = len(unheld - held)
    last_scan = float(client.get(LAST_QUEUE_SCAN_KEY) or 0)
    if pending_count() >= expected and time.time() - last_scan < settings.processing_deadline_seconds:
        return set()  # as many messages wait as jobs: nothing is missing, or a duplicate hides it for now
    client.set(LAST_QUEUE_SCAN_KEY, time.time())
    return quiet - waiting_clip_ids()


def _requeue_confirmed(settings: Settings, suspects: dict[str, str], max_requeues: int,
                       tally: Counter) -> None:
    """Queue again (at most ``max_requeues``) the suspects an earlier round found lost too; keep the rest."""
    client = get_redis()
    now = time.time()
    # Longer than a lease's or a worker's heartbeat interval: after a flush, a holder that lives has
    # taken its lease again, and a worker that lives has said so again.
    confirm = max(settings.lease_ttl_seconds / 3, settings.worker_heartbeat_seconds) + 0.5
    earlier = {key.decode(): float(value) for key, value in client.hgetall(SUSPECTS_KEY).items()}
    pipe = client.pipeline(transaction=True)
    pipe.delete(SUSPECTS_KEY)
    if suspects:
        pipe.hset(SUSPECTS_KEY, mapping={clip_id: earlier.get(clip_id, now) for clip_id in suspects})
        pipe.expire(SUSPECTS_KEY, int(max(3600, 10 * settings.janitor_interval_seconds)))
    pipe.execute()
    requeued = 0
    for clip_id, why in suspects.items():
        if requeued >= max_requeues:
            break
        if now - earlier.get(clip_id, now) < confirm:
            continue
        clip = clips.get(clip_id)
        # Looked at again: the clip may have finished, or its job been queued again, since the page was read.
        if clip is None or clip.status != STATUS_PROCESSING or clip.output is not None:
            continue
        if client.exists(lease_key(clip_id)):
            continue
        requeue_job(clip, why)
        requeued += 1
        client.hdel(SUSPECTS_KEY, clip_id)
        tally["requeued_lost_metadata" if why == LOST_METADATA else "requeued_lost_message"] += 1


def _hit_time_limit(job: dict, settings: Settings) -> bool:
    """Whether the job's last heartbeat came when its hard time limit would kill it.

    Beats come every third of a lease TTL, so a job killed at its limit beat
    last at most that long (and a second of slack) before it.
    """
    started, last = _parse_time(job.get("started_at")), _parse_time(job.get("heartbeat_at"))
    if started is None or last is None:
        return False
    ran = (last - started).total_seconds()
    return ran >= settings.job_hard_time_limit_seconds - settings.lease_ttl_seconds / 3 - 1


def _worker_lost(clip: Clip, job: dict, settings: Settings, tally: Counter) -> None:
    """A running job's worker died: fail it if its time limit killed it; else queue it again, or give up."""
    clip_id = str(clip.id)
    attempts = job.get("attempts") or 0
    if _hit_time_limit(job, settings):
        limit = settings.job_hard_time_limit_seconds
        clips.mark_failed(clip_id, f"job exceeded its time limit (killed at the hard limit, {limit} s)",
                          code="time_limit", attempts=attempts, traceback="")
        tally["failed_time_limit"] += 1
        return
    redeliveries = clips.count_redelivery(clip_id)
    if redeliveries > settings.max_redeliveries:
        clips.mark_failed(clip_id, f"worker lost {redeliveries - 1} times; giving up", code="worker_lost",
                          attempts=attempts, traceback="")
        tally["failed_worker_lost"] += 1
        return
    clip.redeliveries = redeliveries
    requeue_job(clip, "worker lost (lease expired)")
    tally["requeued_worker_lost"] += 1
