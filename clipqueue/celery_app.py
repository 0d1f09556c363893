"""Celery wired to Flask, as in Flask's own Celery example: tasks run inside the app context."""

from __future__ import annotations

from celery import Celery, Task
from celery.signals import after_setup_logger, after_setup_task_logger, worker_process_init
from flask import Flask

from clipqueue.config import Settings
from clipqueue.heartbeat import WorkerHeartbeat
from clipqueue.jobs import ClipIdLogFilter, current_clip_id
from clipqueue.keys import CONTROL_QUEUE
from clipqueue.logs import quiet_periodic_task_logs
from clipqueue.broker import PRIORITY_SEP, PRIORITY_STEPS, TRANSPORT
from clipqueue.queue import JANITOR_TASK, SWEEP_OUTBOX_TASK
from clipqueue.sentry import tag_clip
from clipqueue.webhooks import SWEEP_TASK as WEBHOOK_SWEEP_TASK


class AppContextTask(Task):
    """Runs the task body, and its failure hooks, inside the Flask app context."""

    abstract = True

    def flask_context(self):
        return self.app.flask_app.app_context()

    def __call__(self, *args, **kwargs):
        token = current_clip_id.set(kwargs.get("clip_id"))
        tag_clip(kwargs.get("clip_id"))
        try:
            with self.flask_context():
                return super().__call__(*args, **kwargs)
        finally:
            current_clip_id.reset(token)


def visibility_timeout(settings: Settings) -> int:
    """How long Redis keeps a delivered, unacknowledged job before giving it to another worker.

    It must outlast the longest a live worker may hold a job: waiting for a
    free slot behind another job, its retry countdown or lease re-check, then
    running to the hard time limit. Otherwise kombu redelivers a job that is
    still running. A worker that dies is noticed sooner through its lease
    (``LEASE_TTL_SECONDS`` + ``JANITOR_INTERVAL_SECONDS``), so a long timeout
    costs no recovery time.
    """
    held = (2 * settings.job_hard_time_limit_seconds
            + max(settings.job_retry_backoff_max_seconds, settings.lease_ttl_seconds) + 60)
    return int(max(settings.visibility_timeout_seconds, held))


def _periodic(task: str, every: float) -> dict:
    # A run that could not start within its interval is dropped: the next one does the same work.
    return {"task": task, "schedule": every, "options": {"queue": CONTROL_QUEUE, "expires": every}}


def celery_init_app(app: Flask, settings: Settings) -> Celery:
    """Create the Celery app for ``app`` and store it in ``app.extensions["celery"]``."""
    from clipqueue.metrics import QueueConsumerHeartbeat
    from clipqueue.tasks import register_tasks

    celery = Celery(app.name, task_cls=AppContextTask)
    celery.config_from_object("celeryconfig")
    celery.conf.update(
        broker_url=settings.redis_url,
        # kombu's Redis transport with normal jobs in clip_extraction_jobs itself (clipqueue.broker).
        broker_transport=TRANSPORT,
        broker_transport_options={
            "socket_connect_timeout": 2,
            "socket_timeout": 30,
            "health_check_interval": 10,
            "visibility_timeout": visibility_timeout(settings),
            # Job priorities (clipqueue.broker): one list per step, BRPOP in step order. Every
            # process (web, workers, beat, Flower) must name the same steps to see the same lists.
            "priority_steps": list(PRIORITY_STEPS),
            "sep": PRIORITY_SEP,
            # Which queue a worker of several queues looks at first, within one priority step.
            "queue_order_strategy": "round_robin",
        },
        task_soft_time_limit=settings.job_soft_time_limit_seconds,
        task_time_limit=settings.job_hard_time_limit_seconds,
        beat_schedule={
            "sweep-outbox": _periodic(SWEEP_OUTBOX_TASK, settings.outbox_sweep_seconds),
            "janitor": _periodic(JANITOR_TASK, settings.janitor_interval_seconds),
            "sweep-webhooks": _periodic(WEBHOOK_SWEEP_TASK, settings.webhook_sweep_seconds),
        },
    )
    quiet_periodic_task_logs(celery)
    celery.steps["worker"].add(WorkerHeartbeat)
    celery.steps["consumer"].add(QueueConsumerHeartbeat)
    celery.flask_app = app
    celery.set_default()
    app.extensions["celery"] = celery
    register_tasks(celery, settings)
    return celery


@worker_process_init.connect
def _fresh_connections_after_fork(**_kwargs) -> None:
    """A forked pool process must not share the parent's database connections."""
    from celery import current_app as current_celery

    flask_app = getattr(current_celery, "flask_app", None)
    if flask_app is None:
        return
    from clipqueue.models import db

    with flask_app.app_context():
        db.engine.dispose(close=False)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _tag_log_lines_with_clip_id(logger, **_kwargs) -> None:
    """Every line a job logs, from any module or library, names its clip."""
    for handler in logger.handlers:
        if not any(isinstance(f, ClipIdLogFilter) for f in handler.filters):
            handler.addFilter(ClipIdLogFilter())
