"""A loopback static HTTP server that can behave like a distant, imperfect CDN.

HTTP/1.1 keep-alive, single byte ranges (206), per-request latency,
per-connection and total bandwidth caps, injected failures (503s, 404s,
stalls) and a count of requests and bytes served. Used by tests, the
benchmark and the README demo.
"""

from __future__ import annotations

import json
import mimetypes
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

CHUNK_BYTES = 64 * 1024
STATS_PATH = "/__stats__"  # GET: the counters as JSON; "?reset" starts them again
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")

mimetypes.add_type("application/vnd.apple.mpegurl", ".m3u8")
mimetypes.add_type("video/mp2t", ".ts")
mimetypes.add_type("video/iso.segment", ".m4s")


@dataclass
class Behaviour:
    """How the server misbehaves; fields may be changed while it runs.

    Paths are URL paths without the query string, e.g. ``/720p/3.ts``.
    """

    latency: float = 0.0  # seconds before each response, like a round trip to a distant CDN
    connection_bandwidth: float | None = None  # bytes/s per connection
    total_bandwidth: float | None = None  # bytes/s over all connections
    fail_first: dict[str, int] = field(default_factory=dict)  # path -> answer fail_status this many times
    fail_status: int = 503
    not_found: set[str] = field(default_factory=set)
    forbidden: set[str] = field(default_factory=set)  # answered 403, as Twitch does for gone "-unmuted" ones
    stall: dict[str, float] = field(default_factory=dict)  # path -> seconds to hang after the headers
    ranges: bool = True  # honour Range requests


class Stats:
    """Requests and bytes served, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.requests = 0
            self.bytes_sent = 0
            self.connections = 0
            self.by_path: Counter[str] = Counter()
            self.statuses: Counter[int] = Counter()

    def snapshot(self, reset: bool = False) -> dict[str, int]:
        """The totals; with ``reset``, counting starts again from zero."""
        with self._lock:
            totals = {"requests": self.requests, "bytes_sent": self.bytes_sent, "connections": self.connections}
        if reset:
            self.reset()
        return totals

    def record(self, path: str, status: int) -> None:
        with self._lock:
            self.requests += 1
            self.by_path[path] += 1
            self.statuses[status] += 1

    def add_bytes(self, count: int) -> None:
        with self._lock:
            self.bytes_sent += count

    def add_connection(self) -> None:
        with self._lock:
            self.connections += 1


class _TokenBucket:
    """Caps throughput shared by all connections."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next_free = time.monotonic()

    def take(self, count: int, rate: float) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_free)
            self._next_free = start + count / rate
            wait = self._next_free - now
        if wait > 0:
            time.sleep(wait)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def setup(self) -> None:
        super().setup()
        self.server.stats.add_connection()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        pass

    def _send_stats(self, reset: bool) -> None:
        """The counters as JSON (not counted themselves), for a benchmark running the server in another process."""
        body = json.dumps(self.server.stats.snapshot(reset)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def _respond(self, send_body: bool) -> None:
        behaviour = self.server.behaviour
        path = unquote(urlsplit(self.path).path)
        if path == STATS_PATH:
            return self._send_stats(reset="reset" in urlsplit(self.path).query)
        if behaviour.latency:
            time.sleep(behaviour.latency)
        if path in behaviour.not_found:
            return self._error(path, 404)
        if path in behaviour.forbidden:
            return self._error(path, 403)
        with self.server.lock:
            remaining = behaviour.fail_first.get(path, 0)
            if remaining > 0:
                behaviour.fail_first[path] = remaining - 1
        if remaining > 0:
            return self._error(path, behaviour.fail_status)
        file = self.server.resolve(path)
        if file is None:
            return self._error(path, 404)
        size = file.stat().st_size
        start, end, status = 0, size - 1, 200
        header = self.headers.get("Range")
        if header and behaviour.ranges:
            match = _RANGE.match(header.strip())
            if not match or (not match.group(1) and not match.group(2)):
                return self._error(path, 416, size)
            if match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            else:
                start = max(0, size - int(match.group(2)))
            if start >= size or start > end:
                return self._error(path, 416, size)
            status = 206
        length = end - start + 1
        self.server.stats.record(path, status)
        self.send_response(status)
        self.send_header("Content-Type", mimetypes.guess_type(path)[0] or "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self._allow_other_origins()
        if behaviour.ranges:
            self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if path in behaviour.stall:
            time.sleep(behaviour.stall[path])
        if send_body:
            self._send_file(file, start, length)

    def _send_file(self, file: Path, start: int, length: int) -> None:
        behaviour = self.server.behaviour
        began = time.monotonic()
        sent = 0
        with open(file, "rb") as handle:
            handle.seek(start)
            while sent < length:
                chunk = handle.read(min(CHUNK_BYTES, length - sent))
                if not chunk:
                    break
                if behaviour.total_bandwidth:
                    self.server.bucket.take(len(chunk), behaviour.total_bandwidth)
                self.wfile.write(chunk)
                sent += len(chunk)
                self.server.stats.add_bytes(len(chunk))
                if behaviour.connection_bandwidth:
                    ahead = sent / behaviour.connection_bandwidth - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)

    def _allow_other_origins(self) -> None:
        # The web page's player (hls.js) reads the VOD from the page's origin, as CDNs allow;
        # errors too, so that it sees their status.
        self.send_header("Access-Control-Allow-Origin", "*")

    def _error(self, path: str, status: int, size: int | None = None) -> None:
        self.server.stats.record(path, status)
        body = f"{status}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self._allow_other_origins()
        if size is not None:
            self.send_header("Content-Range", f"bytes */{size}")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, root: Path, behaviour: Behaviour) -> None:
        super().__init__(address, _Handler)
        self.root = root.resolve()
        self.behaviour = behaviour
        self.stats = Stats()
        self.bucket = _TokenBucket()
        self.lock = threading.Lock()

    def handle_error(self, request, client_address) -> None:
        # Clients (ffmpeg, yt-dlp) hang up mid-body when they have enough; that is not an error here.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    def resolve(self, url_path: str) -> Path | None:
        candidate = (self.root / url_path.lstrip("/")).resolve()
        if not candidate.is_relative_to(self.root) or not candidate.is_file():
            return None
        return candidate


class BackgroundServer:
    """An ``http.server`` serving on a daemon thread until ``stop()``; also a context manager."""

    def __init__(self, server, poll_interval: float = 0.5):
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": poll_interval},
                                        name="sample-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class StaticServer(BackgroundServer):
    """A running server: ``url``, ``stats``, ``behaviour``; ``stop()`` or use as a context manager."""

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0, behaviour: Behaviour | None = None):
        super().__init__(_Server((host, port), Path(root), behaviour or Behaviour()))
        bound_host, bound_port = self._server.server_address[:2]
        self.url = f"http://{bound_host}:{bound_port}"

    @property
    def stats(self) -> Stats:
        return self._server.stats

    @property
    def behaviour(self) -> Behaviour:
        return self._server.behaviour


def serve_directory(root: Path, host: str = "127.0.0.1", port: int = 0, **behaviour) -> StaticServer:
    """Serve ``root`` over HTTP on a background thread; keyword arguments set :class:`Behaviour` fields."""
    return StaticServer(root, host, port, Behaviour(**behaviour))
