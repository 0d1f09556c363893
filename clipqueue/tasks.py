"""The worker's tasks: extract and store a clip, then finalize its record; and beat's maintenance.

Extraction, the pictures made from the clip and upload run in one task
because they share local files: workers on different hosts share no disk, so
the upload must run where the file was cut. Only URLs and probe figures travel to ``finalize_clip``,
which may run on any host; they are kept in the database first, so a lost
finalize can be sent again.

The tasks are registered on each Celery app by :func:`register_tasks`, with
the retry policy of that app's settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypedDict

import redis
import sqlalchemy as sa
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from flask import current_app
from kombu.exceptions import OperationalError as BrokerError

from clipqueue import clips, metrics, webhooks
from clipqueue.celery_app import AppContextTask
from clipqueue.config import Settings
from clipqueue.exceptions import (
    ClipqueueError, InputError, JobCanceled, LeaseLost, StorageRejected, TransientError,
)
from clipqueue.janitor import run_janitor
from clipqueue.jobs import (
    JOB_CANCELED,
    JOB_RETRYING,
    JOB_RUNNING,
    get_redis,
    job_logger,
    job_store,
    now_iso,
    worker_name,
)
from clipqueue.keys import identical_clip_key, lease_key, maintenance_lock_key
from clipqueue.lease import JobLease
from clipqueue.media.extract import ClipRequest, ExtractOptions, extract_clip
from clipqueue.media.process import kill_running
from clipqueue.media.renditions import THUMBNAIL_SIZES, make_renditions
from clipqueue.media.thumbnail import THUMBNAIL_WIDTH, make_thumbnail
from clipqueue.media.twitch import parse_twitch_link
from clipqueue.models import OUTPUT_PORTRAIT, STATUS_CANCELED, STATUS_PROCESSING, STATUS_READY, Clip, db
from clipqueue.queue import FINALIZE_TASK, JANITOR_TASK, PROCESS_TASK, SWEEP_OUTBOX_TASK, sweep_outbox
from clipqueue.publicurl import links_base_url
from clipqueue.storage import OBJECT_SUFFIXES, Storage, object_key, storage_from_settings

log = logging.getLogger(__name__)

RETRYABLE = (
    TransientError, sa.exc.OperationalError, sa.exc.InterfaceError,
    redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
    BrokerError, subprocess.TimeoutExpired,
)

# The part of the progress bar each extraction stage fills (thumbnail 85, upload 90 and finalizing
# 95 follow), and the smallest step written.
_STAGE_BANDS = {"fetching": (0, 60), "cutting": (60, 80)}
_PROGRESS_STEP = 5
SCRATCH_PREFIX = "clip-"


class StoredClip(TypedDict):
    """What ``process_clip`` hands to ``finalize_clip`` (and keeps in ``Clip.output``): no local paths."""

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
    codec: str | None
    preview_url: str | None
    thumbnails: dict[str, str] | None  # "small", "medium", "large" → URL
    portrait_url: str | None


def describe_error(exc: BaseException) -> str:
    """A readable reason for the clip record and the dead-letter queue."""
    if isinstance(exc, SoftTimeLimitExceeded):
        return "job exceeded its time limit"
    if isinstance(exc, TimeLimitExceeded):
        return f"job exceeded its time limit (killed at the hard limit, {exc})"
    if isinstance(exc, ClipqueueError):
        return str(exc)
    if isinstance(exc, sa.exc.OperationalError):
        return f"database unavailable: {exc.orig}"
    if isinstance(exc, subprocess.TimeoutExpired):
        return f"ffmpeg took longer than {exc.timeout:g} s"
    return f"internal error: {type(exc).__name__}: {exc}"


def failure_code(exc: BaseException) -> str:
    """The short reason metrics count failed clips by."""
    if isinstance(exc, (SoftTimeLimitExceeded, TimeLimitExceeded)):
        return "time_limit"
    if isinstance(exc, ClipqueueError):
        return exc.code
    if isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)):
        return "database_unavailable"
    if isinstance(exc, (redis.RedisError, BrokerError)):
        return "redis_unavailable"
    return "internal_error"


class ClipJobTask(AppContextTask):
    """Keeps job metadata, clip record and dead-letter queue in step with Celery's retries."""

    abstract = True

    def on_retry(self, exc, task_id, args, kwargs, einfo):
        clip_id = kwargs["clip_id"]
        job_logger(log, clip_id).warning("retrying after: %s", describe_error(exc))
        with self.flask_context():
            metrics.count_job("retried")
            job_store().update(clip_id, status=JOB_RETRYING, error=describe_error(exc))

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        # Retries are spent, or the error is one no retry helps: an operator may replay it.
        with self.flask_context():
            clips.mark_failed(kwargs["clip_id"], describe_error(exc), code=failure_code(exc),
                              attempts=self.request.retries + 1, traceback=str(einfo))


def process_clip(self, clip_id: str, priority: str | None = None) -> StoredClip | None:
    """Fetch the range, cut it, make its pictures (and portrait version) and upload them.

    ``priority`` is there for Flower to show: the broker ordered the job by
    its message's priority before it got here.

    Returns the stored output, or None, doing nothing, for a clip that is no
    longer processing or whose job runs elsewhere right now (a duplicate
    delivery: the lease is held, or was lost to another delivery mid-way).
    """
    jlog = job_logger(log, clip_id)
    settings: Settings = current_app.config["CLIPQUEUE"]
    clip = clips.get(clip_id)
    if clip is None:
        jlog.warning("no such clip; dropping the job")
        return None
    if clip.status != STATUS_PROCESSING:
        jlog.info("clip is already %s; nothing to do", clip.status)
        return None
    if clip.output is not None:
        jlog.info("clip was already stored; finalizing it")
        return clip.output

    store = job_store()
    worker = self.request.hostname or worker_name()
    lease = JobLease(get_redis(), clip_id, settings.lease_ttl_seconds, owner=worker,
                     cancel_poll_seconds=settings.cancel_poll_seconds, on_cancel=kill_running)
    if not lease.acquire():
        # Another delivery holds the lease. If it lives, this copy finds the clip done
        # when it comes back; if it died (its pool process was killed), the lease will
        # have expired and this copy takes the job over without waiting for the janitor.
        jlog.info("job is running elsewhere (lease held); looking again in %g s", settings.lease_ttl_seconds)
        self.signature_from_request(countdown=settings.lease_ttl_seconds,
                                    retries=self.request.retries).apply_async()
        return None
    with lease:
        # The holder that just released the lease may have finished the clip: read it again.
        clip = clips.get(clip_id)
        if clip.status != STATUS_PROCESSING or clip.output is not None:
            jlog.info("clip was finished by another delivery (%s)", clip.status)
            return clip.output if clip.status == STATUS_PROCESSING else None
        request = ClipRequest(source_url=clip.vod_url, start_time=clip.start_time, end_time=clip.end_time,
                              quality=clip.quality, mode=clip.mode)
        portrait_fill = (clip.portrait_fill or "crop") if OUTPUT_PORTRAIT in (clip.outputs or ()) else None
        fingerprint = clip_fingerprint(clip) if settings.identical_clip_window_seconds > 0 else None
        if self.request.retries == 0:  # a retry's wait is its backoff, not the queue
            metrics.observe_queue_wait(clip.enqueued_at or clip.created_at)
        deliveries = clips.count_delivery(clip_id)
        # Hold no database connection through minutes of media work.
        clip = None
        db.session.remove()
        most = settings.job_max_retries + 1 + settings.max_redeliveries
        if deliveries > most:
            store.update(clip_id, deliveries=deliveries)
            clips.mark_failed(clip_id, f"job started {deliveries - 1} times without finishing; giving up",
                              code="poison_job", attempts=self.request.retries + 1, traceback="")
            return None
        attempt = self.request.retries + 1
        store.update(
            clip_id, status=JOB_RUNNING, started_at=now_iso(), attempts=attempt, worker=worker,
            stage="fetching", progress=0, error=None, deliveries=deliveries,
        )
        jlog.info("attempt %d on %s: extracting %.3f-%.3f s (%s, %s)", attempt, worker,
                  request.start_time, request.end_time, request.quality, request.mode)
        try:
            lease.check(renew=True)  # canceled while it waited for its lease
            stored = _copy_of_identical(clip_id, fingerprint, settings, lease.check) or \
                _produce(clip_id, request, settings, store, lease.check, portrait_fill)
            lease.check(renew=True)
            if not _keep_output(jlog, clip_id, stored):
                # Only a canceled clip's files go: a clip another delivery made ready has the same keys.
                if clips.get(clip_id).status == STATUS_CANCELED:
                    _stopped_by_cancel(jlog, clip_id, settings, store)
                return None
        except JobCanceled:
            _stopped_by_cancel(jlog, clip_id, settings, store)
            return None
        except LeaseLost as exc:
            jlog.warning("stopped: %s", exc)
            return None
        except Exception as exc:
            if lease.canceled.is_set():
                # Its FFmpeg was killed under it: what failed is the cancel, not the clip.
                _stopped_by_cancel(jlog, clip_id, settings, store)
                return None
            if not isinstance(exc, InputError):
                raise
            # The clip's own input cannot be cut: no retry, no dead letter, one line in the log.
            clips.mark_failed(clip_id, describe_error(exc), code=failure_code(exc), attempts=attempt)
            return None
        store.update(clip_id, stage="finalizing", progress=95)
    return stored


def _stopped_by_cancel(jlog, clip_id: str, settings: Settings, store) -> None:
    """A canceled job stopped: its scratch is gone with its folder; remove anything it stored."""
    discard_output(clip_id, settings)
    # The job wrote "running" over the cancel's metadata if the two crossed.
    store.update(clip_id, status=JOB_CANCELED, stage=None)
    jlog.info("job stopped: the clip was canceled")


def discard_output(clip_id: str, settings: Settings) -> None:
    """Remove the clip's stored files: a canceled clip keeps nothing."""
    storage = storage_from_settings(settings)
    for suffix in OBJECT_SUFFIXES.values():
        try:
            storage.delete(object_key(clip_id, suffix))
        except (ClipqueueError, OSError) as exc:
            job_logger(log, clip_id).warning("could not remove %s of a canceled clip: %s", suffix, exc)


def _produce(clip_id: str, request: ClipRequest, settings: Settings, store,
             check_lease: Callable[[], None], portrait_fill: str | None = None) -> StoredClip:
    """Extract, make the pictures (and the portrait version with ``portrait_fill``) and upload, in one scratch
    folder that never outlives the job."""
    jlog = job_logger(log, clip_id)
    scratch_root = Path(settings.scratch_dir or tempfile.gettempdir())
    remove_stale_scratch(scratch_root, settings.job_hard_time_limit_seconds * 2)

    written = {"stage": None, "progress": -_PROGRESS_STEP}
    stages = metrics.StageTimer()

    def on_stage(stage: str, progress: int) -> None:
        check_lease()
        stages.enter(stage)
        # A write per fetched part would be Redis round trips the fetch threads wait on: steps of 5.
        low, high = _STAGE_BANDS.get(stage, (0, 80))
        progress = low + (high - low) * progress // 100
        if stage != written["stage"] or progress >= written["progress"] + _PROGRESS_STEP:
            written.update(stage=stage, progress=progress)
            store.update(clip_id, stage=stage, progress=progress)

    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{clip_id}-", dir=scratch_root) as tmp:
        workdir = Path(tmp)
        began = time.perf_counter()
        result = extract_clip(request, workdir, ExtractOptions.from_settings(settings, thumbnail=True), on_stage)
        extracted = time.perf_counter()
        metrics.count_source_bytes(result.bytes_fetched)
        stats = result.cache_stats
        metrics.count_segment_cache(stats.hits, stats.coalesced, stats.misses, stats.bytes_saved)
        storage = storage_from_settings(settings, links_base_url(settings, get_redis()))
        with ThreadPoolExecutor(max_workers=2) as pool:
            # The clip uploads while its pictures are made from it.
            video_upload = pool.submit(storage.put_file, result.path, object_key(clip_id, OBJECT_SUFFIXES["video"]))
            pictures = {}
            if result.width is not None:  # an audio-only clip has no picture to show
                stages.enter("thumbnail")
                store.update(clip_id, stage="thumbnail", progress=85)
                pictures = _make_pictures(jlog, result, workdir, portrait_fill)
            check_lease()
            stages.enter("uploading")
            store.update(clip_id, stage="uploading", progress=90)
            urls = _store_pictures(pool, storage, clip_id, pictures)
            video_url = video_upload.result()
        stages.finish()
        finished = time.perf_counter()
    jlog.info("stored %s (%d bytes, %s) in %.2f s: extract %.2f s, pictures and upload %.2f s", video_url,
              result.size_bytes, result.method, finished - began, extracted - began, finished - extracted)
    return StoredClip(
        video_url=video_url,
        thumbnail_url=urls.get("thumbnail"),
        quality_used=result.quality_used,
        duration=result.duration,
        actual_start_time=result.actual_start_time,
        actual_end_time=result.actual_end_time,
        width=result.width,
        height=result.height,
        size_bytes=result.size_bytes,
        muted_ranges=[list(r) for r in result.muted_ranges],
        method=result.method,
        codec=result.codec,
        preview_url=urls.get("preview"),
        thumbnails={name: urls[name] for name in THUMBNAIL_SIZES} if "small" in urls else None,
        portrait_url=urls.get("portrait"),
    )


def _make_pictures(jlog, result, workdir: Path, portrait_fill: str | None) -> dict[str, Path]:
    """The files shown beside the clip, by name ("thumbnail", "small", "medium", "large", "preview",
    "portrait"), made from the finished clip in one FFmpeg run.

    Pictures are not the clip: when they cannot be made the clip is still
    ready, with only the thumbnail (taken alone if the cut made none).
    """
    try:
        made = make_renditions(result.path, workdir, width=result.width, height=result.height,
                               duration=result.duration, portrait_fill=portrait_fill,
                               poster_width=None if result.thumbnail else THUMBNAIL_WIDTH)
    except (ClipqueueError, OSError, subprocess.TimeoutExpired) as exc:
        jlog.warning("no preview, thumbnails or portrait: %s", exc)
        thumbnail = result.thumbnail or _fallback_thumbnail(jlog, result, workdir)
        return {"thumbnail": thumbnail} if thumbnail else {}
    pictures = {"thumbnail": result.thumbnail or made.poster, **made.thumbnails, "preview": made.preview}
    if made.portrait:
        pictures["portrait"] = made.portrait
    return pictures


def _store_pictures(pool: ThreadPoolExecutor, storage, clip_id: str, pictures: dict[str, Path]) -> dict[str, str]:
    """Upload each file of ``pictures`` once (thumbnail sizes capped at the clip's width share one); return
    every picture's URL by name."""
    uploads = {}
    for name, path in pictures.items():
        if path not in uploads:
            uploads[path] = pool.submit(storage.put_file, path, object_key(clip_id, OBJECT_SUFFIXES[name]))
    return {name: uploads[path].result() for name, path in pictures.items()}

# --- identical requests -------------------------------------------------------------
# In a storm many viewers ask for exactly the same clip. The first job to start cuts it and is named
# in Redis under the request's fingerprint; the others copy its stored files under their own keys
# (canceling a clip deletes its files, so no two clips ever share a key).

_IDENTICAL_POLL_SECONDS = 0.5
# Name this job as the fingerprint's cutter if nobody is (or the cutter named is ARGV[3]); else return it.
_NAME_CUTTER = """
local named = redis.call('GET', KEYS[1])
if not named or named == ARGV[1] or named == ARGV[3] then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return ARGV[1]
end
return named
"""


def clip_fingerprint(clip: Clip) -> str | None:
    """What makes two clips the same cut: source, range, quality, mode and outputs.

    None for a live Twitch channel: its times count from the start of the
    broadcast running when the job runs, so the same request may mean another
    broadcast later.
    """
    link = parse_twitch_link(clip.vod_url)
    if link is not None and link.kind == "channel":
        return None
    source = f"twitch:{link.kind}:{link.ident}" if link is not None else clip.vod_url
    asked = [source, float(clip.start_time), float(clip.end_time), clip.quality, clip.mode,
             sorted(clip.outputs or []), clip.portrait_fill]
    return hashlib.sha256(json.dumps(asked).encode()).hexdigest()


def _copy_of_identical(clip_id: str, fingerprint: str | None, settings: Settings,
                       check_lease: Callable[[], None]) -> StoredClip | None:
    """The output of a clip asked exactly as this one, copied as this clip's; None to cut it here.

    A twin that is being cut is waited for (``IDENTICAL_CLIP_WAIT_SECONDS`` at
    most, then this job cuts too); one that failed, was canceled or lost its
    files hands the cut to this job, which its other twins then wait for.
    """
    if fingerprint is None:
        return None
    jlog = job_logger(log, clip_id)
    client = get_redis()
    name_cutter = client.register_script(_NAME_CUTTER)
    key = identical_clip_key(fingerprint)
    window_ms = int(settings.identical_clip_window_seconds * 1000)
    deadline = time.monotonic() + settings.identical_clip_wait_seconds
    gone = ""
    while True:
        twin = name_cutter(keys=[key], args=[clip_id, window_ms, gone]).decode()
        if twin == clip_id:
            return None
        output, running = _twin_output(twin)
        db.session.remove()  # no connection held while waiting
        if output is not None:
            try:
                stored = _copy_output(twin, clip_id, output, storage_from_settings(
                    settings, links_base_url(settings, client)))
            except (StorageRejected, FileNotFoundError) as exc:
                jlog.info("identical clip %s lost its files (%s); cutting it here", twin, exc)
                gone = twin
                continue
            metrics.increment(metrics.IDENTICAL_CLIPS)
            jlog.info("copied the files of identical clip %s instead of cutting", twin)
            return stored
        if not running or not client.exists(lease_key(twin)):
            gone = twin
            continue
        if time.monotonic() >= deadline:
            jlog.info("identical clip %s is still being cut; cutting this one too", twin)
            return None
        check_lease()
        time.sleep(_IDENTICAL_POLL_SECONDS)


def _twin_output(twin_id: str) -> tuple[dict | None, bool]:
    """The stored output of the clip ``twin_id`` if it has one, and whether it may still get one."""
    twin = clips.get(twin_id)
    if twin is None or twin.status not in (STATUS_PROCESSING, STATUS_READY):
        return None, False
    return twin.output, twin.status == STATUS_PROCESSING


def _copy_output(twin_id: str, clip_id: str, output: dict, storage: Storage) -> StoredClip:
    """``output`` of ``twin_id`` with each of its stored objects copied under ``clip_id``'s keys."""
    prefix = object_key(twin_id, "")
    done: dict[str, str] = {}  # thumbnail sizes capped at the clip's width share one object: copy it once

    def copied(value):
        if isinstance(value, str) and prefix in value:
            suffix = value.rpartition(prefix)[2]
            if suffix not in done:
                done[suffix] = storage.copy(prefix + suffix, object_key(clip_id, suffix))
            return done[suffix]
        if isinstance(value, dict):
            return {name: copied(item) for name, item in value.items()}
        if isinstance(value, list):
            return [copied(item) for item in value]
        return value

    return StoredClip(**{name: copied(value) for name, value in output.items()})


def _keep_output(jlog, clip_id: str, stored: StoredClip) -> bool:
    """Keep the output in the database before the lease goes; False if the clip left processing.

    With the database down the output still travels in the finalizing
    message, which is retried until the database answers: the files are not
    made again for want of this copy.
    """
    try:
        if clips.record_output(clip_id, dict(stored)):
            return True
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        jlog.warning("output not kept in the database (finalizing carries it): %s", describe_error(exc))
        db.session.remove()
        return True
    jlog.info("clip left processing while it was cut; its output is not used")
    return False


def _fallback_thumbnail(jlog, result, workdir: Path) -> Path | None:
    """A thumbnail from the finished clip; a clip without one is still a clip, so this never fails it."""
    try:
        return make_thumbnail(result.path, workdir / "thumbnail.jpg", duration=result.duration)
    except (ClipqueueError, OSError, subprocess.TimeoutExpired) as exc:
        jlog.warning("no thumbnail: %s", exc)
        return None


def remove_stale_scratch(root: Path, older_than_seconds: float) -> int:
    """Remove job folders left by workers killed without cleanup (hard time limit, SIGKILL).

    No job lives longer than its hard time limit, so a folder older than
    twice that belongs to nobody. Returns how many were removed.
    """
    removed = 0
    cutoff = time.time() - older_than_seconds
    try:
        entries = list(root.glob(f"{SCRATCH_PREFIX}*"))
    except OSError:
        return 0
    for entry in entries:
        try:
            if entry.is_dir() and entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        except OSError:
            continue
    if removed:
        log.info("removed %d stale scratch folder(s) from %s", removed, root)
    return removed


def finalize_clip(self, stored: StoredClip | None, clip_id: str) -> None:
    """Mark the clip ``ready`` with its URLs, once, and the job ``completed``.

    Without ``stored`` (a duplicate delivery's chain, or the janitor sending
    finalizing again) it uses the output the job kept in the database, if any.
    """
    clip = clips.get(clip_id)
    if clip is not None and clip.status == STATUS_CANCELED:
        # Canceled after its files were stored: they go, and the clip stays canceled.
        discard_output(clip_id, current_app.config["CLIPQUEUE"])
        return
    if stored is None:
        stored = clip.output if clip is not None and clip.status == STATUS_PROCESSING else None
        if stored is None:
            return
    job_store().update(clip_id, stage="finalizing", progress=95)
    clips.mark_ready(clip_id, dict(stored))


def _exclusively(name: str, every: float, work: Callable[[], Any]) -> Any:
    """Run ``work``, beat's maintenance run every ``every`` s, unless another process runs it now; None if so.

    The lock lives one interval and is renewed while ``work`` runs, for at most
    a few intervals: a process that dies holding it (its host lost, say) holds
    back the next runs for one interval, not the whole bound.
    """
    ttl = max(5.0, every)
    # Not thread-local: the keeper thread renews the token this thread took.
    lock = get_redis().lock(maintenance_lock_key(name), timeout=ttl, blocking=False, thread_local=False)
    if not lock.acquire():
        log.info("%s is already running elsewhere; skipped", name)
        return None
    done = threading.Event()

    def keep_holding() -> None:
        until = time.monotonic() + max(60.0, 4 * every)
        while not done.wait(ttl / 3) and time.monotonic() < until:
            try:
                lock.reacquire()
            except (redis.exceptions.LockError, redis.exceptions.RedisError):
                return

    keeper = threading.Thread(target=keep_holding, name=f"{name}-lock", daemon=True)
    keeper.start()
    try:
        return work()
    finally:
        done.set()
        keeper.join()
        try:
            lock.release()
        except redis.exceptions.LockError:
            pass  # it expired: the work outlived its bound


def janitor_task() -> dict | None:
    """Re-queue jobs that are really lost, send lost finalizing again, rebuild the dead-letter mirror."""
    settings: Settings = current_app.config["CLIPQUEUE"]
    result = _exclusively("janitor", settings.janitor_interval_seconds, run_janitor)
    return None if result is None else dict(result)


def sweep_outbox_task() -> int | None:
    """Queue clips whose job never reached Redis (created while it was down)."""
    settings: Settings = current_app.config["CLIPQUEUE"]
    queued = _exclusively("outbox", settings.outbox_sweep_seconds, sweep_outbox)
    if queued:
        log.info("outbox sweep queued %d job(s)", queued)
    return queued


def deliver_webhook_task(delivery_id: str) -> str:
    """Attempt one webhook delivery (see :func:`clipqueue.webhooks.deliver`)."""
    return webhooks.deliver(delivery_id)


def sweep_webhooks_task() -> int | None:
    """Send webhook deliveries that are overdue and whose message was lost."""
    settings: Settings = current_app.config["CLIPQUEUE"]
    return _exclusively("webhooks", settings.webhook_sweep_seconds, webhooks.sweep_deliveries)


def register_tasks(celery: Celery, settings: Settings) -> None:
    """Register the tasks on ``celery``, retried as ``settings`` say.

    ``autoretry_for`` reads its backoff when a task is declared, so each app
    declares its own tasks from its own settings instead of at import.
    """
    retry = {
        "shared": False,  # a shared task would carry the first app's options into every later app
        "bind": True,
        "base": ClipJobTask,
        "autoretry_for": RETRYABLE,
        "max_retries": settings.job_max_retries,
        "retry_backoff": settings.job_retry_backoff_seconds,
        "retry_backoff_max": settings.job_retry_backoff_max_seconds,
        "retry_jitter": True,
    }
    celery.task(name=PROCESS_TASK, **retry)(process_clip)
    celery.task(name=FINALIZE_TASK, **retry)(finalize_clip)
    celery.task(name=JANITOR_TASK, shared=False)(janitor_task)
    celery.task(name=SWEEP_OUTBOX_TASK, shared=False)(sweep_outbox_task)
    # Its own backoff, in the database (clipqueue.webhooks): a retry must outlive workers and Redis.
    celery.task(name=webhooks.DELIVER_TASK, shared=False)(deliver_webhook_task)
    celery.task(name=webhooks.SWEEP_TASK, shared=False)(sweep_webhooks_task)
