"""Worker liveness, checked without loading the app: a heartbeat file per Celery worker.

Each Celery worker's main process touches ``{WORKER_HEARTBEAT_DIR}/{nodename}.heartbeat``
every ``WORKER_HEARTBEAT_SECONDS`` from a thread, and removes it when it stops
cleanly. ``clipqueue worker-health`` (a container's liveness probe) reads the
files' ages and exits 0 when every one is fresh, 1 when one is stale or none
exists: it costs a directory listing, not an app start.

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

from celery import bootsteps

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

    def start(self, worker) -> None:
        settings = worker.app.flask_app.config["CLIPQUEUE"]
        folder = heartbeat_dir(settings.worker_heartbeat_dir)
        self.path = heartbeat_path(folder, worker.hostname)
        interval = settings.worker_heartbeat_seconds
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

    shutdown = stop
