"""Job metadata mirrored in Redis under ``clip_extraction_job:{clip_id}`` for fast status reads."""

from __future__ import annotations

import logging
import socket
from datetime import datetime, timezone
from typing import Any

import redis
from flask import current_app

from clipqueue.keys import job_key

# Job statuses (Redis), as in SPEC.md.
JOB_QUEUED = "queued"
JOB_RUNNING = "running"
JOB_RETRYING = "retrying"
JOB_COMPLETED = "completed"
JOB_FAILED = "failed"

_INT_FIELDS = ("progress", "attempts")
_FLOAT_FIELDS = ("start_time", "end_time")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def worker_name() -> str:
    return socket.gethostname()


def get_redis() -> redis.Redis:
    """The Redis client of the current Flask app."""
    return current_app.extensions["clipqueue.redis"]


def job_logger(logger: logging.Logger, clip_id: str) -> logging.LoggerAdapter:
    """A logger whose every line carries the clip id."""

    class _ClipAdapter(logging.LoggerAdapter):
        def process(self, msg, kwargs):
            return f"[clip_id={clip_id}] {msg}", kwargs

    return _ClipAdapter(logger, {"clip_id": clip_id})


class JobStore:
    """Reads and writes job metadata hashes; every write refreshes the TTL."""

    def __init__(self, client: redis.Redis, ttl_seconds: int):
        self.client = client
        self.ttl_seconds = ttl_seconds

    def create(self, clip_id: str, fields: dict[str, Any]) -> None:
        """Write a fresh record for a queued job, replacing any earlier one."""
        record = {
            "clip_id": clip_id,
            "status": JOB_QUEUED,
            "queued_at": now_iso(),
            "progress": 0,
            "attempts": 0,
            **fields,
        }
        key = job_key(clip_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping=_encode(record))
        pipe.expire(key, self.ttl_seconds)
        pipe.execute()

    def update(self, clip_id: str, **fields: Any) -> None:
        key = job_key(clip_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, mapping=_encode({"clip_id": clip_id, **fields}))
        pipe.expire(key, self.ttl_seconds)
        pipe.execute()

    def get(self, clip_id: str) -> dict[str, Any] | None:
        raw = self.client.hgetall(job_key(clip_id))
        if not raw:
            return None
        return _decode(raw)


def job_store() -> JobStore:
    """The job store of the current Flask app."""
    return JobStore(get_redis(), current_app.config["CLIPQUEUE"].job_ttl_seconds)


def _encode(record: dict[str, Any]) -> dict[str, str]:
    return {key: "" if value is None else str(value) for key, value in record.items()}


def _decode(raw: dict[bytes | str, bytes | str]) -> dict[str, Any]:
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
