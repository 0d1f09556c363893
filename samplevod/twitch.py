"""A loopback fake of Twitch for tests and the demo: GQL, usher with signed tokens, and a VOD CDN.

It answers the requests clipqueue's resolver makes, as Twitch does:

- ``POST /gql``: ``videoPlaybackAccessToken(id: ...)`` gives a signed token
  (null for a deleted or unknown VOD); ``user(login: ...)`` gives the
  channel's live stream and the VOD it records (or null/offline). A wrong
  ``Authorization: OAuth`` token is a 401; a missing ``Client-ID`` a 400.
- ``GET /vod/<id>.m3u8``: usher checks the token's signature and VOD id, refuses a
  subscriber-only VOD with 403 ``vod_manifest_restricted`` unless the token was
  issued to a subscriber, and answers a master playlist whose variants are on
  the CDN below (source as GROUP-ID ``chunked``).
- ``GET /cdn/<id>/<variant>/index-dvr.m3u8`` and segments: a muted segment is
  listed as ``N-unmuted.ts``, which answers 403, while ``N-muted.ts`` works.
  A live VOD lists only what has been "recorded" so far, as an EVENT playlist
  without ENDLIST, growing with time.

VODs are folders written by :func:`samplevod.vod.generate_hls_vod` (their
muted segments named ``N-muted.ts``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from samplevod.server import BackgroundServer
from samplevod.vod import FULL_PLAYLIST_NAME

SIGNING_KEY = b"fake-twitch-usher"
USHER_PARAMETERS = ("sig", "token", "allow_source", "allow_audio_only", "playlist_include_framerate",
                    "supported_codecs", "p")
_TOKEN_QUERY = re.compile(r'videoPlaybackAccessToken\(id:\s*"([^"]*)"')
_USER_QUERY = re.compile(r'user\(login:\s*"([^"]*)"\)')
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
_EXTINF = re.compile(r"#EXTINF:([0-9.]+)")


@dataclass
class FakeVod:
    """A VOD the fake serves; fields may change while it runs."""

    root: Path  # a folder with master.m3u8 and one folder per variant
    sub_only: bool = False
    deleted: bool = False
    # Set for a VOD still being recorded: the monotonic time its stream started; segments appear as they end.
    live_since: float | None = None


@dataclass
class FakeChannel:
    """A channel: live or not, recording ``video_id`` (None: live without a VOD)."""

    video_id: str | None = None
    live: bool = True
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


@dataclass
class FakeTwitchState:
    vods: dict[str, FakeVod] = field(default_factory=dict)
    channels: dict[str, FakeChannel] = field(default_factory=dict)
    subscriber_tokens: set[str] = field(default_factory=set)  # OAuth tokens of subscribers
    fail_first: dict[str, int] = field(default_factory=dict)  # "gql" | "usher" -> answer 503 this many times
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)  # method, path, headers
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take_failure(self, what: str) -> bool:
        with self.lock:
            left = self.fail_first.get(what, 0)
            if left > 0:
                self.fail_first[what] = left - 1
                return True
            return False


def _sign(token: str) -> str:
    return hmac.new(SIGNING_KEY, token.encode(), hashlib.sha1).hexdigest()


def _variants(root: Path) -> list[tuple[str, str]]:
    """(name, STREAM-INF attributes) of a VOD's variants, best first, from its master playlist."""
    lines = (root / "master.m3u8").read_text().splitlines()
    found = []
    for index, line in enumerate(lines):
        if line.startswith("#EXT-X-STREAM-INF:"):
            uri = lines[index + 1].strip()
            attributes = re.sub(r',VIDEO="[^"]*"', "", line.split(":", 1)[1])
            found.append((uri.split("/")[0], attributes))
    return found


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        pass

    @property
    def state(self) -> FakeTwitchState:
        return self.server.state

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, document) -> None:
        self._send(status, json.dumps(document).encode())

    def _record(self) -> None:
        with self.state.lock:
            self.state.requests.append((self.command, self.path, dict(self.headers.items())))

    # --- GQL -----------------------------------------------------------------

    def do_POST(self) -> None:
        self._record()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if urlsplit(self.path).path != "/gql":
            return self._json(404, {"error": "Not Found"})
        if self.state.take_failure("gql"):
            return self._json(503, {"error": "Service Unavailable"})
        if not self.headers.get("Client-ID"):
            return self._json(400, {"error": "Bad Request", "status": 400, "message": "Missing Client-ID"})
        oauth = self.headers.get("Authorization", "")
        subscriber = False
        if oauth:
            token = oauth.removeprefix("OAuth ").strip()
            if token not in self.state.subscriber_tokens:
                return self._json(401, {"error": "Unauthorized", "status": 401,
                                        "message": 'The "Authorization" token is invalid.'})
            subscriber = True
        try:
            query = json.loads(body)["query"]
        except (ValueError, KeyError, TypeError):
            return self._json(400, {"errors": [{"message": "invalid request body"}]})
        if match := _TOKEN_QUERY.search(query):
            return self._json(200, {"data": {"videoPlaybackAccessToken": self._token(match.group(1), subscriber)}})
        if match := _USER_QUERY.search(query):
            return self._json(200, {"data": {"user": self._user(match.group(1).lower())}})
        return self._json(200, {"errors": [{"message": "unknown query"}], "data": None})

    def _token(self, video_id: str, subscriber: bool) -> dict | None:
        vod = self.state.vods.get(video_id)
        if vod is None or vod.deleted:
            return None
        value = json.dumps({"vod_id": int(video_id), "subscriber": subscriber,
                            "expires": int(time.time()) + 3600}, separators=(",", ":"))
        return {"value": value, "signature": _sign(value)}

    def _user(self, login: str) -> dict | None:
        channel = self.state.channels.get(login)
        if channel is None:
            return None
        if not channel.live:
            return {"stream": None}
        archive = {"id": channel.video_id} if channel.video_id else None
        return {"stream": {"createdAt": channel.started_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                           "archiveVideo": archive}}

    # --- usher and CDN ---------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self._record()
        parts = urlsplit(self.path)
        if match := re.fullmatch(r"/vod/(\d+)\.m3u8", parts.path):
            return self._usher(match.group(1), parse_qs(parts.query))
        if match := re.fullmatch(r"/cdn/(\d+)/([^/]+)/([^/]+)", parts.path):
            return self._cdn(*match.groups())
        return self._send(404, b"not found", "text/plain")

    def _usher(self, video_id: str, query: dict[str, list[str]]) -> None:
        if self.state.take_failure("usher"):
            return self._json(503, [{"error": "Service Unavailable", "error_code": "service_unavailable"}])
        missing = [name for name in USHER_PARAMETERS if name not in query]
        if missing:
            return self._json(400, [{"error": f"missing {', '.join(missing)}", "error_code": "bad_request",
                                     "type": "error"}])
        token, sig = query["token"][0], query["sig"][0]
        try:
            claims = json.loads(token)
        except ValueError:
            claims = {}
        if not hmac.compare_digest(_sign(token), sig) or str(claims.get("vod_id")) != video_id:
            return self._json(403, [{"error": "Unauthorized", "error_code": "unauthorized", "type": "error"}])
        vod = self.state.vods.get(video_id)
        if vod is None or vod.deleted:
            return self._json(404, [{"error": "Not Found", "error_code": "vod_manifest_not_found", "type": "error"}])
        if vod.sub_only and not claims.get("subscriber"):
            return self._json(403, [{"url": self.path, "error": "Manifest is restricted",
                                     "error_code": "vod_manifest_restricted", "type": "error"}])
        host = self.headers.get("Host")
        lines = ["#EXTM3U", '#EXT-X-TWITCH-INFO:ORIGIN="s3",B="false",REGION="EU",USER-IP="127.0.0.1"']
        for index, (name, attributes) in enumerate(_variants(vod.root)):
            group, label = ("chunked", f"{name} (source)") if index == 0 else (name, name)
            lines.append(f'#EXT-X-MEDIA:TYPE=VIDEO,GROUP-ID="{group}",NAME="{label}",AUTOSELECT=YES,DEFAULT=YES')
            lines.append(f'#EXT-X-STREAM-INF:{attributes},VIDEO="{group}"')
            lines.append(f"http://{host}/cdn/{video_id}/{name}/index-dvr.m3u8")
        self._send(200, ("\n".join(lines) + "\n").encode(), "application/vnd.apple.mpegurl")

    def _cdn(self, video_id: str, variant: str, name: str) -> None:
        vod = self.state.vods.get(video_id)
        if vod is None or "/" in variant or variant.startswith("."):
            return self._send(404, b"not found", "text/plain")
        folder = vod.root / variant
        if name == "index-dvr.m3u8":
            return self._media_playlist(vod, folder)
        if "-unmuted." in name:  # as Twitch's CDN: the unmuted original is gone
            return self._send(403, b"<Error><Code>AccessDenied</Code></Error>", "application/xml")
        path = folder / name
        if not path.is_file() or path.name.startswith(".") or not self._recorded(vod, folder, name):
            return self._send(403, b"<Error><Code>AccessDenied</Code></Error>", "application/xml")
        self._file(path)

    def _entries(self, vod: FakeVod, folder: Path) -> tuple[list[str], list[tuple[str, str]]]:
        """The media playlist's header lines and (EXTINF line, URI) entries, as recorded so far."""
        source = folder / FULL_PLAYLIST_NAME
        lines = (source if source.exists() else folder / "index.m3u8").read_text().splitlines()
        header, entries, pending = [], [], None
        for line in lines:
            if line.startswith("#EXTINF"):
                pending = line
            elif pending is not None and line and not line.startswith("#"):
                entries.append((pending, line))
                pending = None
            elif not entries and pending is None and line.startswith("#") and line != "#EXT-X-ENDLIST":
                header.append(line)
        if vod.live_since is not None:
            elapsed, end, recorded = time.monotonic() - vod.live_since, 0.0, []
            for extinf, uri in entries:
                end += float(_EXTINF.match(extinf).group(1))
                if end > elapsed:
                    break
                recorded.append((extinf, uri))
            entries = recorded if len(recorded) < len(entries) else entries
        return header, entries

    def _recorded(self, vod: FakeVod, folder: Path, name: str) -> bool:
        return vod.live_since is None or name in {uri for _, uri in self._entries(vod, folder)[1]}

    def _media_playlist(self, vod: FakeVod, folder: Path) -> None:
        header, entries = self._entries(vod, folder)
        full = len(entries) == len(self._entries(FakeVod(vod.root), folder)[1])
        ended = vod.live_since is None or full
        lines = [line if not line.startswith("#EXT-X-PLAYLIST-TYPE") else "#EXT-X-PLAYLIST-TYPE:EVENT"
                 for line in header]
        for extinf, uri in entries:
            lines += [extinf, uri.replace("-muted.", "-unmuted.")]
        if ended:
            lines.append("#EXT-X-ENDLIST")
        self._send(200, ("\n".join(lines) + "\n").encode(), "application/vnd.apple.mpegurl")

    def _file(self, path: Path) -> None:
        data = path.read_bytes()
        match = _RANGE.match(self.headers.get("Range", ""))
        if not match or not any(match.groups()):
            return self._send(200, data, "video/mp2t", {"Accept-Ranges": "bytes"})
        first, last = match.groups()
        if first == "":
            first, last = max(0, len(data) - int(last)), len(data) - 1
        first, last = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
        if first >= len(data):
            return self._send(416, b"", "video/mp2t", {"Content-Range": f"bytes */{len(data)}"})
        self._send(206, data[first:last + 1], "video/mp2t",
                   {"Content-Range": f"bytes {first}-{last}/{len(data)}", "Accept-Ranges": "bytes"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, state: FakeTwitchState) -> None:
        super().__init__(address, _Handler)
        self.state = state


class FakeTwitch(BackgroundServer):
    """A running fake: ``gql_url``, ``usher_url``, ``state``; ``stop()`` or use as a context manager."""

    def __init__(self, state: FakeTwitchState | None = None, host: str = "127.0.0.1", port: int = 0):
        self.state = state or FakeTwitchState()
        super().__init__(_Server((host, port), self.state))
        bound_host, bound_port = self._server.server_address[:2]
        self.url = f"http://{bound_host}:{bound_port}"
        self.gql_url = f"{self.url}/gql"
        self.usher_url = self.url

    def settings(self) -> dict[str, str]:
        """The environment that points clipqueue at this fake."""
        return {"TWITCH_GQL_URL": self.gql_url, "TWITCH_USHER_URL": self.usher_url}

    def live_vod(self, video_id: str, root: Path, recorded_seconds: float) -> FakeVod:
        """Add a VOD being recorded now, ``recorded_seconds`` long so far and growing in real time."""
        vod = FakeVod(root, live_since=time.monotonic() - recorded_seconds)
        self.state.vods[video_id] = vod
        return vod


def started_ago(seconds: float) -> datetime:
    """A stream start time ``seconds`` before now, for :class:`FakeChannel`."""
    return datetime.now(timezone.utc) - timedelta(seconds=seconds)
