"""Logging that keeps routine periodic work out of the worker's INFO log."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from celery import Celery

# The loggers of Celery's "Task x[id] received" and "Task x[id] succeeded in ..." lines (both
# pass the task's name in the record's ``data``), and of "Discarding revoked task: x[id]" (the
# name is its first argument), said of a periodic run that expired while the worker was away.
_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace", "celery.worker.request")


class PeriodicTaskChatterFilter(logging.Filter):
    """Drops INFO lines about routine runs of the given tasks; their warnings and errors pass."""

    def __init__(self, task_names: Iterable[str]) -> None:
        super().__init__()
        self.task_names = frozenset(task_names)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        data = getattr(record, "data", None)
        if isinstance(data, dict):
            return data.get("name") not in self.task_names
        args = record.args if isinstance(record.args, tuple) else ()
        return not (args and args[0] in self.task_names)


def quiet_periodic_task_logs(celery: Celery) -> None:
    """Keep the tasks of ``celery``'s beat schedule out of the INFO log (every 10-15 s otherwise)."""
    names = {entry["task"] for entry in (celery.conf.beat_schedule or {}).values()}
    for name in _TASK_LOGGERS:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, PeriodicTaskChatterFilter)]:
            logger.removeFilter(old)
        logger.addFilter(PeriodicTaskChatterFilter(names))
