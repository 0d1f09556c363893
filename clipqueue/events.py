"""Job change events: published once where job metadata changes, fanned out by each web process.

Every write of a job's metadata (:class:`clipqueue.jobs.JobStore`) runs one
Lua script that updates the hash and appends the whole record, as it now
is, to two Redis streams in the same step: ``clip_extraction_events`` (every
clip's changes) and ``clip_extraction_events:{clip_id}`` (that clip's, with
the job's TTL, cut to an hour once the job is final), under the same entry
id. So an event is never lost between the write and its publication, and
an event id (an SSE ``id:``) names the same moment in both streams.

Why streams rather than pub/sub: a pub/sub message reaches only the
subscribers connected at that instant, so a watcher that reconnects (a
proxy timeout, a web process restarting, a laptop waking up) would miss
what happened meanwhile; a stream keeps the entries (``MAXLEN ~``) and a
client's ``Last-Event-ID`` is where to read on from. Streams also give a
total order and cost one ``XADD`` per change.

Each web process runs one :class:`EventHub`: a single reader (a thread, a
greenlet under gevent) blocking on ``XREAD`` of the global stream, handing
each entry to the watchers of that clip and to the watchers of every clip.
A thousand watchers cost one Redis connection per web process, not a
thousand; Redis is read for a watcher only when it starts (its first
snapshot or the entries it missed).
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import redis

from clipqueue import defaults
from clipqueue.keys import EVENTS_STREAM, clip_events_key, job_key

log = logging.getLogger(__name__)

# Job statuses after which a clip's stream ends (``canceled`` arrives with cancel).
FINAL_STATUSES = frozenset({"completed", "failed", "canceled"})

# KEYS: job hash, clip stream, global stream. ARGV: ttl, replace ("1": start a fresh record),
# clip stream maxlen, global stream maxlen, clip stream ttl once final, then field, value pairs.
# Progress never goes down within an attempt: a lower value is kept at the higher one unless the
# write starts an attempt (it sets ``attempts``) or queues the job again.
_PUBLISH_SCRIPT = """
local ttl = tonumber(ARGV[1])
local fresh = ARGV[2] == '1'
if fresh then redis.call('DEL', KEYS[1]) end
for i = 6, #ARGV, 2 do
  if ARGV[i] == 'attempts' or (ARGV[i] == 'status' and ARGV[i + 1] == 'queued') then fresh = true end
end
local fields = {}
for i = 6, #ARGV, 2 do
  local value = ARGV[i + 1]
  if ARGV[i] == 'progress' and not fresh then
    local old = redis.call('HGET', KEYS[1], 'progress')
    if old and tonumber(old) and tonumber(value) and tonumber(old) > tonumber(value) then value = old end
  end
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = value
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ttl)
local record = cjson.encode(redis.call('HGETALL', KEYS[1]))
local clip_id = redis.call('HGET', KEYS[1], 'clip_id') or ''
local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'clip_id', clip_id, 'job', record)
local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], id, 'job', record)
if type(added) == 'table' and added.err then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'job', record)
end
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'completed' or status == 'failed' or status == 'canceled' then
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[5]))
else
  redis.call('EXPIRE', KEYS[2], ttl)
end
return id
"""

_EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


def write_job(client: redis.Redis, clip_id: str, fields: dict[str, str], ttl_seconds: int,
              fresh: bool = False) -> str:
    """Write ``fields`` into the job's hash and publish the whole record; return the event id.

    With ``fresh`` the earlier record is dropped first (a job queued anew).
    """
    finished_ttl = min(ttl_seconds, defaults.CLIP_EVENTS_FINISHED_TTL_SECONDS)
    args: list[Any] = [ttl_seconds, "1" if fresh else "0", defaults.CLIP_EVENTS_MAXLEN,
                       defaults.EVENTS_STREAM_MAXLEN, finished_ttl]
    for name, value in fields.items():
        args += [name, value]
    # EVALSHA, loading the script once per Redis server (again after a restart).
    publish = client.register_script(_PUBLISH_SCRIPT)
    event_id = publish(keys=[job_key(clip_id), clip_events_key(clip_id), EVENTS_STREAM], args=args)
    return event_id.decode() if isinstance(event_id, bytes) else event_id


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _id_key(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


def valid_event_id(value: str | None) -> str | None:
    """``value`` if it is a stream entry id a client may resume from, else None."""
    value = (value or "").strip()
    return value if _EVENT_ID.match(value) else None


@dataclass(frozen=True)
class Event:
    """One change of a job: the stream entry id and the job's metadata after it."""

    id: str
    job: dict[str, Any]

    @property
    def final(self) -> bool:
        return self.job.get("status") in FINAL_STATUSES

    # Cached: one event goes to many watchers, and is encoded once per process.
    @cached_property
    def sse(self) -> str:
        """The event as Server-Sent Events frame it."""
        return f"id: {self.id}\ndata: {json.dumps(self.job, separators=(',', ':'))}\n\n"

    @cached_property
    def message(self) -> str:
        """The event as one WebSocket text message."""
        return json.dumps({"id": self.id, "data": self.job}, separators=(",", ":"))


def _entry_event(entry_id: bytes | str, fields: dict) -> Event:
    from clipqueue.jobs import decode_record

    flat = json.loads(_text(fields.get(b"job", fields.get("job"))))
    return Event(_text(entry_id), decode_record(dict(zip(flat[0::2], flat[1::2]))))


# A watcher that falls this far behind is dropped; it reconnects with Last-Event-ID and misses nothing.
_WATCHER_BACKLOG = 1000
_CLOSED = object()


@dataclass(eq=False)
class Subscription:
    """What one watcher receives from the hub: the clip it watches (None: every clip) and its queue."""

    clip_id: str | None
    queue: queue.Queue = field(default_factory=lambda: queue.Queue(_WATCHER_BACKLOG))

    def get(self, timeout: float):
        """The next event, None after ``timeout`` s without one, or ``_CLOSED`` if the hub dropped it."""
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None


class EventHub:
    """One reader of the global stream per process, fanning its entries out to the watchers."""

    BLOCK_MS = 5000

    def __init__(self, redis_url: str):
        # Its own connection: a blocking XREAD must outlast the app client's socket timeout.
        self.client = redis.Redis.from_url(redis_url, socket_connect_timeout=2,
                                           socket_timeout=self.BLOCK_MS / 1000 + 5)
        self._lock = threading.Lock()
        self._watchers: dict[str | None, set[Subscription]] = {}
        self._thread: threading.Thread | None = None
        self._position: str | None = None

    @property
    def watchers(self) -> int:
        with self._lock:
            return sum(len(subs) for subs in self._watchers.values())

    def subscribe(self, clip_id: str | None) -> Subscription:
        """Start receiving ``clip_id``'s events (None: every clip's), from now on."""
        self._start()
        sub = Subscription(clip_id)
        with self._lock:
            self._watchers.setdefault(clip_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._watchers.get(sub.clip_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._watchers[sub.clip_id]

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            # Where to read from is fixed before the first watcher subscribes: nothing after it is missed.
            if self._position is None:
                self._find_position()
            self._thread = threading.Thread(target=self._run, name="event-hub", daemon=True)
            self._thread.start()

    def _find_position(self) -> None:
        try:
            last = self.client.xrevrange(EVENTS_STREAM, count=1)
            self._position = _text(last[0][0]) if last else "0-0"
        except redis.RedisError as exc:
            log.warning("event hub: cannot read the event stream yet: %s", exc)

    def _run(self) -> None:
        while True:
            if self._position is None:
                self._find_position()
                if self._position is None:
                    time.sleep(1)
                    continue
            try:
                answer = self.client.xread({EVENTS_STREAM: self._position}, count=1000, block=self.BLOCK_MS)
            except redis.RedisError as exc:
                log.warning("event hub: reading the event stream failed, again in 1 s: %s", exc)
                time.sleep(1)
                continue
            for _stream, entries in answer or ():
                for entry_id, fields in entries:
                    self._position = _text(entry_id)
                    try:
                        event = _entry_event(entry_id, fields)
                    except (ValueError, TypeError, AttributeError):
                        log.warning("event hub: unreadable entry %s skipped", self._position)
                        continue
                    self._dispatch(event)

    def _dispatch(self, event: Event) -> None:
        with self._lock:
            subs = list(self._watchers.get(event.job.get("clip_id"), ())) + list(self._watchers.get(None, ()))
        for sub in subs:
            try:
                sub.queue.put_nowait(event)
            except queue.Full:
                self.unsubscribe(sub)
                _drain_and_close(sub)


def _drain_and_close(sub: Subscription) -> None:
    """Tell a watcher that fell behind to end (its client resumes from its Last-Event-ID)."""
    while True:
        try:
            sub.queue.get_nowait()
        except queue.Empty:
            break
    sub.queue.put_nowait(_CLOSED)


def clip_start(client: redis.Redis, clip_id: str, last_event_id: str | None) -> list[Event]:
    """What a new watcher of ``clip_id`` gets first: the events after ``last_event_id``, or the job as it is.

    Without ``last_event_id`` (or when the entries after it are gone) that is
    the current record, carrying the id of the clip's latest event.
    """
    pipe = client.pipeline(transaction=True)
    pipe.hgetall(job_key(clip_id))
    pipe.xrevrange(clip_events_key(clip_id), count=1)
    if last_event_id:
        pipe.xrange(clip_events_key(clip_id), min=f"({last_event_id}", count=defaults.CLIP_EVENTS_MAXLEN)
    answers = pipe.execute()
    raw, latest = answers[0], answers[1]
    if last_event_id:
        missed = [_entry_event(entry_id, fields) for entry_id, fields in answers[2]]
        if missed or not latest or _id_key(_text(latest[0][0])) <= _id_key(last_event_id):
            return missed
    if not raw:
        return []
    from clipqueue.jobs import decode_record

    return [Event(_text(latest[0][0]) if latest else "0-0", decode_record(raw))]


def global_start(client: redis.Redis, last_event_id: str | None) -> list[Event]:
    """The events of every clip after ``last_event_id`` (none without one: a dashboard starts from now)."""
    if not last_event_id:
        return []
    events: list[Event] = []
    position = last_event_id
    for _page in range(defaults.EVENTS_STREAM_MAXLEN // 1000 + 1):
        entries = client.xrange(EVENTS_STREAM, min=f"({position}", count=1000)
        if not entries:
            break
        events += [_entry_event(entry_id, fields) for entry_id, fields in entries]
        position = events[-1].id
    return events


def watch(hub: EventHub, client: redis.Redis, clip_id: str | None, last_event_id: str | None,
          heartbeat: float) -> tuple[Subscription, Iterator[Event | None]]:
    """Subscribe a watcher now; return its subscription and its events.

    The events are None after ``heartbeat`` s of silence; one clip's end
    after its final state. The watcher subscribes before it reads its start
    and skips hub events it already sent: nothing between the two is lost or
    sent twice. Whoever holds the subscription unsubscribes it when the
    connection ends (the events do on their own once iterated to the end or closed).
    """
    sub = hub.subscribe(clip_id)
    return sub, _watch(hub, sub, client, clip_id, last_event_id, heartbeat)


def _watch(hub: EventHub, sub: Subscription, client: redis.Redis, clip_id: str | None,
           last_event_id: str | None, heartbeat: float) -> Iterator[Event | None]:
    try:
        start = clip_start(client, clip_id, last_event_id) if clip_id else global_start(client, last_event_id)
        sent = _id_key(last_event_id) if last_event_id else (0, 0)
        for event in start:
            sent = max(sent, _id_key(event.id))
            yield event
            if clip_id and event.final:
                return
        while True:
            event = sub.get(heartbeat)
            if event is _CLOSED:
                return
            if event is None:
                yield None
                continue
            if _id_key(event.id) <= sent:
                continue
            sent = _id_key(event.id)
            yield event
            if clip_id and event.final:
                return
    finally:
        hub.unsubscribe(sub)


def event_hub(app) -> EventHub:
    """The app's (this process's) event hub, made on first use."""
    hub = app.extensions.get("clipqueue.events")
    if hub is None:
        hub = app.extensions.setdefault("clipqueue.events", EventHub(app.config["CLIPQUEUE"].redis_url))
    return hub
