"""The Procfile's ``worker``: clip jobs in a prefork pool, and control work in slots of its own beside it.

A clip job may hold a pool slot for minutes. Finalizing and beat's
maintenance (janitor, outbox sweep) must not wait behind such jobs, or a
saturated host delays every clip's ``ready`` and the detection of lost
workers by as long as a job runs. So the worker is two Celery workers under
one process: one takes ``clip_extraction_jobs`` with ``WORKER_CONCURRENCY``
processes, the other takes ``clipqueue_control`` with a few threads (its
tasks are short and wait on the database and Redis, not the CPU).

Signals are passed to both; when either stops, the other is stopped too and
the exit status is the first one's, so a supervisor sees one process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from clipqueue.keys import CONTROL_QUEUE, JOB_QUEUE

CONTROL_THREADS = 4
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)


def commands(concurrency: int, loglevel: str) -> list[list[str]]:
    """The two ``celery worker`` command lines."""
    base = [sys.executable, "-m", "celery", "-A", "clipqueue.make_celery", "worker", "--loglevel", loglevel]
    return [
        [*base, "--queues", JOB_QUEUE, "--concurrency", str(concurrency), "--pool", "prefork",
         "--hostname", "jobs@%h"],
        [*base, "--queues", CONTROL_QUEUE, "--concurrency", str(CONTROL_THREADS), "--pool", "threads",
         "--hostname", "control@%h"],
    ]


def run(concurrency: int, loglevel: str = "INFO") -> int:
    """Run both workers until one of them stops; return its exit status."""
    children = [subprocess.Popen(command) for command in commands(concurrency, loglevel)]

    def forward(signum, _frame) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for signum in _FORWARDED:
        signal.signal(signum, forward)
    pid, status = os.wait()
    first = next(child for child in children if child.pid == pid)
    first.returncode = os.waitstatus_to_exitcode(status)
    for child in children:
        if child is not first and child.poll() is None:
            child.terminate()  # warm shutdown: it finishes what it runs
            child.wait()
    return first.returncode
