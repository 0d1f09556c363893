"""Prometheus metrics at ``/metrics``: counters and histograms kept in Redis, gauges read at scrape time.

Workers run on many hosts, in many pool processes, and ``/metrics`` is
served by any ``web`` process on other hosts. Per-process counters (or
prometheus_client's multiprocess mode, whose files live on one host) would
give each scrape one process's share. So every process adds its events to
Redis, which all hosts share (one ``MULTI`` of ``HINCRBYFLOAT``s per event), and
``web`` reads the totals at scrape time: every ``web`` process answers the
same numbers. If Redis loses them (a restart without persistence) the
counters start again from zero, a reset that ``rate()`` and ``increase()``
handle as a process restart; events recorded while Redis is down are lost
(a warning is logged), never the job.

``/metrics`` is not open to the world: with ``METRICS_TOKEN`` set it needs
``Authorization: Bearer <METRICS_TOKEN>``; without it, only loopback clients
(a Prometheus agent on the same host) may read it.
"""

from __future__ import annotations

import bisect
import ipaddress
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

import redis
import sqlalchemy as sa
from celery import bootsteps
from flask import Blueprint, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import INF, floatToGoString

from clipqueue.auth import presented_token, token_is_valid
from clipqueue.jobs import get_redis
from clipqueue.keys import CONTROL_QUEUE, DEAD_LETTER_QUEUE, JOB_QUEUE, metric_key, worker_heartbeats_key
from clipqueue.models import CLIP_STATUSES, STATUS_FAILED, Clip, as_utc, db, utcnow
from clipqueue.queue import job_queue_keys, oldest_waiting_clip_ids, unqueued_count

log = logging.getLogger(__name__)

metrics_bp = Blueprint("metrics", __name__)

# Processing time of the clips finished most recently.
RECENT_CLIPS = 500

# A worker writes its heartbeat this often, and counts as live while its latest is this recent.
HEARTBEAT_SECONDS = 10.0
LIVE_WORKER_SECONDS = 3 * HEARTBEAT_SECONDS
# Heartbeats of workers gone this long (killed, host lost) are dropped from Redis.
FORGET_WORKER_SECONDS = 24 * 3600.0


@dataclass(frozen=True)
class Metric:
    """A counter (no ``buckets``) or histogram whose samples every process adds to Redis.

    ``known`` lists the label values exposed from the start (reading 0), and
    the only ones that may be recorded: a typo fails loudly, and the number
    of series stays bounded.
    """

    name: str
    documentation: str
    labels: tuple[str, ...] = ()
    known: tuple[tuple[str, ...], ...] = ((),)
    buckets: tuple[float, ...] = ()

    def field(self, values: tuple[str, ...]) -> str:
        if values not in self.known:
            raise ValueError(f"{self.name}: {dict(zip(self.labels, values))} is not a declared label value")
        return ",".join(f"{label}={value}" for label, value in zip(self.labels, values))


JOB_OUTCOMES = ("ready", "failed", "dead_lettered", "canceled", "retried")
STAGES = ("fetching", "cutting", "thumbnail", "uploading")
WEBHOOK_OUTCOMES = ("delivered", "failed", "expired")

JOBS = Metric(
    "clipqueue_jobs_total",
    "Jobs by outcome: each finished job once as ready, failed (its input cannot be cut), dead_lettered "
    "or canceled; retried counts Celery retries",
    labels=("outcome",), known=tuple((outcome,) for outcome in JOB_OUTCOMES),
)
TIME_TO_READY = Metric(
    "clipqueue_time_to_ready_seconds", "Seconds from a clip's creation to ready",
    buckets=(1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200, 3600),
)
QUEUE_WAIT = Metric(
    "clipqueue_queue_wait_seconds", "Seconds a job waited in the queue, from its latest enqueue to its start",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
STAGE_SECONDS = Metric(
    "clipqueue_stage_seconds", "Seconds a job spent in each stage it completed",
    labels=("stage",), known=tuple((stage,) for stage in STAGES),
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600),
)
SOURCE_BYTES = Metric("clipqueue_source_bytes_total", "Bytes fetched from sources by cuts that finished")
WEBHOOK_DELIVERIES = Metric(
    "clipqueue_webhook_deliveries_total",
    "Webhook delivery attempts by outcome (delivered, failed and to be retried, expired: given up)",
    labels=("outcome",), known=tuple((outcome,) for outcome in WEBHOOK_OUTCOMES),
)
SEGMENT_CACHE_RESULTS = ("hit", "coalesced", "miss")
SEGMENT_CACHE = Metric(
    "clipqueue_segment_cache_total",
    "Segments and init sections cuts needed, by where they came from: hit (the host's segment cache), "
    "coalesced (another job's fetch of it, waited for), miss (the source)",
    labels=("result",), known=tuple((result,) for result in SEGMENT_CACHE_RESULTS),
)
SEGMENT_CACHE_SAVED_BYTES = Metric(
    "clipqueue_segment_cache_saved_bytes_total",
    "Source bytes not fetched thanks to the host's segment cache",
)
IDENTICAL_CLIPS = Metric(
    "clipqueue_identical_clips_total", "Clips that copied the files of a clip asked exactly as they were",
)
RECORDED = (JOBS, TIME_TO_READY, QUEUE_WAIT, STAGE_SECONDS, SOURCE_BYTES, WEBHOOK_DELIVERIES,
            SEGMENT_CACHE, SEGMENT_CACHE_SAVED_BYTES, IDENTICAL_CLIPS)


# --- recording, from any process -------------------------------------------

def _write(metric: Metric, increments: dict[str, float]) -> None:
    """Add ``increments`` to the metric's fields in one transaction; a Redis outage only loses them."""
    try:
        pipe = get_redis().pipeline(transaction=True)
        for field, amount in increments.items():
            # Floats throughout: a field that once held a float refuses HINCRBY.
            pipe.hincrbyfloat(metric_key(metric.name), field, amount)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("%s not recorded (Redis: %s)", metric.name, exc)


def increment(metric: Metric, *values: str, amount: float = 1) -> None:
    """Add ``amount`` to a counter."""
    _write(metric, {metric.field(values): amount})


def observe(metric: Metric, seconds: float, *values: str) -> None:
    """Add one observation to a histogram: its bucket (the smallest upper bound it fits), and its sum."""
    prefix = metric.field(values)
    index = bisect.bisect_left(metric.buckets, seconds)
    bound = metric.buckets[index] if index < len(metric.buckets) else INF
    _write(metric, {f"{prefix}|le={floatToGoString(bound)}": 1, f"{prefix}|sum": max(0.0, seconds)})


def count_job(outcome: str) -> None:
    """Count a job's outcome (``JOB_OUTCOMES``)."""
    increment(JOBS, outcome)


def count_ready(clip_id: str | uuid.UUID, ready_at: datetime) -> None:
    """Count a clip that became ready, and how long it took since it was created."""
    count_job("ready")
    try:
        created_at = db.session.execute(
            sa.select(Clip.created_at).where(Clip.id == uuid.UUID(str(clip_id)))
        ).scalar_one()
    except sa.exc.SQLAlchemyError as exc:  # the clip is ready all the same
        log.warning("%s not recorded (database: %s)", TIME_TO_READY.name, exc)
        db.session.rollback()
        return
    observe(TIME_TO_READY, (as_utc(ready_at) - as_utc(created_at)).total_seconds())


def observe_queue_wait(queued_at: datetime) -> None:
    """Observe the wait of a job that starts now, queued at ``queued_at``."""
    observe(QUEUE_WAIT, (utcnow() - as_utc(queued_at)).total_seconds())


def count_source_bytes(size: int) -> None:
    increment(SOURCE_BYTES, amount=size)


def count_segment_cache(hits: int, coalesced: int, misses: int, bytes_saved: int) -> None:
    """Count where a cut's segments came from (nothing when the cache is off and so saw nothing)."""
    if hits or coalesced or misses:
        counts = dict(zip(SEGMENT_CACHE_RESULTS, (hits, coalesced, misses)))
        _write(SEGMENT_CACHE, {SEGMENT_CACHE.field((result,)): count for result, count in counts.items()})
        if bytes_saved:
            increment(SEGMENT_CACHE_SAVED_BYTES, amount=bytes_saved)


class StageTimer:
    """Times a job's stages: entering a stage ends the one before, which is then observed.

    Only the stages of ``STAGES`` are observed: a stage added to the media
    code later is not timed until it is declared there, and never fails a job.
    """

    def __init__(self) -> None:
        self.stage: str | None = None
        self.began = 0.0

    def enter(self, stage: str | None) -> None:
        if stage == self.stage:
            return
        now = time.monotonic()
        if self.stage in STAGES:
            observe(STAGE_SECONDS, now - self.began, self.stage)
        self.stage, self.began = stage, now

    def finish(self) -> None:
        self.enter(None)


class QueueConsumerHeartbeat(bootsteps.StartStopStep):
    """A Celery consumer step: this worker's hostname, scored by time, in a Redis set per queue it consumes.

    For ``clipqueue_active_worker_count{queue}``; the liveness probe's
    heartbeat (``clipqueue.heartbeat``) is per worker, not per queue.

    It runs on the worker's own timer, so a worker whose event loop is stuck
    stops beating. A worker that stops removes itself; one that is killed
    stops counting as live after ``LIVE_WORKER_SECONDS``.
    """

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent, **kwargs) -> None:
        super().__init__(parent, **kwargs)
        self.timer_ref = None

    def start(self, consumer) -> None:
        self._beat(consumer)
        self.timer_ref = consumer.timer.call_repeatedly(HEARTBEAT_SECONDS, self._beat, (consumer,))

    def stop(self, consumer) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()
            self.timer_ref = None
        self._send(consumer, lambda pipe, key: pipe.zrem(key, consumer.hostname))

    shutdown = stop

    def _beat(self, consumer) -> None:
        now = time.time()

        def beat(pipe, key):
            pipe.zadd(key, {consumer.hostname: now})
            pipe.zremrangebyscore(key, "-inf", now - FORGET_WORKER_SECONDS)

        self._send(consumer, beat)

    @staticmethod
    def _send(consumer, command) -> None:
        try:
            pipe = consumer.app.flask_app.extensions["clipqueue.redis"].pipeline(transaction=False)
            for queue in consumer.app.amqp.queues.consume_from:
                command(pipe, worker_heartbeats_key(queue))
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("worker heartbeat not written (Redis unavailable): %s", exc)


# --- reading, at scrape time -----------------------------------------------

def _labels(metric: Metric, field: str) -> tuple[str, ...] | None:
    """The label values a stored field names, or None for a field this version does not know."""
    pairs = dict(pair.split("=", 1) for pair in field.split(",") if pair)
    values = tuple(pairs.get(label) for label in metric.labels)
    return values if values in metric.known else None


def _counter(metric: Metric, stored: dict[str, str]) -> CounterMetricFamily:
    family = CounterMetricFamily(metric.name, metric.documentation, labels=metric.labels)
    totals = {values: 0.0 for values in metric.known}
    for field, value in stored.items():
        values = _labels(metric, field)
        if values is not None:
            totals[values] += float(value)
    for values, total in totals.items():
        family.add_metric(list(values), total)
    return family


def _histogram(metric: Metric, stored: dict[str, str]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(metric.name, metric.documentation, labels=metric.labels)
    bounds = (*metric.buckets, INF)
    counts = {values: [0.0] * len(bounds) for values in metric.known}
    sums = {values: 0.0 for values in metric.known}
    for field, value in stored.items():
        prefix, _, part = field.rpartition("|")
        values = _labels(metric, prefix)
        if values is None:
            continue
        if part == "sum":
            sums[values] += float(value)
        elif part.startswith("le="):
            # A bound no longer in the list (buckets were changed) counts in the next one up.
            index = min(bisect.bisect_left(bounds, float(part[3:])), len(bounds) - 1)
            counts[values][index] += float(value)
    for values in metric.known:
        cumulative, total = [], 0.0
        for bound, count in zip(bounds, counts[values]):
            total += count
            cumulative.append((floatToGoString(bound), total))
        family.add_metric(list(values), cumulative, sums[values])
    return family


def _decode(raw: dict) -> dict[str, str]:
    return {key.decode(): value.decode() for key, value in raw.items()}


class ClipqueueCollector:
    """Job counters and histograms, queue depths and waits, live workers, clips by status."""

    def collect(self):
        families, oldest_waiting = self._from_redis()
        yield from families
        yield from self._from_database(oldest_waiting)

    def _from_redis(self) -> tuple[list, list[str]]:
        """What Redis holds, and the clips whose jobs have waited longest in the job queue's lists."""
        client = current_app.extensions["clipqueue.redis"]
        queues = GaugeMetricFamily("clipqueue_queue_length", "Messages waiting in a queue", labels=["queue"])
        up = GaugeMetricFamily("clipqueue_redis_up", "Whether Redis answered this scrape")
        workers = GaugeMetricFamily(
            "clipqueue_active_worker_count",
            f"Workers consuming a queue whose heartbeat is less than {LIVE_WORKER_SECONDS:g} s old",
            labels=["queue"],
        )
        # A queue's length counts its priority sub-lists too (kombu keeps each priority in a list of its own).
        lists = {JOB_QUEUE: job_queue_keys(), CONTROL_QUEUE: [CONTROL_QUEUE],
                 DEAD_LETTER_QUEUE: [DEAD_LETTER_QUEUE]}
        keys = [key for names in lists.values() for key in names]
        consumed = (JOB_QUEUE, CONTROL_QUEUE)
        try:
            now = time.time()
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.llen(key)
            for name in consumed:
                pipe.zcount(worker_heartbeats_key(name), now - LIVE_WORKER_SECONDS, "+inf")
            for metric in RECORDED:
                pipe.hgetall(metric_key(metric.name))
            answers = pipe.execute()
            oldest_waiting = oldest_waiting_clip_ids()
        except redis.RedisError:
            up.add_metric([], 0)
            return [up], []
        up.add_metric([], 1)
        lengths = iter(answers[:len(keys)])
        for name, names in lists.items():
            queues.add_metric([name], sum(next(lengths) for _ in names))
        for name, count in zip(consumed, answers[len(keys):]):
            workers.add_metric([name], count)
        recorded = [
            _histogram(metric, _decode(raw)) if metric.buckets else _counter(metric, _decode(raw))
            for metric, raw in zip(RECORDED, answers[len(keys) + len(consumed):])
        ]
        return [up, queues, workers, *recorded], oldest_waiting

    def _from_database(self, oldest_waiting: list[str]) -> list:
        up = GaugeMetricFamily("clipqueue_database_up", "Whether the database answered this scrape")
        try:
            families = list(self._database_gauges(oldest_waiting))
        except sa.exc.SQLAlchemyError:
            db.session.rollback()
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        return [up, *families]

    def _database_gauges(self, oldest_waiting: list[str]):
        oldest = GaugeMetricFamily(
            "clipqueue_queue_oldest_age_seconds",
            "Seconds the oldest job waiting in a queue has waited since its latest enqueue (0: none waits)",
            labels=["queue"],
        )
        queued = db.session.execute(
            sa.select(sa.func.min(sa.func.coalesce(Clip.enqueued_at, Clip.created_at)))
            .where(Clip.id.in_([uuid.UUID(clip_id) for clip_id in oldest_waiting]))
        ).scalar_one_or_none() if oldest_waiting else None
        age = (utcnow() - as_utc(queued)).total_seconds() if queued is not None else 0.0
        oldest.add_metric([JOB_QUEUE], max(0.0, age))
        yield oldest

        clips = GaugeMetricFamily("clipqueue_clips", "Clips in the database by status", labels=["status"])
        counts = dict(db.session.execute(sa.select(Clip.status, sa.func.count()).group_by(Clip.status)).all())
        for status in CLIP_STATUSES:
            clips.add_metric([status], counts.get(status, 0))
        yield clips

        # Users' mistakes (a 404 source, a range past the end) and operators' problems apart.
        failed = GaugeMetricFamily("clipqueue_clips_failed", "Failed clips in the database by reason",
                                   labels=["reason"])
        for reason, count in db.session.execute(
            sa.select(Clip.failure_code, sa.func.count()).where(Clip.status == STATUS_FAILED)
            .group_by(Clip.failure_code)
        ).all():
            failed.add_metric([reason or "unknown"], count)
        yield failed

        yield GaugeMetricFamily("clipqueue_clips_not_yet_queued",
                                "Clips created while Redis was down, waiting for the outbox sweep",
                                value=unqueued_count())

        recent = db.session.execute(
            sa.select(Clip.created_at, Clip.processed_at)
            .where(Clip.status == "ready", Clip.processed_at.isnot(None))
            .order_by(Clip.processed_at.desc())
            .limit(RECENT_CLIPS)
        ).all()
        seconds = sorted((done - created).total_seconds() for created, done in recent)
        latency = GaugeMetricFamily(
            "clipqueue_recent_ready_seconds",
            f"Seconds from POST to ready over the last {RECENT_CLIPS} ready clips",
            labels=["quantile"],
        )
        for quantile in (0.5, 0.9, 0.99):
            if seconds:
                index = min(len(seconds) - 1, int(quantile * len(seconds)))
                latency.add_metric([str(quantile)], seconds[index])
        yield latency


def _allowed() -> bool:
    token = current_app.config["CLIPQUEUE"].metrics_token
    if token:
        return token_is_valid(presented_token(), [token])
    try:
        return ipaddress.ip_address(request.remote_addr or "").is_loopback
    except ValueError:
        return False


@metrics_bp.get("/metrics")
def metrics():
    # Imported here: the API records metrics (through clips and webhooks), so this module cannot need it first.
    from clipqueue.api import error_response

    if not _allowed():
        return error_response(403, "forbidden", "metrics are for loopback clients or METRICS_TOKEN holders")
    registry = CollectorRegistry()
    registry.register(ClipqueueCollector())
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
