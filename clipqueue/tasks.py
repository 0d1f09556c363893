"""The worker's tasks: extract and store a clip, then finalize its record.

Extraction, thumbnail and upload run in one task because they share local
files: workers on different hosts share no disk, so the upload must run where
the file was cut. Only URLs and probe figures travel to ``finalize_clip``,
which may run on any host.
"""

from __future__ import annotations

import logging
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypedDict

import redis
import sqlalchemy as sa
from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from flask import current_app

from clipqueue import deadletter
from clipqueue.celery_app import AppContextTask
from clipqueue.config import Settings
from clipqueue.exceptions import ClipqueueError, TransientError
from clipqueue.janitor import run_janitor
from clipqueue.jobs import (
    JOB_COMPLETED, JOB_RETRYING, JOB_RUNNING, get_redis, job_logger, job_store, now_iso, worker_name,
)
from clipqueue.lease import JobLease
from clipqueue.media.extract import ClipRequest, ExtractOptions, extract_clip
from clipqueue.media.thumbnail import make_thumbnail
from clipqueue.models import STATUS_PROCESSING, STATUS_READY, Clip, db, utcnow
from clipqueue.queue import FINALIZE_TASK, JANITOR_TASK, PROCESS_TASK, SWEEP_OUTBOX_TASK, sweep_outbox
from clipqueue.storage import object_key, storage_from_settings
from clipqueue.urlpolicy import SourcePolicy

log = logging.getLogger(__name__)

# autoretry_for reads its backoff when the task is declared, so the retry
# policy comes from the environment at import (it needs no app).
_RETRY = Settings.from_env()
RETRYABLE = (
    TransientError, sa.exc.OperationalError, sa.exc.InterfaceError,
    redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
)

# Share of the progress bar that fetching and cutting take up, and the smallest step written.
_EXTRACT_SHARE = 0.8
_PROGRESS_STEP = 10


class StoredClip(TypedDict):
    """What ``process_clip`` hands to ``finalize_clip``: no local paths."""

    video_url: str
    thumbnail_url: str | None
    quality_used: str
    duration: float
    actual_start_time: float
    actual_end_time: float
    width: int | None
    height: int | None
    size_bytes: int
    muted_ranges: list[list[float]]
    method: str


def describe_error(exc: BaseException) -> str:
    """A readable reason for the clip record and the dead-letter queue."""
    if isinstance(exc, SoftTimeLimitExceeded):
        return "job exceeded its time limit"
    if isinstance(exc, ClipqueueError):
        return str(exc)
    if isinstance(exc, sa.exc.OperationalError):
        return f"database unavailable: {exc.orig}"
    return f"internal error: {type(exc).__name__}: {exc}"


class ClipJobTask(AppContextTask):
    """Keeps job metadata, clip record and dead-letter queue in step with Celery's retries."""

    abstract = True

    def on_retry(self, exc, task_id, args, kwargs, einfo):
        clip_id = kwargs["clip_id"]
        job_logger(log, clip_id).warning("retrying after: %s", describe_error(exc))
        with self.flask_context():
            job_store().update(clip_id, status=JOB_RETRYING, error=describe_error(exc))

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        clip_id = kwargs["clip_id"]
        with self.flask_context():
            deadletter.fail_job(clip_id, describe_error(exc), str(einfo), self.request.retries + 1)


# Both steps of a job retry alike: transient errors, exponential backoff with full jitter.
JOB_TASK_OPTIONS = {
    "bind": True,
    "base": ClipJobTask,
    "autoretry_for": RETRYABLE,
    "max_retries": _RETRY.job_max_retries,
    "retry_backoff": _RETRY.job_retry_backoff_seconds,
    "retry_backoff_max": _RETRY.job_retry_backoff_max_seconds,
    "retry_jitter": True,
}


@shared_task(name=PROCESS_TASK, **JOB_TASK_OPTIONS)
def process_clip(self, clip_id: str) -> StoredClip | None:
    """Fetch the range, cut it, make the thumbnail and upload both.

    Returns None, doing nothing, for a clip that is no longer processing (a
    redelivered job of a finished clip) or whose job runs elsewhere right now
    (a duplicate delivery: the lease is held).
    """
    jlog = job_logger(log, clip_id)
    settings: Settings = current_app.config["CLIPQUEUE"]
    clip = db.session.get(Clip, uuid.UUID(clip_id))
    if clip is None:
        jlog.warning("no such clip; dropping the job")
        return None
    if clip.status != STATUS_PROCESSING:
        jlog.info("clip is already %s; nothing to do", clip.status)
        return None
    request = ClipRequest(
        source_url=clip.vod_url,
        start_time=clip.start_time,
        end_time=clip.end_time,
        quality=clip.quality,
        mode=clip.mode,
    )
    # Hold no database connection through minutes of media work.
    db.session.remove()

    store = job_store()
    worker = self.request.hostname or worker_name()
    lease = JobLease(get_redis(), clip_id, settings.lease_ttl_seconds, owner=worker)
    if not lease.acquire():
        # Another delivery holds the lease. If it lives, this copy finds the clip done
        # when it comes back; if it died (its pool process was killed), the lease will
        # have expired and this copy takes the job over without waiting for the janitor.
        jlog.info("job is running elsewhere (lease held); looking again in %g s", settings.lease_ttl_seconds)
        self.signature_from_request(countdown=settings.lease_ttl_seconds,
                                    retries=self.request.retries).apply_async()
        return None
    deliveries = store.count_delivery(clip_id)
    most = settings.job_max_retries + 1 + settings.max_redeliveries
    if deliveries > most:
        lease.release()
        deadletter.fail_job(clip_id, f"job started {deliveries - 1} times without finishing; giving up",
                            "", self.request.retries + 1)
        return None
    with lease:
        attempt = self.request.retries + 1
        store.update(
            clip_id, status=JOB_RUNNING, started_at=now_iso(), attempts=attempt, worker=worker,
            stage="fetching", progress=0, error=None,
        )
        jlog.info("attempt %d on %s: extracting %.3f-%.3f s (%s, %s)", attempt, worker,
                  request.start_time, request.end_time, request.quality, request.mode)
        stored = _produce(clip_id, request, settings, store)
        # Still under the lease: the janitor leaves finalizing jobs alone.
        store.update(clip_id, stage="finalizing", progress=95)
    return stored


def _produce(clip_id: str, request: ClipRequest, settings: Settings, store) -> StoredClip:
    """Extract, thumbnail and upload in one scratch folder that never outlives the job."""
    jlog = job_logger(log, clip_id)

    written = {"stage": None, "progress": -_PROGRESS_STEP}

    def on_stage(stage: str, progress: int) -> None:
        # A write per fetched part would be Redis round trips the fetch threads wait on: steps of 10.
        progress = int(progress * _EXTRACT_SHARE)
        if stage != written["stage"] or progress >= written["progress"] + _PROGRESS_STEP:
            written.update(stage=stage, progress=progress)
            store.update(clip_id, stage=stage, progress=progress)

    with tempfile.TemporaryDirectory(prefix=f"clip-{clip_id}-", dir=settings.scratch_dir or None) as tmp:
        workdir = Path(tmp)
        began = time.perf_counter()
        result = extract_clip(request, workdir, extract_options(settings), on_stage)
        extracted = time.perf_counter()
        thumbnail = result.thumbnail
        # An audio-only clip has no picture to show.
        if thumbnail is None and result.width is not None:
            store.update(clip_id, stage="thumbnail", progress=85)
            thumbnail = make_thumbnail(result.path, workdir / "thumbnail.jpg", duration=result.duration)
        store.update(clip_id, stage="uploading", progress=90)
        storage = storage_from_settings(settings)
        with ThreadPoolExecutor(max_workers=1) as pool:
            thumbnail_upload = pool.submit(storage.put_file, thumbnail, object_key(clip_id, ".jpg")) if thumbnail else None
            video_url = storage.put_file(result.path, object_key(clip_id, ".mp4"))
            thumbnail_url = thumbnail_upload.result() if thumbnail_upload else None
        finished = time.perf_counter()
    jlog.info("stored %s (%d bytes, %s) in %.2f s: extract %.2f s, thumbnail and upload %.2f s", video_url,
              result.size_bytes, result.method, finished - began, extracted - began, finished - extracted)
    return StoredClip(
        video_url=video_url,
        thumbnail_url=thumbnail_url,
        quality_used=result.quality_used,
        duration=result.duration,
        actual_start_time=result.actual_start_time,
        actual_end_time=result.actual_end_time,
        width=result.width,
        height=result.height,
        size_bytes=result.size_bytes,
        muted_ranges=[list(r) for r in result.muted_ranges],
        method=result.method,
    )


def extract_options(settings: Settings) -> ExtractOptions:
    return ExtractOptions(
        policy=SourcePolicy.from_settings(settings),
        fetch_concurrency=settings.fetch_concurrency,
        fetch_retries=settings.fetch_retries,
        fetch_timeout=settings.fetch_timeout_seconds,
        max_segments=settings.max_segments,
        max_fetch_bytes=settings.max_fetch_bytes,
        max_output_bytes=settings.max_output_bytes,
        live_wait_deadline=settings.live_wait_deadline_seconds,
        live_poll_interval=settings.live_poll_seconds,
        max_redirects=settings.source_max_redirects,
        thumbnail=True,
    )


@shared_task(name=FINALIZE_TASK, **JOB_TASK_OPTIONS)
def finalize_clip(self, stored: StoredClip | None, clip_id: str) -> None:
    """Mark the clip ``ready`` with its URLs, once, and the job ``completed``."""
    if stored is None:
        return
    jlog = job_logger(log, clip_id)
    store = job_store()
    store.update(clip_id, stage="finalizing", progress=95)
    now = utcnow()
    changed = db.session.execute(
        sa.update(Clip)
        .where(Clip.id == uuid.UUID(clip_id), Clip.status == STATUS_PROCESSING)
        .values(
            status=STATUS_READY,
            video_url=stored["video_url"],
            thumbnail_url=stored["thumbnail_url"],
            quality_used=stored["quality_used"],
            duration=stored["duration"],
            actual_start_time=stored["actual_start_time"],
            actual_end_time=stored["actual_end_time"],
            width=stored["width"],
            height=stored["height"],
            size_bytes=stored["size_bytes"],
            muted_ranges=stored["muted_ranges"],
            extraction_method=stored["method"],
            error=None,
            processed_at=now,
            updated_at=now,
        )
    ).rowcount
    db.session.commit()
    if not changed:
        status = db.session.get(Clip, uuid.UUID(clip_id)).status
        if status != STATUS_READY:
            jlog.info("clip is %s; not finalizing it", status)
            return
        jlog.info("clip was already finalized; only the job metadata is written again")
    # Required: a retry of this task writes it again (the update above is then a no-op).
    store.update(
        clip_id, required=True, status=JOB_COMPLETED, progress=100, completed_at=now_iso(), error=None,
        video_url=stored["video_url"], thumbnail_url=stored["thumbnail_url"],
        quality_used=stored["quality_used"],
    )
    jlog.info("clip ready: %s", stored["video_url"])


@shared_task(name=JANITOR_TASK)
def janitor_task() -> dict:
    """Re-queue jobs whose worker died, fail clips past the processing deadline."""
    return dict(run_janitor())


@shared_task(name=SWEEP_OUTBOX_TASK)
def sweep_outbox_task() -> int:
    """Queue clips whose job never reached Redis (created while it was down)."""
    queued = sweep_outbox()
    if queued:
        log.info("outbox sweep queued %d job(s)", queued)
    return queued
