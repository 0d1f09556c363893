"""Extract a clip from a VOD: resolve the source, fetch what the range needs, cut it.

This is the media layer's entry point for workers; it knows nothing of
Celery, Flask or storage.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from clipqueue import defaults
from clipqueue.exceptions import ClipqueueError, InvalidMedia, LiveVodTimeout, RangeNotInVod, SourceRejected
from clipqueue.media.cut import cut_clip
from clipqueue.media.fetch import Fetcher, LoopbackRelay
from clipqueue.media.pipeline import SegmentPipeline
from clipqueue.media.probe import EXPECTED_SOURCE, describe_non_media
from clipqueue.media.segcache import CACHE_FOLDER, CacheStats, SegmentCache
from clipqueue.media.source import fetch_progressive_window, join_segments
from clipqueue.media.twitch import TwitchConfig, TwitchLink, TwitchResolver, parse_twitch_link
from clipqueue.media.playlist import (
    QUALITIES,
    MediaPlaylist,
    choose_rendition,
    cuttable_codecs,
    is_master_playlist,
    looks_like_playlist,
    muted_ranges,
    parse_master,
    parse_media,
    select_segments,
)
from clipqueue.urlpolicy import SourcePolicy, check_playlist_text, check_url

log = logging.getLogger(__name__)

MODES = ("accurate", "copy")
StageCallback = Callable[[str, int], None]


@dataclass(frozen=True)
class ClipRequest:
    """What to cut: a time range of a VOD, in seconds from its start."""

    source_url: str
    start_time: float
    end_time: float
    quality: str = "auto"  # source|1080p|720p|480p|360p|160p|audio_only|auto
    mode: str = "accurate"  # accurate|copy


@dataclass(frozen=True)
class ExtractOptions:
    """Limits and tuning of one extraction; defaults come from :mod:`clipqueue.defaults`."""

    policy: SourcePolicy = field(default_factory=SourcePolicy)
    fetch_concurrency: int = defaults.FETCH_CONCURRENCY
    fetch_retries: int = defaults.FETCH_RETRIES
    fetch_timeout: float = defaults.FETCH_TIMEOUT_SECONDS
    max_segments: int = defaults.MAX_SEGMENTS
    max_fetch_bytes: int = defaults.MAX_FETCH_BYTES
    max_output_bytes: int = defaults.MAX_OUTPUT_BYTES
    live_wait_deadline: float = defaults.LIVE_WAIT_DEADLINE_SECONDS
    live_poll_interval: float = defaults.LIVE_POLL_SECONDS
    max_redirects: int = defaults.SOURCE_MAX_REDIRECTS
    twitch: TwitchConfig = field(default_factory=TwitchConfig)
    thumbnail: bool = False  # also make ``workdir/thumbnail.jpg`` from a frame of the clip, beside the cut
    # The host's segment cache (clipqueue.media.segcache): off (0 bytes) unless asked for.
    segment_cache_dir: str = ""
    segment_cache_bytes: int = 0
    segment_cache_ttl: float = defaults.SEGMENT_CACHE_TTL_SECONDS

    @classmethod
    def from_settings(cls, settings: Any, thumbnail: bool = False) -> ExtractOptions:
        """The options a :class:`clipqueue.config.Settings` describes (its source policy, fetch and size limits)."""
        return cls(
            policy=SourcePolicy.from_settings(settings),
            fetch_concurrency=settings.fetch_concurrency,
            fetch_retries=settings.fetch_retries,
            fetch_timeout=settings.fetch_timeout_seconds,
            max_segments=settings.max_segments,
            max_fetch_bytes=settings.max_fetch_bytes,
            max_output_bytes=settings.max_output_bytes,
            live_wait_deadline=settings.live_wait_deadline_seconds,
            live_poll_interval=settings.live_poll_seconds,
            max_redirects=settings.source_max_redirects,
            twitch=TwitchConfig.from_settings(settings),
            thumbnail=thumbnail,
            # Beside the scratch folder, on the same disk (hard links), but not in it: what is in it
            # belongs to one job and goes with it.
            segment_cache_dir=settings.segment_cache_dir or os.path.join(
                os.path.dirname(os.path.abspath(settings.scratch_dir)) if settings.scratch_dir
                else tempfile.gettempdir(), CACHE_FOLDER),
            segment_cache_bytes=settings.segment_cache_bytes,
            segment_cache_ttl=settings.segment_cache_ttl_seconds,
        )

    def segment_cache(self) -> SegmentCache | None:
        """The segment cache these options describe; None when it is off."""
        if self.segment_cache_bytes <= 0:
            return None
        try:
            return SegmentCache(self.segment_cache_dir, self.segment_cache_bytes, self.segment_cache_ttl)
        except OSError as exc:  # a folder it may not make costs the sharing, never the clip
            log.warning("no segment cache: %s", exc)
            return None


@dataclass(frozen=True)
class ExtractResult:
    """The finished clip and where it really lies in the VOD."""

    path: Path
    quality_used: str
    actual_start_time: float
    actual_end_time: float
    duration: float
    width: int | None
    height: int | None
    size_bytes: int
    muted_ranges: list[tuple[float, float]]
    method: str  # "smart_cut", "reencode" or "copy"
    bytes_fetched: int
    codec: str | None = None  # the clip's video codec ("h264", "hevc", "av1"); None for audio only
    thumbnail: Path | None = None  # made when asked for and the source allowed; else make it from ``path``
    cache_stats: CacheStats = field(default_factory=CacheStats)  # what the segment cache saved


def _validate(request: ClipRequest) -> None:
    if request.mode not in MODES:
        raise SourceRejected(f"unknown mode {request.mode!r}; expected one of {', '.join(MODES)}")
    if request.quality not in QUALITIES:
        raise SourceRejected(f"unknown quality {request.quality!r}; expected one of {', '.join(QUALITIES)}")
    if request.start_time < 0 or request.end_time <= request.start_time:
        raise RangeNotInVod(f"invalid range {request.start_time}-{request.end_time}")


def _is_playlist_url(url: str) -> bool:
    return urlsplit(url).path.lower().endswith((".m3u8", ".m3u"))


def get_playlist(fetcher: Fetcher, url: str, options: ExtractOptions) -> tuple[str, str]:
    """Fetch a playlist and refuse it if any entry (segment, variant, map, key, any ``URI=``) is forbidden.

    Returns its text and final URL.
    """
    text, final_url = fetcher.get_text(url)
    head = text[:256].encode()
    if not looks_like_playlist(head):
        raise InvalidMedia(f"got {describe_non_media(head) or 'something else'} at {url}, {EXPECTED_SOURCE}")
    check_playlist_text(text, final_url, options.policy)
    return text, final_url


def twitch_master(link: TwitchLink, options: ExtractOptions) -> tuple[str, str]:
    """Resolve a Twitch link to its VOD's master playlist (text, URL), vetted by the source policy."""
    with TwitchResolver(options.twitch) as resolver:
        resolved = resolver.resolve(link)
    check_url(resolved.master_url, options.policy)
    check_playlist_text(resolved.master_text, resolved.master_url, options.policy)
    return resolved.master_text, resolved.master_url


def wait_for_range(fetcher: Fetcher, playlist: MediaPlaylist, end_time: float,
                   options: ExtractOptions) -> MediaPlaylist:
    """Return ``playlist`` once it reaches ``end_time``, re-reading a live (EVENT) playlist until then.

    Waiting is not a failed attempt; after ``live_wait_deadline`` seconds it
    raises ``LiveVodTimeout``.
    """
    deadline = time.monotonic() + options.live_wait_deadline
    while not playlist.ended and playlist.duration < end_time:
        if time.monotonic() + options.live_poll_interval > deadline:
            raise LiveVodTimeout(
                f"live VOD reached {playlist.duration:.1f}s, not the clip's end {end_time:.1f}s, "
                f"within {options.live_wait_deadline:.0f}s"
            )
        time.sleep(options.live_poll_interval)
        playlist = parse_media(*get_playlist(fetcher, playlist.url, options))
    return playlist


def extract_clip(request: ClipRequest, workdir: Path, options: ExtractOptions = ExtractOptions(),
                 on_stage: StageCallback | None = None) -> ExtractResult:
    """Cut ``request`` out of its VOD into ``workdir/clip.mp4`` and describe the result.

    ``on_stage(stage, progress)`` is called with "fetching" then "cutting"
    and a progress of 0-100. Raises the classes of :mod:`clipqueue.exceptions`.
    """
    _validate(request)
    stage = on_stage or (lambda name, progress: None)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = workdir / "extract-tmp"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    output = workdir / "clip.mp4"
    stage("fetching", 0)
    try:
        with contextlib.ExitStack() as stack:
            fetcher = stack.enter_context(Fetcher(options.policy, options.fetch_concurrency, options.fetch_retries,
                                                  options.fetch_timeout, options.max_fetch_bytes,
                                                  options.max_redirects, cache=options.segment_cache()))
            url = request.source_url
            link = parse_twitch_link(url)
            twitch = twitch_master(link, options) if link is not None else None
            head = None if twitch or _is_playlist_url(url) else fetcher.head_bytes(url)
            if head is None or looks_like_playlist(head):
                text, url = twitch or get_playlist(fetcher, url, options)
                quality_used = None  # a media playlist names no rendition: reported from the clip below
                if is_master_playlist(text):
                    rendition = choose_rendition(parse_master(text, url), request.quality,
                                                 cuttable_codecs(options.twitch.supported_codecs))
                    quality_used = rendition.name
                    text, url = get_playlist(fetcher, rendition.url, options)
                playlist = wait_for_range(fetcher, parse_media(text, url), request.end_time, options)
                segments = select_segments(playlist, request.start_time, request.end_time)
                if not segments:
                    raise RangeNotInVod(f"no segment of the VOD overlaps {request.start_time}-{request.end_time}")
                if len(segments) > options.max_segments:
                    raise RangeNotInVod(f"the range needs {len(segments)} segments, more than {options.max_segments}")
                pipeline = stack.enter_context(SegmentPipeline(
                    segments, request.start_time, request.end_time, scratch,
                    smart_cut=request.mode == "accurate" and request.quality != "audio_only"))
                fetched = fetcher.fetch_segments(
                    segments, scratch / "segments",
                    on_progress=lambda done, total: stage("fetching", min(99, 100 * done // max(1, total))),
                    on_segment=pipeline.segment_fetched, first=pipeline.first,
                )
                segments = [item.segment for item in fetched]  # as fetched: "-unmuted" may have come muted
                source = join_segments(fetched, scratch / "source")
                prepared = pipeline.prepared(source)
            else:
                wrong = describe_non_media(head)
                if wrong is not None:
                    raise InvalidMedia(f"got {wrong} at {url}, {EXPECTED_SOURCE}")
                quality_used = "source"
                with LoopbackRelay(fetcher, url) as relay:
                    try:
                        source = fetch_progressive_window(relay.url, request.start_time, request.end_time,
                                                          scratch / "source", options.fetch_timeout)
                    except ClipqueueError:
                        relay.raise_upstream_error()  # the source's failure, not FFmpeg's view of it
                        raise
                    relay.raise_upstream_error()
                segments, prepared = [], None
            bytes_fetched = fetcher.bytes_fetched
            stage("fetching", 100)
            stage("cutting", 0)
            clip = cut_clip(source, request.start_time, request.end_time, request.mode, output, scratch,
                            on_progress=lambda progress: stage("cutting", progress),
                            thumbnail=workdir / "thumbnail.jpg" if options.thumbnail else None,
                            prepared=prepared, audio_only=request.quality == "audio_only")
        if clip.size_bytes > options.max_output_bytes:
            output.unlink(missing_ok=True)
            raise SourceRejected(f"clip is {clip.size_bytes} bytes, more than {options.max_output_bytes}")
        stage("cutting", 100)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if clip.width is None:
        quality_used = "audio_only"
    elif quality_used is None:
        quality_used = f"{clip.height}p"
    return ExtractResult(
        path=output, quality_used=quality_used,
        actual_start_time=clip.actual_start, actual_end_time=clip.actual_end,
        duration=clip.duration, width=clip.width, height=clip.height, size_bytes=clip.size_bytes,
        muted_ranges=muted_ranges(segments, clip.actual_start, clip.actual_end), method=clip.method,
        bytes_fetched=bytes_fetched, thumbnail=clip.thumbnail, codec=clip.codec, cache_stats=fetcher.cache_stats,
    )
