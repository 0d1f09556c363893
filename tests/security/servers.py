"""A tiny loopback HTTP(S) server for the security tests: counts connections and requests, redirects on demand."""

from __future__ import annotations

import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from samplevod.server import BackgroundServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def setup(self) -> None:
        with self.server.lock:
            self.server.connections += 1
        super().setup()

    def log_message(self, format, *args) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        with self.server.lock:
            self.server.requests.append((parts.path, self.headers.get("Host")))
        if parts.path == "/redirect":
            target = parse_qs(parts.query).get("to", [""])[0]
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if parts.path == "/switch":
            # The first request gets real content (self.server.payload), later ones a redirect:
            # a source that passes a check, then sends the next reader elsewhere.
            with self.server.lock:
                first = self.server.switch_hits == 0
                self.server.switch_hits += 1
            if first or not parse_qs(parts.query).get("to"):
                self.send_response(200)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("Content-Length", str(len(self.server.payload)))
                self.end_headers()
                self.wfile.write(self.server.payload)
                return
            self.send_response(302)
            self.send_header("Location", parse_qs(parts.query)["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if parts.path == "/loop":
            self.send_response(301)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = f"served by {self.server.name}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, family: int, name: str):
        self.address_family = family
        super().__init__(address, _Handler)
        self.name = name
        self.lock = threading.Lock()
        self.connections = 0
        self.requests: list[tuple[str, str | None]] = []
        self.payload = b""
        self.switch_hits = 0


class CountingServer(BackgroundServer):
    """Serves on ``host:port``; ``requests`` lists (path, Host header) of every request, ``connections`` counts accepts.

    ``/redirect?to=URL`` answers 302 to URL, ``/loop`` redirects to itself,
    ``/switch?to=URL`` answers ``payload`` once, then 302 to URL,
    anything else answers 200 naming the server.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, name: str = "server",
                 tls: ssl.SSLContext | None = None):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server = _Server((host, port), family, name)
        if tls is not None:
            server.socket = tls.wrap_socket(server.socket, server_side=True)
        super().__init__(server, poll_interval=0.05)
        self.port = self._server.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{'https' if tls else 'http'}://{shown}:{self.port}"

    @property
    def requests(self) -> list[tuple[str, str | None]]:
        with self._server.lock:
            return list(self._server.requests)

    @property
    def payload(self) -> bytes:
        return self._server.payload

    @payload.setter
    def payload(self, data: bytes) -> None:
        self._server.payload = data

    @property
    def connections(self) -> int:
        with self._server.lock:
            return self._server.connections
