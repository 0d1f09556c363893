"""SENTRY_DSN: the real sentry-sdk in real web and worker processes reports to a local Sentry endpoint."""

from __future__ import annotations

import gzip
import json
import sqlite3
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests.services import free_port, wait_until
from tests.test_scripts import _answers, procfile_process


def parse_envelope(body: bytes) -> list[tuple[dict, bytes]]:
    """The items of a Sentry envelope: a header line, then per item a header line and its payload."""
    items = []
    _, _, rest = body.partition(b"\n")
    while rest.strip():
        header_line, _, rest = rest.partition(b"\n")
        header = json.loads(header_line)
        if "length" in header:
            payload, rest = rest[:header["length"]], rest[header["length"] + 1:]
        else:
            payload, _, rest = rest.partition(b"\n")
        items.append((header, payload))
    return items


class SentryServer:
    """A loopback HTTP server that takes Sentry envelopes (as Sentry's ingest does) and keeps their events."""

    def __init__(self):
        self.events: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "br":
                    import brotli

                    body = brotli.decompress(body)
                with server.lock:
                    server.events.extend(json.loads(payload) for header, payload in parse_envelope(body)
                                         if header.get("type") == "event")
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    @property
    def dsn(self) -> str:
        return f"http://public-key@127.0.0.1:{self.http.server_port}/1"

    def events_tagged(self, clip_id: str) -> list[dict]:
        with self.lock:
            return [event for event in self.events if dict(_tags(event)).get("clip_id") == clip_id]

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def _tags(event: dict):
    tags = event.get("tags") or {}
    return tags.items() if isinstance(tags, dict) else [tuple(pair) for pair in tags]


def exception_types(event: dict) -> list[str]:
    return [value.get("type") for value in (event.get("exception") or {}).get("values", [])]


@pytest.fixture
def sentry():
    server = SentryServer()
    yield server
    server.stop()


def test_worker_job_failing_with_an_unexpected_error_reports_it_tagged_with_its_clip(
        service_factory, master_url, sentry, tmp_path):
    service = service_factory()
    # A scratch folder that does not exist: an operator's mistake no retry mends.
    service.start_worker(SENTRY_DSN=sentry.dsn, SCRATCH_DIR=str(tmp_path / "no-such-folder"))
    clip_id = service.create_clip(vod_url=master_url, start_time=2.0, end_time=6.0).get_json()["clip_id"]
    assert service.wait_for_clip(clip_id)["status"] == "failed"

    events = wait_until(lambda: [e for e in sentry.events_tagged(clip_id) if exception_types(e)], 30,
                        what="the worker's event to reach Sentry")
    assert "FileNotFoundError" in exception_types(events[0])
    assert events[0]["platform"] == "python"


def test_web_500_reports_the_error_tagged_with_the_clip_it_was_about(service_factory, sentry, tmp_path):
    service = service_factory()
    body = {"vod_url": "http://127.0.0.1:9/v.m3u8", "start_time": 1, "end_time": 5}
    clip_id = service.create_clip(**body).get_json()["clip_id"]
    # A row the code cannot read: an unexpected error, not a 4xx nor an outage.
    database = service.env["DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE clips SET created_at = 'not a time' WHERE id = ?",
                           (uuid.UUID(clip_id).hex,))

    port = free_port()
    env = {**service.env, "SENTRY_DSN": sentry.dsn, "PORT": str(port), "WEB_ADDRESS": "127.0.0.1",
           "WEB_CONCURRENCY": "1"}
    with procfile_process("web", env, tmp_path / "web.log") as web:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(f"{base}/api/v1/openapi.json") or web.poll() is not None, 60,
                   what="web to answer")
        response = requests.get(f"{base}/api/v1/clips/{clip_id}", timeout=10)
        assert response.status_code == 500, response.text
        assert response.json()["error"]["code"] == "internal_error"
        events = wait_until(lambda: sentry.events_tagged(clip_id), 30, what="web's event to reach Sentry")
    assert any(exception_types(event) for event in events), events
    assert all(event.get("user", {}).get("ip_address") is None for event in events)
