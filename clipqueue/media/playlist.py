"""HLS playlists: choose the variant for a quality, and the segments a clip needs.

Parsing is the ``m3u8`` library's; this module adds the decisions: which
rendition answers ``quality``, where each segment sits on the VOD's timeline,
which segments overlap a clip, and which parts of a clip are muted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import m3u8

from clipqueue.exceptions import InvalidMedia, RangeNotInVod

QUALITIES = ("source", "1080p", "720p", "480p", "360p", "160p", "audio_only", "auto")
AUTO_QUALITY_HEIGHT = 720  # "auto": the best rendition at or below 720p, what most viewers watch
_HEIGHT_IN_NAME = re.compile(r"(\d{3,4})p")
_MUTED = re.compile(r"-muted\.\w+$")  # Twitch names muted segments "<n>-muted.ts"


@dataclass(frozen=True)
class Rendition:
    """One variant stream listed in a master playlist."""

    name: str  # as reported on the clip, e.g. "720p60"; "audio_only" for audio-only renditions
    url: str
    height: int | None
    bandwidth: int
    is_source: bool = False


@dataclass(frozen=True)
class Segment:
    """One media segment, placed on the VOD's timeline (seconds from the first segment)."""

    url: str
    start: float
    duration: float
    sequence: int
    init_url: str | None = None  # fMP4 #EXT-X-MAP
    byterange: tuple[int, int] | None = None  # (offset, length) from #EXT-X-BYTERANGE
    discontinuity: bool = False
    muted: bool = False

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(frozen=True)
class MediaPlaylist:
    """A media playlist's segments; ``ended`` is False for a live (EVENT) VOD still growing."""

    url: str
    segments: tuple[Segment, ...]
    ended: bool
    target_duration: float

    @property
    def duration(self) -> float:
        return self.segments[-1].end if self.segments else 0.0


def is_master_playlist(text: str) -> bool:
    """True if ``text`` is an HLS master playlist (lists variants, not segments)."""
    return "#EXT-X-STREAM-INF" in text


def looks_like_playlist(head: bytes) -> bool:
    """True if the first bytes of a response are an M3U8 playlist rather than media."""
    return head.lstrip(b"\xef\xbb\xbf \r\n\t").startswith(b"#EXTM3U")


def _rendition_name(playlist: m3u8.Playlist) -> tuple[str, int | None, bool]:
    info = playlist.stream_info
    label = ""
    for media in playlist.media:
        if media.type == "VIDEO" and media.name:
            label = media.name
            break
    label = label or info.video or ""
    is_source = "source" in label.lower() or label.lower() == "chunked"
    height = info.resolution[1] if info.resolution else None
    match = _HEIGHT_IN_NAME.search(label)
    if match and (height is None or not info.resolution):
        height = int(match.group(1))
    codecs = (info.codecs or "").lower()
    if info.resolution is None and ("audio" in label.lower() or (codecs and "avc" not in codecs and "hvc" not in codecs and "hev" not in codecs)):
        return "audio_only", None, False
    name = re.sub(r"\s*\(source\)\s*", "", label, flags=re.IGNORECASE).strip()
    if not name or name.lower() == "chunked" or not _HEIGHT_IN_NAME.search(name):
        name = f"{height}p" if height else (name or "source")
    return name, height, is_source


def parse_master(text: str, url: str) -> list[Rendition]:
    """Return the renditions of a master playlist, with absolute URLs."""
    master = m3u8.loads(text, uri=url)
    renditions = []
    for playlist in master.playlists:
        name, height, is_source = _rendition_name(playlist)
        renditions.append(Rendition(name, playlist.absolute_uri, height, playlist.stream_info.bandwidth or 0, is_source))
    if not renditions:
        raise InvalidMedia("master playlist lists no variants")
    return renditions


def choose_rendition(renditions: list[Rendition], quality: str) -> Rendition:
    """Pick the rendition for ``quality``: the nearest at or below the asked height.

    ``source`` is the best rendition; ``auto`` is the best at or below 720p;
    when nothing is at or below the asked height the smallest video is used.
    """
    video = [r for r in renditions if r.name != "audio_only"]
    if quality == "audio_only":
        audio = [r for r in renditions if r.name == "audio_only"]
        if audio:
            return audio[0]
        video = sorted(video, key=lambda r: (r.height or 0, r.bandwidth))
        return video[0]
    if not video:
        return renditions[0]
    best_first = sorted(video, key=lambda r: (r.is_source, r.height or 0, r.bandwidth), reverse=True)
    if quality == "source":
        return best_first[0]
    limit = AUTO_QUALITY_HEIGHT if quality == "auto" else int(quality.rstrip("p"))
    by_height = sorted(video, key=lambda r: (r.height or 0, r.bandwidth), reverse=True)
    for rendition in by_height:
        if (rendition.height or 0) <= limit:
            return rendition
    return by_height[-1]


def parse_media(text: str, url: str) -> MediaPlaylist:
    """Return the segments of a media playlist placed on the VOD's timeline."""
    playlist = m3u8.loads(text, uri=url)
    if playlist.is_variant:
        raise InvalidMedia("expected a media playlist, got a master playlist")
    segments = []
    start = 0.0
    sequence = playlist.media_sequence or 0
    next_offset = 0
    for index, item in enumerate(playlist.segments):
        key = item.key
        if key is not None and (key.method or "NONE").upper() != "NONE":
            # Segments would be cut as ciphertext: a broken clip, not a clip.
            raise InvalidMedia(f"encrypted VODs are not supported (EXT-X-KEY METHOD={key.method})")
        duration = float(item.duration or 0.0)
        if duration <= 0:
            raise InvalidMedia(f"segment {item.uri} has no EXTINF duration")
        byterange = None
        if item.byterange:
            length, _, offset = item.byterange.partition("@")
            start_byte = int(offset) if offset else next_offset
            byterange = (start_byte, int(length))
            next_offset = start_byte + int(length)
        init_url = item.init_section.absolute_uri if item.init_section else None
        segments.append(Segment(
            url=item.absolute_uri, start=start, duration=duration, sequence=sequence + index,
            init_url=init_url, byterange=byterange, discontinuity=bool(item.discontinuity),
            muted=bool(_MUTED.search(urlsplit(item.absolute_uri).path)),
        ))
        start += duration
    ended = bool(playlist.is_endlist) or (playlist.playlist_type or "").lower() == "vod"
    return MediaPlaylist(url, tuple(segments), ended, float(playlist.target_duration or 0))


def select_segments(playlist: MediaPlaylist, start_time: float, end_time: float) -> list[Segment]:
    """Return the segments overlapping ``[start_time, end_time)``; raise ``RangeNotInVod`` if it lies outside.

    A segment ending exactly at ``start_time`` is not needed; one starting
    exactly at ``end_time`` is not either.
    """
    if start_time < 0 or end_time <= start_time:
        raise RangeNotInVod(f"invalid range {start_time}-{end_time}")
    if playlist.ended and end_time > playlist.duration + 1e-6:
        raise RangeNotInVod(
            f"range {start_time:.3f}-{end_time:.3f}s ends after the VOD ({playlist.duration:.3f}s)"
        )
    return [s for s in playlist.segments if s.end > start_time + 1e-9 and s.start < end_time - 1e-9]


def muted_ranges(segments: list[Segment], start_time: float, end_time: float) -> list[tuple[float, float]]:
    """Return the muted parts of ``[start_time, end_time]``, in seconds from the clip's start, merged."""
    ranges: list[tuple[float, float]] = []
    for segment in segments:
        if not segment.muted:
            continue
        low, high = max(segment.start, start_time), min(segment.end, end_time)
        if high <= low:
            continue
        low, high = round(low - start_time, 3), round(high - start_time, 3)
        if ranges and abs(ranges[-1][1] - low) < 1e-3:
            ranges[-1] = (ranges[-1][0], high)
        else:
            ranges.append((low, high))
    return ranges
