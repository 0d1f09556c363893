"""Worker liveness, checked without loading the app: a heartbeat file per Celery worker.

Each Celery worker's main process touches ``{WORKER_HEARTBEAT_DIR}/{nodename}.heartbeat``
every ``WORKER_HEARTBEAT_SECONDS`` from a thread, and removes it when it stops
cleanly. ``clipqueue worker-health`` (a container's liveness probe) reads the
files' ages and exits 0 when every one is fresh, 1 when one is stale or none
exists: it costs a directory listing, not an app start.

The same beat keeps ``clipqueue:worker-alive:{nodename}`` in Redis (expiring
after ``WORKER_HEARTBEAT_MAX_AGE_SECONDS``), and a worker that receives a clip
job writes its name into the job's metadata (``held_by``). A job message a
dead worker held unacknowledged (reserved, or waiting for a retry's
countdown) would otherwise wait for the visibility timeout; the janitor sees
its holder is gone and queues it again.

The heartbeat proves the worker's main process lives (not killed, not frozen);
it deliberately keeps beating while Redis is down, so a broker outage does not
get every worker restarted and its running jobs killed: the worker reconnects
by itself. ``clipqueue worker`` runs two Celery workers (``jobs@`` and
``control@``), so a healthy host has two files.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from pathlib import Path

import redis
from celery import bootsteps
from celery.signals import task_received

from clipqueue.keys import job_key, worker_alive_key

log = logging.getLogger(__name__)

SUFFIX = ".heartbeat"


def heartbeat_dir(configured: str) -> Path:
    """``WORKER_HEARTBEAT_DIR``, or a folder in the system temporary folder when it is empty."""
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "clipqueue-worker-heartbeats"


def heartbeat_path(folder: Path, nodename: str) -> Path:
    return folder / f"{nodename.replace('/', '_')}{SUFFIX}"


def check(folder: Path, max_age: float, now: float | None = None) -> tuple[bool, list[str]]:
    """Whether every worker that beats into ``folder`` did so within ``max_age`` s; one line per worker."""
    now = time.time() if now is None else now
    try:
        files = sorted(folder.glob(f"*{SUFFIX}"))
    except OSError as exc:
        return False, [f"cannot read {folder}: {exc}"]
    if not files:
        return False, [f"no worker heartbeat in {folder}"]
    healthy = True
    lines = []
    for path in files:
        try:
            age = now - path.stat().st_mtime
        except OSError:
            continue  # removed by a worker that stopped just now
        fresh = age <= max_age
        healthy &= fresh
        state = "alive" if fresh else f"STALE (more than {max_age:g} s)"
        lines.append(f"{path.name[:-len(SUFFIX)]}: last heartbeat {max(age, 0.0):.1f} s ago, {state}")
    return healthy and bool(lines), lines or [f"no worker heartbeat in {folder}"]


class WorkerHeartbeat(bootsteps.StartStopStep):
    """A worker bootstep: beat from a thread of the main process while the worker runs."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.path: Path | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._redis: redis.Redis | None = None
        self._alive_key = ""
        self._alive_seconds = 0

    def start(self, worker) -> None:
        settings = worker.app.flask_app.config["CLIPQUEUE"]
        folder = heartbeat_dir(settings.worker_heartbeat_dir)
        self.path = heartbeat_path(folder, worker.hostname)
        interval = settings.worker_heartbeat_seconds
        self._redis = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
        self._alive_key = worker_alive_key(worker.hostname)
        self._alive_seconds = max(1, int(settings.worker_heartbeat_max_age_seconds))
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._touch()
        except OSError as exc:
            log.warning("worker heartbeat disabled: cannot write %s: %s", self.path, exc)
            return
        self._thread = threading.Thread(target=self._run, args=(interval,), name="worker-heartbeat",
                                        daemon=True)
        self._thread.start()

    def _touch(self) -> None:
        self.path.touch()
        os.utime(self.path)
        try:
            self._redis.set(self._alive_key, "1", ex=self._alive_seconds)
        except redis.RedisError as exc:
            log.debug("worker presence not written to Redis: %s", exc)

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self._touch()
            except OSError as exc:
                log.warning("worker heartbeat %s not written: %s", self.path, exc)

    def stop(self, worker) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            try:
                self.path.unlink()
            except OSError:
                pass
            try:
                self._redis.delete(self._alive_key)
            except redis.RedisError:
                pass

    shutdown = stop


# Write ``held_by`` only into metadata that exists: a partial record would hide a lost one.
_HELD_BY = """
if redis.call('exists', KEYS[1]) == 1 then
  redis.call('hset', KEYS[1], 'held_by', ARGV[1])
end
"""


@task_received.connect
def _note_holder(sender=None, request=None, **_kwargs) -> None:
    """A worker took a clip job's message: name it in the job's metadata (see the module's text)."""
    from clipqueue.queue import PROCESS_TASK

    flask_app = getattr(getattr(sender, "app", None), "flask_app", None)
    if request is None or request.name != PROCESS_TASK or flask_app is None:
        return
    clip_id = (request.kwargs or {}).get("clip_id")
    if not clip_id:
        return
    try:
        flask_app.extensions["clipqueue.redis"].eval(_HELD_BY, 1, job_key(clip_id), sender.hostname)
    except redis.RedisError as exc:
        log.debug("job %s: holder not written: %s", clip_id, exc)


def live_workers(client: redis.Redis, names: set[str]) -> set[str]:
    """Those of the Celery workers ``names`` whose presence key is still in Redis."""
    ordered = sorted(names)
    pipe = client.pipeline(transaction=False)
    for name in ordered:
        pipe.exists(worker_alive_key(name))
    return {name for name, present in zip(ordered, pipe.execute()) if present}
