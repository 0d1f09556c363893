"""Prometheus metrics at ``/metrics``, read from Redis and the database at scrape time.

Reading the shared state (not per-process counters) gives the same answer
from every ``web`` process, however many hosts run workers. ``/metrics`` is
not open to the world: with ``METRICS_TOKEN`` set it needs
``Authorization: Bearer <METRICS_TOKEN>``; without it, only loopback clients
(a Prometheus agent on the same host) may read it.
"""

from __future__ import annotations

import ipaddress

import redis
import sqlalchemy as sa
from flask import Blueprint, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from clipqueue.api import error_response
from clipqueue.auth import presented_token, token_is_valid
from clipqueue.keys import CONTROL_QUEUE, DEAD_LETTER_QUEUE, JOB_QUEUE
from clipqueue.models import CLIP_STATUSES, STATUS_FAILED, Clip, db
from clipqueue.queue import unqueued_count

metrics_bp = Blueprint("metrics", __name__)

# Processing time of the clips finished most recently.
RECENT_CLIPS = 500


class ClipqueueCollector:
    """Queue depths, clips by status and recent processing times."""

    def collect(self):
        client = current_app.extensions["clipqueue.redis"]
        queues = GaugeMetricFamily("clipqueue_queue_length", "Messages waiting in a queue", labels=["queue"])
        up = GaugeMetricFamily("clipqueue_redis_up", "Whether Redis answered this scrape")
        try:
            pipe = client.pipeline(transaction=False)
            for name in (JOB_QUEUE, CONTROL_QUEUE, DEAD_LETTER_QUEUE):
                pipe.llen(name)
            for name, length in zip((JOB_QUEUE, CONTROL_QUEUE, DEAD_LETTER_QUEUE), pipe.execute()):
                queues.add_metric([name], length)
            up.add_metric([], 1)
        except redis.RedisError:
            up.add_metric([], 0)
        yield queues
        yield up

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
                latency.add_metric([str(quantile)], seconds[min(len(seconds) - 1, int(quantile * len(seconds)))])
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
    if not _allowed():
        return error_response(403, "forbidden", "metrics are for loopback clients or METRICS_TOKEN holders")
    registry = CollectorRegistry()
    registry.register(ClipqueueCollector())
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
