"""Twitch sources: recognise a viewer's Twitch link, and resolve it to an HLS master playlist.

Resolution follows Twitch's own web player: a playback access token from
the GQL API (raw query text, which keeps working when persisted-query
hashes rotate), then the master playlist from usher with that token. A
live channel is resolved to the VOD it is recording now. The media layer
cuts the result like any other master playlist.

Recognising a link (:func:`parse_twitch_link`) needs neither the network
nor PyAV, so the API can use it when a clip is created.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

import requests

from clipqueue import defaults
from clipqueue.exceptions import (
    InvalidTwitchLink,
    SourceUnavailable,
    TwitchChannelOffline,
    TwitchNotRecording,
    TwitchRefused,
    TwitchSubscriberOnly,
    TwitchVodNotFound,
)
from clipqueue.media.playlist import looks_like_playlist

TWITCH_HOSTS = frozenset({"twitch.tv", "www.twitch.tv", "m.twitch.tv"})
# First path parts of twitch.tv pages that are not a channel (a channel login is 4-25 word characters).
NOT_CHANNELS = frozenset({
    "directory", "videos", "search", "settings", "subscriptions", "inventory", "wallet", "drops", "downloads",
    "jobs", "p", "turbo", "prime", "friends", "messages", "payments", "store", "user", "login", "signup",
    "logout", "moderator", "popout", "embed", "following", "broadcast", "creatorcamp", "team", "bits",
})
_LOGIN = re.compile(r"^[A-Za-z0-9_]{1,25}$")
_VIDEO_ID = re.compile(r"^[0-9]{1,20}$")
# Usher's answers for a VOD the viewer may not watch without a subscription.
SUBSCRIBER_ONLY_CODES = frozenset({"vod_manifest_restricted", "unauthorized_entitlements"})
RETRY_DELAYS = (0.5, 1.0, 2.0)  # between tries of a GQL or usher call that failed for the moment

T = TypeVar("T")


@dataclass(frozen=True)
class TwitchLink:
    """What a Twitch link points at: a VOD (``video``) or a live channel (``channel``)."""

    kind: str  # "video" | "channel"
    ident: str  # the video id or the channel's login

    def __str__(self) -> str:
        return f"Twitch VOD {self.ident}" if self.kind == "video" else f"Twitch channel {self.ident}"


def is_twitch_host(host: str | None) -> bool:
    """True for twitch.tv and the subdomains viewers' links use."""
    return (host or "").lower().rstrip(".") in TWITCH_HOSTS


def parse_twitch_link(url: str) -> TwitchLink | None:
    """Return what a twitch.tv link points at; ``None`` if ``url`` is not on twitch.tv.

    Raises ``InvalidTwitchLink`` for a twitch.tv link that names no VOD or
    channel (``/directory``, ``/videos/abc``, a channel's video list).
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not is_twitch_host(host):
        return None
    path = [part for part in parts.path.split("/") if part]
    if len(path) == 2 and path[0].lower() == "videos":
        if not _VIDEO_ID.match(path[1]):
            raise InvalidTwitchLink(f"{url} is not a Twitch VOD link: the video id must be a number")
        return TwitchLink("video", path[1])
    if len(path) == 1 and path[0].lower() not in NOT_CHANNELS and _LOGIN.match(path[0]):
        return TwitchLink("channel", path[0].lower())
    raise InvalidTwitchLink(
        f"{url} is not a Twitch VOD or channel link; expected https://www.twitch.tv/videos/<id> "
        "or https://www.twitch.tv/<channel>")


@dataclass(frozen=True)
class TwitchConfig:
    """Where Twitch's APIs are and how to speak to them; defaults come from :mod:`clipqueue.defaults`."""

    gql_url: str = defaults.TWITCH_GQL_URL
    usher_url: str = defaults.TWITCH_USHER_URL
    client_id: str = defaults.TWITCH_CLIENT_ID
    oauth_token: str = ""
    supported_codecs: tuple[str, ...] = tuple(defaults.TWITCH_SUPPORTED_CODECS.split(","))
    timeout: float = defaults.FETCH_TIMEOUT_SECONDS

    @classmethod
    def from_settings(cls, settings: Any) -> TwitchConfig:
        return cls(
            gql_url=settings.twitch_gql_url, usher_url=settings.twitch_usher_url,
            client_id=settings.twitch_client_id, oauth_token=settings.twitch_oauth_token,
            supported_codecs=tuple(settings.twitch_supported_codecs), timeout=settings.fetch_timeout_seconds,
        )


@dataclass(frozen=True)
class ResolvedTwitch:
    """A Twitch link resolved: the VOD's master playlist (text and URL) and the VOD it belongs to."""

    video_id: str
    master_url: str
    master_text: str


def _quoted(value: str) -> str:
    """A GraphQL string literal (JSON's escaping is GraphQL's for these characters)."""
    return json.dumps(value)


def _error_codes(body: str) -> set[str]:
    """The ``error_code`` values of usher's JSON error answer (a list of objects, or one)."""
    try:
        answer = json.loads(body)
    except ValueError:
        return set()
    items = answer if isinstance(answer, list) else [answer]
    return {str(item.get("error_code")) for item in items if isinstance(item, dict) and item.get("error_code")}


class TwitchResolver:
    """Resolve :class:`TwitchLink` s through Twitch's GQL API and usher.

    Transient failures (timeouts, connection errors, 5xx, 429) are tried
    again a few times, then raised as ``SourceUnavailable`` so the job is
    retried later; Twitch's answers that will not change are raised at once
    as permanent errors naming the cause.
    """

    def __init__(self, config: TwitchConfig, session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.config = config
        self.session = session or requests.Session()
        self.session.trust_env = False  # GQL and usher are the operator's settings, not the environment's proxies
        self._sleep = sleep

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> TwitchResolver:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def resolve(self, link: TwitchLink) -> ResolvedTwitch:
        """Return the master playlist of the VOD ``link`` names (for a channel: the one it records now)."""
        video_id = link.ident if link.kind == "video" else self.recording_video_id(link.ident)
        token, signature = self.access_token(video_id)
        url, text = self.master_playlist(video_id, token, signature)
        return ResolvedTwitch(video_id, url, text)

    def recording_video_id(self, login: str) -> str:
        """The id of the VOD a live channel is recording; permanent errors if offline or not recording."""
        data = self._gql(f"query {{ user(login: {_quoted(login)}) {{ stream {{ createdAt archiveVideo {{ id }} }} }} }}")
        user = data.get("user")
        if user is None:
            raise TwitchChannelOffline(f"Twitch channel {login} does not exist")
        stream = user.get("stream")
        if stream is None:
            raise TwitchChannelOffline(f"Twitch channel {login} is offline: clip one of its VODs instead "
                                       "(https://www.twitch.tv/videos/<id>)")
        archive = stream.get("archiveVideo") or {}
        if not archive.get("id"):
            raise TwitchNotRecording(f"Twitch channel {login} is live but is not recording a VOD, "
                                     "so there is nothing to clip from")
        return str(archive["id"])

    def access_token(self, video_id: str) -> tuple[str, str]:
        """The playback access token (value, signature) of a VOD; ``TwitchVodNotFound`` when Twitch has none."""
        data = self._gql(
            f"query {{ videoPlaybackAccessToken(id: {_quoted(video_id)}, params: {{platform: \"web\", "
            f"playerBackend: \"mediaplayer\", playerType: \"site\"}}) {{ value signature }} }}")
        token = data.get("videoPlaybackAccessToken")
        if not token or not token.get("value") or not token.get("signature"):
            raise TwitchVodNotFound(f"Twitch VOD {video_id} does not exist or was deleted")
        return str(token["value"]), str(token["signature"])

    def master_playlist(self, video_id: str, token: str, signature: str) -> tuple[str, str]:
        """Usher's master playlist for a VOD: (its URL, its text)."""
        query = urlencode({
            "sig": signature, "token": token, "allow_source": "true", "allow_audio_only": "true",
            "playlist_include_framerate": "true", "supported_codecs": ",".join(self.config.supported_codecs),
            "p": random.randint(0, 9_999_999),
        })
        url = f"{self.config.usher_url.rstrip('/')}/vod/{video_id}.m3u8?{query}"

        def fetch() -> tuple[str, str]:
            response = self._send("GET", url, headers={"Accept": "application/x-mpegURL, */*"})
            if response.status_code == 200:
                if not looks_like_playlist(response.content[:256]):
                    raise TwitchRefused(f"Twitch's usher answered something else than a playlist for VOD {video_id}")
                return url, response.text
            codes = _error_codes(response.text)
            if response.status_code == 403 and codes & SUBSCRIBER_ONLY_CODES:
                raise TwitchSubscriberOnly(
                    f"Twitch VOD {video_id} is for subscribers only; set TWITCH_OAUTH_TOKEN to a subscriber's "
                    "OAuth token to clip it")
            if response.status_code in (403, 404, 410):
                detail = f" ({', '.join(sorted(codes))})" if codes else ""
                if response.status_code == 403:
                    raise TwitchRefused(f"Twitch refused the playlist of VOD {video_id}{detail}")
                raise TwitchVodNotFound(f"Twitch has no playlist for VOD {video_id}{detail}")
            raise TwitchRefused(f"Twitch's usher answered {response.status_code} for VOD {video_id}")

        return self._with_retries(fetch)

    def _gql(self, query: str) -> dict:
        headers = {"Client-ID": self.config.client_id, "Content-Type": "application/json"}
        if self.config.oauth_token:
            headers["Authorization"] = f"OAuth {self.config.oauth_token}"

        def ask() -> dict:
            response = self._send("POST", self.config.gql_url, headers=headers,
                                  data=json.dumps({"query": query}).encode())
            if response.status_code in (401, 403):
                raise TwitchRefused(f"Twitch's GQL API refused the request ({response.status_code}): "
                                    "check TWITCH_CLIENT_ID and TWITCH_OAUTH_TOKEN")
            if response.status_code != 200:
                raise TwitchRefused(f"Twitch's GQL API answered {response.status_code}")
            try:
                answer = response.json()
            except ValueError:
                raise SourceUnavailable("Twitch's GQL API answered something else than JSON") from None
            if not isinstance(answer, dict):
                raise TwitchRefused("Twitch's GQL API answered an unexpected document")
            errors = answer.get("errors") or []
            if errors and not answer.get("data"):
                messages = "; ".join(str(e.get("message", e)) for e in errors if isinstance(e, dict)) or str(errors)
                if any("token" in str(e).lower() for e in errors):
                    raise TwitchRefused(f"Twitch's GQL API refused TWITCH_OAUTH_TOKEN: {messages}")
                raise SourceUnavailable(f"Twitch's GQL API failed: {messages}")
            return answer.get("data") or {}

        return self._with_retries(ask)

    def _send(self, method: str, url: str, **kwargs) -> requests.Response:
        try:
            response = self.session.request(method, url, timeout=self.config.timeout, allow_redirects=False,
                                            **kwargs)
        except requests.RequestException as exc:
            raise SourceUnavailable(f"Twitch could not be reached ({type(exc).__name__})") from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise SourceUnavailable(f"Twitch answered {response.status_code} at {urlsplit(url).path}")
        return response

    def _with_retries(self, action: Callable[[], T]) -> T:
        for delay in RETRY_DELAYS:
            try:
                return action()
            except SourceUnavailable:
                self._sleep(delay)
        return action()
