"""HLS playlists: choose the variant for a quality, and the segments a clip needs.

Media playlists are parsed by the ``m3u8`` library; master playlists are read
here, since Twitch's usher v2 names its variants only in attributes the
library drops (``IVS-NAME``, ``STABLE-VARIANT-ID``). This module adds the
decisions: which rendition answers ``quality``, where each segment sits on the
VOD's timeline (Twitch's stitched ads are not the VOD and are left out), which
segments overlap a clip, and which parts of a clip are muted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urljoin, urlsplit, urlunsplit

import m3u8

from clipqueue.exceptions import InvalidMedia, RangeNotInVod

QUALITIES = ("source", "1080p", "720p", "480p", "360p", "160p", "audio_only", "auto")
AUTO_QUALITY_HEIGHT = 720  # "auto": the best rendition at or below 720p, what most viewers watch
# When one height is offered in several codecs (Twitch Enhanced Broadcasting), the codec a clip is cut from
# most faithfully comes first: H.264 is smart-cut keeping the broadcast's own pictures, HEVC only when x265
# reproduces the source's parameter sets (else it is re-encoded), AV1 is always re-encoded in accurate mode.
CUT_PREFERENCE = ("h264", "h265", "av1")
_HEIGHT_IN_NAME = re.compile(r"(\d{3,4})p(\d{2,3})?")
_ATTRIBUTE = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')
_MUTED = re.compile(r"-muted\.\w+$")  # Twitch names muted segments "<n>-muted.ts"
_UNMUTED = re.compile(r"-unmuted(\.\w+)$")  # listed by Twitch, often answering 403 while "<n>-muted" works
_CODEC_FAMILIES = {
    "avc1": "h264", "avc3": "h264",
    "hvc1": "h265", "hev1": "h265", "dvh1": "h265", "dvhe": "h265",
    "av01": "av1", "dav1": "av1",
    "vp09": "vp9",
}
_AUDIO_CODECS = ("mp4a", "ac-3", "ec-3", "opus", "flac", "alac", "mp3")
_AD_TITLE_PREFIX = "Amazon"  # Twitch titles stitched ad segments "Amazon|<id>"
_MIXED = "the playlist mixes a master playlist's variants with media segments (#EXTINF): not valid HLS"
_Window = tuple[datetime, "datetime | None"]  # a stitched ad's wall-clock span; None: open-ended


def cuttable_codecs(offered: Sequence[str] = CUT_PREFERENCE) -> tuple[str, ...]:
    """The codecs of ``offered`` (e.g. the TWITCH_SUPPORTED_CODECS setting) that the cut handles, best first."""
    return tuple(codec for codec in CUT_PREFERENCE if codec in offered)


@dataclass(frozen=True)
class Rendition:
    """One variant stream listed in a master playlist."""

    name: str  # as reported on the clip, e.g. "720p60"; "audio_only" for audio-only renditions
    url: str
    height: int | None
    bandwidth: int
    is_source: bool = False
    codec: str | None = None  # video codec: "h264", "h265", "av1" (others by family name); None if not listed
    frame_rate: float | None = None


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
    init_byterange: tuple[int, int] | None = None  # (offset, length) from #EXT-X-MAP's BYTERANGE
    init_changed: bool = False  # a different #EXT-X-MAP than the previous segment's: a new init section
    gap: bool = False  # #EXT-X-GAP: listed, but there is no media to fetch
    program_date_time: datetime | None = None  # wall clock of the first sample, from #EXT-X-PROGRAM-DATE-TIME
    muted_url: str | None = None  # of a Twitch "<n>-unmuted" segment: the "<n>-muted" twin, used if refused

    @property
    def end(self) -> float:
        return self.start + self.duration

    @property
    def starts_run(self) -> bool:
        """True if timestamps or the init section may change here: a join starts a new run at this segment."""
        return self.discontinuity or self.init_changed


@dataclass(frozen=True)
class MediaPlaylist:
    """A media playlist's segments; ``ended`` is False for a live (EVENT) VOD still growing."""

    url: str
    segments: tuple[Segment, ...]
    ended: bool
    target_duration: float
    ad_segments: int = 0  # stitched ad segments left out of the timeline

    @property
    def duration(self) -> float:
        return self.segments[-1].end if self.segments else 0.0


def is_master_playlist(text: str) -> bool:
    """True if ``text`` is an HLS master playlist (lists variants, not segments)."""
    return "#EXT-X-STREAM-INF" in text


def looks_like_playlist(head: bytes) -> bool:
    """True if the first bytes of a response are an M3U8 playlist rather than media."""
    return head.lstrip(b"\xef\xbb\xbf \r\n\t").startswith(b"#EXTM3U")


def _attributes(text: str) -> dict[str, str]:
    """An HLS attribute list (``KEY=value,KEY="quoted, value"``) as a dict, quotes removed."""
    return {key.upper(): value.strip('"') for key, value in _ATTRIBUTE.findall(text)}


def _video_codec(codecs: str) -> str | None:
    for entry in codecs.split(","):
        family = _CODEC_FAMILIES.get(entry.strip().lower()[:4])
        if family:
            return family
    return None


def _is_audio_label(label: str) -> bool:
    return "audio" in label.lower()


def _rendition(attrs: dict[str, str], url: str, video_names: dict[str, str]) -> Rendition:
    """Name and classify one ``#EXT-X-STREAM-INF`` variant, the way Twitch's player labels it."""
    group = attrs.get("VIDEO", "")
    names = (video_names.get(group), attrs.get("IVS-NAME"), attrs.get("STABLE-VARIANT-ID"), group)
    labels = [label for label in names if label]
    codecs = attrs.get("CODECS", "").lower()
    resolution = re.fullmatch(r"(\d+)x(\d+)", attrs.get("RESOLUTION", ""))
    try:
        bandwidth = int(attrs.get("BANDWIDTH", "0"))
    except ValueError:
        bandwidth = 0
    try:
        frame_rate = float(attrs["FRAME-RATE"]) if "FRAME-RATE" in attrs else None
    except ValueError:
        frame_rate = None
    codec = _video_codec(codecs)
    only_audio = bool(codecs) and codec is None and any(a in codecs for a in _AUDIO_CODECS)
    if any(_is_audio_label(label) for label in labels) or (resolution is None and only_audio):
        return Rendition("audio_only", url, None, bandwidth, False, None, None)
    height = int(resolution.group(2)) if resolution else None
    name = ""
    for label in labels:
        candidate = re.sub(r"\s*\(source\)\s*", "", label, flags=re.IGNORECASE).strip()
        match = _HEIGHT_IN_NAME.search(candidate)
        if match:
            name = candidate
            height = height or int(match.group(1))
            break
    if not name:
        rate = round(frame_rate) if frame_rate else 0
        name = f"{height}p{rate if rate > 30 else ''}" if height else (labels[0] if labels else "source")
    is_source = (group.lower() == "chunked" or any("source" in label.lower() for label in labels)
                 or attrs.get("IVS-VARIANT-SOURCE", "").lower() == "source"
                 or "/chunked/" in urlsplit(url).path)
    return Rendition(name, url, height, bandwidth, is_source, codec, frame_rate)


def parse_master(text: str, url: str) -> list[Rendition]:
    """Return the renditions of a master playlist, with absolute URLs.

    Old usher masters name variants in ``#EXT-X-MEDIA`` groups, usher v2 in
    ``IVS-NAME``/``STABLE-VARIANT-ID``; both are read. A file that also lists
    media segments is not a playlist anyone can play and is refused.
    """
    if re.search(r"^\s*#EXTINF", text, re.MULTILINE):
        raise InvalidMedia(_MIXED)
    video_names: dict[str, str] = {}
    renditions: list[Rendition] = []
    pending: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#EXT-X-MEDIA:"):
            attrs = _attributes(line[len("#EXT-X-MEDIA:"):])
            if attrs.get("TYPE") in ("VIDEO", "AUDIO") and attrs.get("GROUP-ID") and attrs.get("NAME"):
                video_names.setdefault(attrs["GROUP-ID"], attrs["NAME"])
        elif line.startswith("#EXT-X-STREAM-INF:"):
            pending = _attributes(line[len("#EXT-X-STREAM-INF:"):])
        elif not line.startswith("#") and pending is not None:
            renditions.append(_rendition(pending, urljoin(url, line), video_names))
            pending = None
    if not renditions:
        raise InvalidMedia("master playlist lists no variants")
    return renditions


def choose_rendition(renditions: list[Rendition], quality: str,
                     codecs: Sequence[str] | None = None) -> Rendition:
    """Pick the rendition for ``quality``: the nearest at or below the asked height.

    ``source`` is the source rendition (else the best); ``auto`` is the best at
    or below 720p; when nothing is at or below the asked height the smallest
    video is used. At one height, the higher frame rate wins, then the codec
    first in ``codecs`` (default :func:`cuttable_codecs`); renditions in other
    codecs are never chosen (a rendition that names no codec is taken as
    playable). Raises ``InvalidMedia`` if no video rendition is in ``codecs``.
    """
    order = tuple(codecs) if codecs is not None else cuttable_codecs()

    def codec_rank(rendition: Rendition) -> int:
        return order.index(rendition.codec) if rendition.codec in order else len(order)

    def best(rendition: Rendition) -> tuple:
        return (rendition.height or 0, round(rendition.frame_rate or 0), -codec_rank(rendition),
                rendition.bandwidth)

    audio = [r for r in renditions if r.name == "audio_only"]
    video = [r for r in renditions if r.name != "audio_only"]
    usable = [r for r in video if r.codec is None or r.codec in order]
    if video and not usable:
        offered = ", ".join(sorted({r.codec or "unknown" for r in video}))
        raise InvalidMedia(f"no rendition in a codec this worker can cut ({', '.join(order) or 'none'}); "
                           f"the master offers {offered}")
    smallest = min(usable, key=lambda r: (r.height or 0, codec_rank(r), r.bandwidth)) if usable else None
    if quality == "audio_only":
        return audio[0] if audio else smallest
    if not usable:
        return audio[0]
    if quality == "source":
        return max([r for r in usable if r.is_source] or usable, key=best)
    limit = AUTO_QUALITY_HEIGHT if quality == "auto" else int(quality.rstrip("p"))
    at_or_below = [r for r in usable if (r.height or 0) <= limit]
    return max(at_or_below, key=best) if at_or_below else smallest


def _parse_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.strip('"').replace("Z", "+00:00"))
    except ValueError:
        return None


def _seconds(value) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _ad_windows(playlist: m3u8.M3U8) -> list[_Window]:
    """The wall-clock spans of Twitch's stitched ads (``#EXT-X-DATERANGE``), read as streamlink does."""
    windows = []
    for item in playlist.segments:
        for daterange in item.dateranges:
            is_ad = (daterange.class_ == "twitch-stitched-ad"
                     or str(daterange.id or "").startswith("stitched-ad-")
                     or any(name.startswith("x_tv_twitch_ad_") for name, _ in daterange.x_client_attrs))
            start = _parse_date(daterange.start_date)
            if not is_ad or start is None:
                continue
            end = _parse_date(daterange.end_date)
            length = _seconds(daterange.duration) or _seconds(daterange.planned_duration)
            if end is None and length is not None:
                end = start + timedelta(seconds=length)
            windows.append((start, end))
    return windows


def _is_ad(item: m3u8.Segment, when: datetime | None, windows: list[_Window]) -> bool:
    if (item.title or "").startswith(_AD_TITLE_PREFIX):
        return True
    if when is None:
        return False
    return any(start <= when and (end is None or when < end) for start, end in windows)


def _byterange(value: str | None, uri: str, previous_end: dict[str, int]) -> tuple[int, int] | None:
    """``length[@offset]`` as (offset, length); with no offset, it follows the previous range of ``uri``."""
    if not value:
        return None
    length, _, offset = value.partition("@")
    try:
        start, size = (int(offset) if offset else previous_end.get(uri, 0)), int(length)
    except ValueError:
        raise InvalidMedia(f"invalid #EXT-X-BYTERANGE {value!r} for {uri}") from None
    previous_end[uri] = start + size
    return start, size


def _muted_twin(url: str) -> str | None:
    """The ``<n>-muted`` URL of a Twitch ``<n>-unmuted`` segment, query kept; None for other segments."""
    parts = urlsplit(url)
    if not _UNMUTED.search(parts.path):
        return None
    return urlunsplit(parts._replace(path=_UNMUTED.sub(r"-muted\1", parts.path)))


def parse_media(text: str, url: str) -> MediaPlaylist:
    """Return the segments of a media playlist placed on the VOD's timeline.

    Twitch's stitched ad segments (a ``twitch-stitched-ad`` date range, or an
    EXTINF title starting "Amazon") are left out, the segment after them marked
    as a discontinuity. A trailing ``#EXTINF`` without a URI (a live playlist
    cut mid-write) is dropped. Raises ``InvalidMedia`` for anything that cannot
    be cut: a master playlist, encryption, a segment without a duration.
    """
    try:
        playlist = m3u8.loads(text, uri=url)
    except Exception as exc:  # the library raises assorted types on malformed tags
        raise InvalidMedia(f"cannot read the media playlist {url}: {exc.__class__.__name__}: {exc}") from exc
    if playlist.is_variant:
        if playlist.segments:
            raise InvalidMedia(_MIXED)
        raise InvalidMedia("expected a media playlist, got a master playlist")
    items = [item for item in playlist.segments if item.uri]
    for item in items:
        key = item.key
        if key is not None and (key.method or "NONE").upper() != "NONE":
            # Segments would be cut as ciphertext: a broken clip, not a clip.
            raise InvalidMedia(f"encrypted VODs are not supported (EXT-X-KEY METHOD={key.method})")
    try:
        segments, ads = _timeline(playlist, items)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:  # a tag the library half-read
        raise InvalidMedia(f"cannot read the media playlist {url}: {exc.__class__.__name__}: {exc}") from exc
    ended = bool(playlist.is_endlist) or (playlist.playlist_type or "").lower() == "vod"
    return MediaPlaylist(url, tuple(segments), ended, float(playlist.target_duration or 0), ads)


def _timeline(playlist: m3u8.M3U8, items: list[m3u8.Segment]) -> tuple[list[Segment], int]:
    """The segments placed end to end, stitched ads left out; and how many ads were."""
    windows = _ad_windows(playlist)
    segments: list[Segment] = []
    start = 0.0
    sequence = playlist.media_sequence or 0
    previous_end: dict[str, int] = {}
    previous_init: tuple[str, tuple[int, int] | None] | None = None
    after_ad = False
    ads = 0
    for index, item in enumerate(items):
        when = item.current_program_date_time
        if _is_ad(item, when, windows):
            ads += 1
            after_ad = True
            continue
        duration = float(item.duration or 0.0)
        if duration <= 0:
            raise InvalidMedia(f"segment {item.uri} has no EXTINF duration")
        segment_url = item.absolute_uri
        byterange = _byterange(item.byterange, segment_url, previous_end)
        init_url = init_byterange = None
        if item.init_section is not None:
            init_url = item.init_section.absolute_uri
            init_byterange = _byterange(item.init_section.byterange, init_url, {})
        init = (init_url, init_byterange) if init_url else None
        segments.append(Segment(
            url=segment_url, start=start, duration=duration, sequence=sequence + index,
            init_url=init_url, byterange=byterange, discontinuity=bool(item.discontinuity) or after_ad,
            muted=bool(_MUTED.search(urlsplit(segment_url).path)), init_byterange=init_byterange,
            init_changed=bool(segments) and init != previous_init, gap=bool(item.gap_tag),
            program_date_time=when, muted_url=_muted_twin(segment_url),
        ))
        previous_init = init
        after_ad = False
        start += duration
    return segments, ads


def select_segments(playlist: MediaPlaylist, start_time: float, end_time: float) -> list[Segment]:
    """Return the segments overlapping ``[start_time, end_time)``; raise ``RangeNotInVod`` if it lies outside.

    A segment ending exactly at ``start_time`` is not needed; one starting
    exactly at ``end_time`` is not either. A range that needs a segment marked
    ``#EXT-X-GAP`` (listed, with no media) raises ``InvalidMedia``.
    """
    if start_time < 0 or end_time <= start_time:
        raise RangeNotInVod(f"invalid range {start_time}-{end_time}")
    if playlist.ended and end_time > playlist.duration + 1e-6:
        raise RangeNotInVod(
            f"range {start_time:.3f}-{end_time:.3f}s ends after the VOD ({playlist.duration:.3f}s)"
        )
    needed = [s for s in playlist.segments if s.end > start_time + 1e-9 and s.start < end_time - 1e-9]
    for segment in needed:
        if segment.gap:
            raise InvalidMedia(
                f"range {start_time:.3f}-{end_time:.3f}s needs segment {segment.sequence} "
                f"({segment.start:.3f}-{segment.end:.3f}s), which the playlist marks as a gap (#EXT-X-GAP): "
                "the VOD has no media there"
            )
    return needed


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
