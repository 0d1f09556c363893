"""Job metadata mirrored in Redis under ``clip_extraction_job:{clip_id}`` for fast status reads."""

from __future__ import annotations

import logging
import socket
import time
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any

import redis
from flask import current_app

from clipqueue.events import write_job
from clipqueue.exceptions import TransientError
from clipqueue.keys import job_key

log = logging.getLogger(__name__)

# Job statuses (Redis), as in SPEC.md.
JOB_QUEUED = "queued"
JOB_RUNNING = "running"
JOB_RETRYING = "retrying"
JOB_COMPLETED = "completed"
JOB_FAILED = "failed"
JOB_CANCELED = "canceled"

_INT_FIELDS = ("progress", "attempts", "deliveries", "redeliveries")
UPDATE_ATTEMPTS = 4
UPDATE_RETRY_SECONDS = 0.5
_FLOAT_FIELDS = ("start_time", "end_time")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def job_fields(clip) -> dict[str, Any]:
    """What a clip's job is asked to do (SPEC: job metadata), as queued and as dead-lettered."""
    return {
        "vod_url": clip.vod_url,
        "start_time": clip.start_time,
        "end_time": clip.end_time,
        "quality": clip.quality,
        "mode": clip.mode,
        "title": clip.title,
        "priority": clip.priority or "normal",
    }


def worker_name() -> str:
    return socket.gethostname()


def get_redis() -> redis.Redis:
    """The Redis client of the current Flask app."""
    return current_app.extensions["clipqueue.redis"]


# The clip whose job this process is running, for log lines from code that does not know it.
current_clip_id: ContextVar[str | None] = ContextVar("current_clip_id", default=None)


class ClipIdLogFilter(logging.Filter):
    """Prefix every log line written while a job runs with its clip id."""

    def filter(self, record: logging.LogRecord) -> bool:
        clip_id = current_clip_id.get()
        if clip_id and not str(record.msg).startswith("[clip_id="):
            record.msg = f"[clip_id={clip_id}] {record.msg}"
        return True


def job_logger(logger: logging.Logger, clip_id: str) -> logging.LoggerAdapter:
    """A logger whose every line carries the clip id."""

    class _ClipAdapter(logging.LoggerAdapter):
        def process(self, msg, kwargs):
            return f"[clip_id={clip_id}] {msg}", kwargs

    return _ClipAdapter(logger, {"clip_id": clip_id})


class JobStore:
    """Reads and writes job metadata hashes; every write refreshes the TTL and publishes the record.

    Writes go through :func:`clipqueue.events.write_job`, so each change is an event
    (SSE, WebSocket) in the same Redis step, and ``progress`` never goes down within an attempt.
    """

    def __init__(self, client: redis.Redis, ttl_seconds: int):
        self.client = client
        self.ttl_seconds = ttl_seconds

    def create(self, clip_id: str, fields: dict[str, Any]) -> None:
        """Write a fresh record for a queued job, replacing any earlier one."""
        record = {
            "clip_id": clip_id,
            "status": JOB_QUEUED,
            "queued_at": now_iso(),
            "updated_at": now_iso(),
            "progress": 0,
            "attempts": 0,
            **fields,
        }
        write_job(self.client, clip_id, _encode(record), self.ttl_seconds, fresh=True)

    def update(self, clip_id: str, required: bool = False, **fields: Any) -> bool:
        """Write ``fields`` (and ``updated_at``), retrying briefly if Redis is restarting.

        The database is the source of truth and this is its mirror, so a write
        that still fails is logged and skipped; with ``required`` it raises
        ``TransientError`` so the task is retried.
        """
        mapping = _encode({"clip_id": clip_id, **fields, "updated_at": now_iso()})
        for attempt in range(UPDATE_ATTEMPTS):
            try:
                write_job(self.client, clip_id, mapping, self.ttl_seconds)
                return True
            except redis.RedisError as exc:
                error = exc
                time.sleep(UPDATE_RETRY_SECONDS * (attempt + 1))
        if required:
            raise TransientError(f"job store (Redis) unavailable: {error}") from error
        job_logger(log, clip_id).warning("job metadata not updated (Redis unavailable): %s", error)
        return False

    def get(self, clip_id: str) -> dict[str, Any] | None:
        raw = self.client.hgetall(job_key(clip_id))
        if not raw:
            return None
        return decode_record(raw)


def job_store() -> JobStore:
    """The job store of the current Flask app."""
    return JobStore(get_redis(), current_app.config["CLIPQUEUE"].job_ttl_seconds)


def _encode(record: dict[str, Any]) -> dict[str, str]:
    return {key: "" if value is None else str(value) for key, value in record.items()}


def decode_record(raw: dict[bytes | str, bytes | str]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for key, value in raw.items():
        key = key.decode() if isinstance(key, bytes) else key
        value = value.decode() if isinstance(value, bytes) else value
        if key in _INT_FIELDS and value != "":
            record[key] = int(float(value))
        elif key in _FLOAT_FIELDS and value != "":
            record[key] = float(value)
        else:
            record[key] = value if value != "" else None
    return record
