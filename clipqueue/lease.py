"""Per-job leases: a running job holds one in Redis and renews it from a heartbeat thread.

A delivery that finds the lease held by someone else is a duplicate of a job
that is still running and does nothing. A lease that expired means its worker
died: the janitor re-queues the job. A worker whose lease was lost anyway (it
stalled past the TTL) stops at its next :meth:`JobLease.check`, so two
deliveries never both finish the job.

The heartbeat also looks for the clip's cancel flag (set by
:func:`clipqueue.clips.mark_canceled`) every ``cancel_poll_seconds``: a
canceled job runs ``on_cancel`` at once (killing its FFmpeg children) and
stops at its next check with ``JobCanceled``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

import redis

from clipqueue.exceptions import JobCanceled, LeaseLost
from clipqueue.jobs import now_iso
from clipqueue.keys import cancel_key, job_key, lease_key

log = logging.getLogger(__name__)

# Renew or release only a lease we still hold (compare the token, then act).
# A lease that vanished (Redis restarted without persistence) is taken again.
# Each renewal also stamps the job's metadata with ``heartbeat_at`` (if it still
# exists): after the worker is gone, its last beat next to ``started_at`` tells
# a job killed at its hard time limit from a worker lost mid-job.
_RENEW = """
local holder = redis.call('get', KEYS[1])
if holder and holder ~= ARGV[1] then
  return 0
end
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.call('exists', KEYS[2]) == 1 then
  redis.call('hset', KEYS[2], 'heartbeat_at', ARGV[3])
end
return 1
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class JobLease:
    """The lease of one clip's job, held while a worker runs it."""

    def __init__(self, client: redis.Redis, clip_id: str, ttl_seconds: float, owner: str,
                 cancel_poll_seconds: float | None = None, on_cancel: Callable[[], object] | None = None):
        self.client = client
        self.key = lease_key(clip_id)
        self.cancel_key = cancel_key(clip_id)
        self.job_key = job_key(clip_id)
        self.ttl_ms = int(ttl_seconds * 1000)
        self.token = f"{owner}:{uuid.uuid4().hex}"
        self.lost = threading.Event()
        self.canceled = threading.Event()
        self.cancel_poll_seconds = cancel_poll_seconds
        self.on_cancel = on_cancel
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        """Take the lease unless another delivery holds it."""
        return bool(self.client.set(self.key, self.token, nx=True, px=self.ttl_ms))

    def renew(self) -> bool:
        return bool(self.client.eval(_RENEW, 2, self.key, self.job_key, self.token, self.ttl_ms, now_iso()))

    def check(self, renew: bool = False) -> None:
        """Raise ``LeaseLost`` if another delivery may run this job now.

        With ``renew``, ask Redis now rather than trust the heartbeat's last
        answer (before a step that must not run twice); if Redis cannot be
        reached, the heartbeat's answer stands. Raises ``JobCanceled`` once
        the clip was canceled.
        """
        if renew:
            self.look_for_cancel()
        if self.canceled.is_set():
            raise JobCanceled("the clip was canceled")
        if renew and not self.lost.is_set():
            try:
                if not self.renew():
                    self.lost.set()
            except redis.RedisError as exc:
                log.warning("could not renew %s: %s", self.key, exc)
        if self.lost.is_set():
            raise LeaseLost(f"the job's lease ({self.key}) was lost; another delivery runs it")

    def release(self) -> None:
        try:
            self.client.eval(_RELEASE, 1, self.key, self.token)
        except redis.RedisError as exc:
            # It expires by itself; the janitor never re-queues a finished job.
            log.warning("could not release %s: %s", self.key, exc)

    def look_for_cancel(self) -> bool:
        """Read the clip's cancel flag and run ``on_cancel`` once it is set; True once canceled.

        Once canceled, every look runs ``on_cancel`` again: a child the job
        started just after the first one is stopped too.
        """
        if self.canceled.is_set():
            if self.on_cancel is not None:
                self.on_cancel()
            return True
        try:
            if not self.client.exists(self.cancel_key):
                return False
        except redis.RedisError as exc:
            log.debug("could not read %s: %s", self.cancel_key, exc)
            return False
        self.canceled.set()
        log.info("%s: the clip was canceled; stopping its job", self.key)
        if self.on_cancel is not None:
            self.on_cancel()
        return True

    def _beat(self) -> None:
        renew_every = self.ttl_ms / 3000
        interval = min(renew_every, self.cancel_poll_seconds) if self.cancel_poll_seconds else renew_every
        next_renew = time.monotonic() + renew_every
        while not self._stop.wait(interval):
            if self.cancel_poll_seconds:
                self.look_for_cancel()
            if time.monotonic() < next_renew:
                continue
            next_renew = time.monotonic() + renew_every
            try:
                if not self.renew():
                    log.warning("lease %s was lost; another delivery may run this job", self.key)
                    self.lost.set()
                    return
            except redis.RedisError as exc:
                # Redis restarting: keep trying until the lease would have expired anyway.
                log.warning("lease heartbeat for %s failed: %s", self.key, exc)

    def __enter__(self) -> JobLease:
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.key}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.release()
