"""Celery settings that are the same on every host.

Per-deployment values (broker URL, time limits, the beat schedule) come from
the environment through ``clipqueue.config.Settings``; see
``clipqueue.celery_app.celery_init_app``.
"""

from kombu import Queue

from clipqueue.keys import CONTROL_QUEUE, JOB_QUEUE

task_queues = (Queue(JOB_QUEUE), Queue(CONTROL_QUEUE))
task_default_queue = CONTROL_QUEUE
task_routes = {
    "clipqueue.process_clip": {"queue": JOB_QUEUE},
    "clipqueue.*": {"queue": CONTROL_QUEUE},
}

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
task_ignore_result = True
timezone = "UTC"

# Long ffmpeg jobs: acknowledge after the work is done, give a job back when its
# worker dies, and take one job at a time so a busy worker hoards nothing: a worker
# of N processes holds at most the N jobs it runs, so a high-priority job queued
# behind them waits for one running job per slot, not for jobs reserved before it.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1

# Flower needs events.
worker_send_task_events = True
task_send_sent_event = True

broker_connection_retry_on_startup = True
# A web request must not hang when Redis is down: fail fast, the outbox retries.
broker_connection_timeout = 2
