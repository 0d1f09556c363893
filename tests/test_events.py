"""Live job events: SSE and WebSocket clients over real HTTP against the Procfile's ``web`` (gunicorn)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from contextlib import contextmanager

import pytest
import redis
import requests
import websocket

from clipqueue.jobs import JobStore
from clipqueue.keys import clip_events_key
from tests.services import free_port
from tests.test_scripts import procfile_web

# No worker fetches it in the tests that drive the job store themselves.
UNFETCHED_SOURCE = "http://127.0.0.1:9/vod/master.m3u8"
CLIP = {"start_time": 2.0, "end_time": 6.0, "quality": "360p"}
READ_TIMEOUT = 10


@contextmanager
def web(service, tmp_path, workers: int = 1):
    """The Procfile's ``web`` line for ``service``; yields its base URL."""
    port = free_port()
    with procfile_web(service.env, tmp_path / f"web-{port}.log", port, workers):
        base = f"http://127.0.0.1:{port}"
        yield base


class SSE:
    """A Server-Sent Events client: ``frames()`` yields each frame as a dict of its fields."""

    def __init__(self, url: str, last_event_id: str | None = None):
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        self.response = requests.get(url, headers=headers, stream=True, timeout=(5, READ_TIMEOUT))
        self.ended = False

    def frames(self):
        buffer = ""
        for chunk in self.response.iter_content(chunk_size=None, decode_unicode=True):
            buffer += chunk
            while "\n\n" in buffer:
                frame, buffer = buffer.split("\n\n", 1)
                fields: dict[str, str] = {}
                for line in frame.split("\n"):
                    name, _, value = line.partition(":")
                    fields[name or "comment"] = value.strip()
                yield fields
        self.ended = True

    def events(self, limit: int = 500, until=lambda event: False) -> list[dict]:
        """The events (``{"id", "data"}``) until the stream ends, ``limit`` of them, or ``until(event)``."""
        events = []
        for fields in self.frames():
            if "data" in fields:
                events.append({"id": fields["id"], "data": json.loads(fields["data"])})
                if len(events) >= limit or until(events[-1]):
                    break
        return events

    def close(self) -> None:
        self.response.close()


def websocket_messages(url: str) -> tuple[list[dict], int | None]:
    """Every message of a WebSocket until the server closes it, and the close code."""
    ws = websocket.create_connection(url, timeout=READ_TIMEOUT)
    messages, code = [], None
    try:
        for _ in range(500):
            opcode, data = ws.recv_data()
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
                break
            messages.append(json.loads(data))
    finally:
        ws.close()
    return messages, code


def create(base: str, vod_url: str) -> str:
    response = requests.post(f"{base}/api/v1/clips", json={"vod_url": vod_url, **CLIP}, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["clip_id"]


def store_of(service) -> JobStore:
    return JobStore(redis.Redis.from_url(service.env["REDIS_URL"]), 3600)


def assert_progress_only_rises_within_each_attempt(events: list[dict]) -> None:
    by_attempt: dict[int, list[int]] = {}
    for event in events:
        by_attempt.setdefault(event["data"]["attempts"], []).append(event["data"]["progress"])
    for attempt, progress in by_attempt.items():
        assert progress == sorted(progress), (attempt, progress)


@pytest.fixture
def service(service_factory):
    return service_factory(EVENTS_HEARTBEAT_SECONDS="0.5")


def test_sse_and_websocket_send_the_job_at_once_then_each_change_and_end_after_completed(
        service, master_url, tmp_path):
    service.start_worker()
    with web(service, tmp_path, workers=2) as base:
        clip_id = create(base, master_url)
        results: dict[str, object] = {}
        sse = SSE(f"{base}/api/v1/clips/{clip_id}/events")
        ws_thread = threading.Thread(target=lambda: results.update(
            ws=websocket_messages(f"ws://{base[len('http://'):]}/api/v1/clips/{clip_id}/ws")))
        ws_thread.start()
        events = sse.events()
        ws_thread.join(60)
    assert sse.ended, "the stream must end after the final state"
    assert events[0]["data"]["clip_id"] == clip_id and events[0]["data"]["vod_url"] == master_url
    assert events[-1]["data"]["status"] == "completed" and events[-1]["data"]["progress"] == 100
    assert [e["data"]["status"] for e in events[:-1]].count("completed") == 0
    ids = [tuple(map(int, e["id"].split("-"))) for e in events]
    assert ids == sorted(set(ids))
    stages = [e["data"].get("stage") for e in events]
    for stage in ("fetching", "cutting", "uploading", "finalizing"):
        assert stage in stages, stages
    assert_progress_only_rises_within_each_attempt(events)
    # Each change in the clip's stream reached the watcher that was there when it happened.
    recorded = redis.Redis.from_url(service.env["REDIS_URL"]).xrange(clip_events_key(clip_id))
    since_connect = [entry_id.decode() for entry_id, _ in recorded
                     if tuple(map(int, entry_id.decode().split("-"))) > ids[0]]
    assert [e["id"] for e in events[1:]] == since_connect

    messages, code = results["ws"]
    assert code == 1000
    assert messages[-1] == events[-1]
    sent = {event["id"]: event for event in events}
    # After its first message (the job as it was when it connected), the socket got the same events.
    for message in messages[1:]:
        if tuple(map(int, message["id"].split("-"))) > ids[0]:
            assert sent[message["id"]] == message


def test_reconnecting_with_last_event_id_receives_every_change_made_while_away(service, tmp_path):
    with web(service, tmp_path) as base:
        clip_id = create(base, UNFETCHED_SOURCE)
        sse = SSE(f"{base}/api/v1/clips/{clip_id}/events")
        first = sse.events(limit=1)
        sse.close()
        assert first[0]["data"]["status"] == "queued"
        store = store_of(service)
        store.update(clip_id, status="running", attempts=1, stage="fetching", progress=0)
        store.update(clip_id, progress=30)
        store.update(clip_id, stage="cutting", progress=65)
        store.update(clip_id, status="completed", stage="finalizing", progress=100)

        resumed = SSE(f"{base}/api/v1/clips/{clip_id}/events", last_event_id=first[0]["id"])
        missed = resumed.events()
        messages, code = websocket_messages(
            f"ws://{base[len('http://'):]}/api/v1/clips/{clip_id}/ws?last_event_id={first[0]['id']}")
    assert [(e["data"]["stage"], e["data"]["progress"]) for e in missed] == [
        ("fetching", 0), ("fetching", 30), ("cutting", 65), ("finalizing", 100)]
    assert resumed.ended
    assert messages == missed and code == 1000


def test_stream_of_every_clip_carries_each_clips_changes_and_resumes_after_last_event_id(service, tmp_path):
    with web(service, tmp_path) as base:
        dashboard = SSE(f"{base}/api/v1/events")
        frames = dashboard.frames()
        assert "retry" in next(frames)  # subscribed: every change from here on reaches it
        first, second = create(base, UNFETCHED_SOURCE), create(base, UNFETCHED_SOURCE)
        store_of(service).update(second, status="running", attempts=1, stage="fetching", progress=10)
        seen = dashboard.events(until=lambda e: (e["data"]["clip_id"], e["data"]["progress"]) == (second, 10))
        dashboard.close()
        store_of(service).update(first, status="failed", error="gone")

        resumed = SSE(f"{base}/api/v1/events", last_event_id=seen[0]["id"])
        later = resumed.events(until=lambda e: e["data"]["status"] == "failed")
        resumed.close()
    assert [(e["data"]["clip_id"], e["data"]["status"]) for e in seen] == [
        (first, "queued"), (second, "queued"), (second, "running")]
    assert [(e["data"]["clip_id"], e["data"]["status"]) for e in later] == [
        (second, "queued"), (second, "running"), (first, "failed")]


def test_idle_stream_sends_ping_comments_and_unknown_clips_are_404_json_before_any_stream(
        service, tmp_path):
    with web(service, tmp_path) as base:
        clip_id = create(base, UNFETCHED_SOURCE)
        sse = SSE(f"{base}/api/v1/clips/{clip_id}/events")
        began, pings = time.monotonic(), 0
        for fields in sse.frames():
            pings += "comment" in fields and fields["comment"] == "ping"
            if pings >= 2 or time.monotonic() - began > 5:
                break
        sse.close()
        unknown = str(uuid.uuid4())
        answers = [requests.get(f"{base}/api/v1/clips/{name}/events", timeout=10)
                   for name in (unknown, "not-a-clip")]
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(f"ws://{base[len('http://'):]}/api/v1/clips/{unknown}/ws", timeout=10)
    assert pings >= 2
    for answer in answers:
        assert answer.status_code == 404 and answer.headers["Content-Type"] == "application/json"
        assert answer.json()["error"]["code"] == "not_found"
    assert refused.value.status_code == 404


def test_progress_never_goes_down_within_an_attempt_and_starts_again_with_the_next(redis_url):
    store = JobStore(redis.Redis.from_url(redis_url), 7200)
    clip_id = str(uuid.uuid4())
    store.create(clip_id, {"vod_url": UNFETCHED_SOURCE})
    store.update(clip_id, status="running", attempts=1, stage="fetching", progress=40)
    store.update(clip_id, stage="cutting", progress=20)
    assert store.get(clip_id)["progress"] == 40
    store.update(clip_id, status="retrying", error="timeout")
    store.update(clip_id, status="running", attempts=2, stage="fetching", progress=0)
    assert store.get(clip_id)["progress"] == 0
    store.update(clip_id, status="queued", progress=0)
    assert store.get(clip_id)["progress"] == 0


def test_a_finished_jobs_event_stream_is_kept_an_hour_while_its_metadata_keeps_the_job_ttl(redis_url):
    client = redis.Redis.from_url(redis_url)
    store = JobStore(client, 7 * 24 * 3600)
    clip_id = str(uuid.uuid4())
    store.create(clip_id, {"vod_url": UNFETCHED_SOURCE})
    assert client.ttl(clip_events_key(clip_id)) > 3600
    store.update(clip_id, status="completed", progress=100)
    assert 0 < client.ttl(clip_events_key(clip_id)) <= 3600
    assert client.ttl(f"clip_extraction_job:{clip_id}") > 3600
    assert client.xlen(clip_events_key(clip_id)) == 2
