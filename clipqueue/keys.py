"""Redis key and queue names, in one place. These names are part of the contract (SPEC.md)."""

# The Celery queue of clip jobs: a Redis list, FIFO.
JOB_QUEUE = "clip_extraction_jobs"
# Jobs that failed for good, as JSON records an operator can inspect and replay.
DEAD_LETTER_QUEUE = "clip_extraction_jobs_failed"
# Finalizing and periodic maintenance run here so that JOB_QUEUE counts only clip jobs.
CONTROL_QUEUE = "clipqueue_control"

JOB_KEY_PREFIX = "clip_extraction_job:"


def job_key(clip_id: str) -> str:
    """The Redis hash holding a job's metadata."""
    return f"{JOB_KEY_PREFIX}{clip_id}"


LEASE_KEY_PREFIX = "clip_extraction_lease:"


def lease_key(clip_id: str) -> str:
    """The lease a running job holds, renewed by its heartbeat; gone means nobody runs it."""
    return f"{LEASE_KEY_PREFIX}{clip_id}"


def maintenance_lock_key(name: str) -> str:
    """The lock one periodic maintenance task (janitor, outbox sweep) holds while it runs."""
    return f"clipqueue:maintenance-lock:{name}"


# Every job's changes, in order (a Redis stream); its entry ids are the SSE event ids.
EVENTS_STREAM = "clip_extraction_events"
CLIP_EVENTS_PREFIX = "clip_extraction_events:"


def clip_events_key(clip_id: str) -> str:
    """One clip's job changes (a Redis stream with the job's TTL), under the ids of ``EVENTS_STREAM``."""
    return f"{CLIP_EVENTS_PREFIX}{clip_id}"


WORKER_ALIVE_PREFIX = "clipqueue:worker-alive:"


def worker_alive_key(nodename: str) -> str:
    """Present while the Celery worker ``nodename`` beats (it expires when the worker is gone)."""
    return f"{WORKER_ALIVE_PREFIX}{nodename}"


def metric_key(name: str) -> str:
    """The Redis hash holding one counter or histogram of ``/metrics``, shared by every process."""
    return f"clipqueue:metrics:{name}"


def worker_heartbeats_key(queue: str) -> str:
    """The sorted set of workers consuming ``queue``, scored by their latest heartbeat (Unix seconds)."""
    return f"clipqueue:worker-heartbeats:{queue}"


IDENTICAL_CLIP_PREFIX = "clipqueue:identical-clip:"


def identical_clip_key(fingerprint: str) -> str:
    """The clip cut for every clip asked exactly so (a fingerprint, clipqueue.tasks); its twins copy its files."""
    return f"{IDENTICAL_CLIP_PREFIX}{fingerprint}"


CANCEL_KEY_PREFIX = "clip_extraction_cancel:"


def cancel_key(clip_id: str) -> str:
    """Set when the clip is canceled: its running job stops on seeing it (the database keeps the status)."""
    return f"{CANCEL_KEY_PREFIX}{clip_id}"
