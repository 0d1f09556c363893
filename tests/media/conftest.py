"""Fixtures for media tests: generated VODs (B-frames, 2 s GOPs, numbered frames) and a real local server."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipqueue.media.extract import ExtractOptions
from clipqueue.media.playlist import Segment, parse_media
from samplevod.server import serve_directory
from samplevod.vod import generate_hls_vod, generate_progressive_mp4
from clipqueue.urlpolicy import SourcePolicy

FPS = 30
MUTED_SEGMENT = 2


def media_segments(server, variant: str = "ts/360p") -> tuple[Segment, ...]:
    """The segments of one of ``server``'s media playlists."""
    text = (server._server.root / variant / "index.m3u8").read_text()
    return parse_media(text, f"{server.url}/{variant}/index.m3u8").segments


@pytest.fixture(scope="session")
def media_root(tmp_path_factory) -> Path:
    """A folder holding every generated source, served by ``server``."""
    root = tmp_path_factory.mktemp("media-root")
    generate_hls_vod(root / "ts", duration=40, muted_segments=[MUTED_SEGMENT], fps=FPS)
    generate_hls_vod(root / "fmp4", duration=40, fmp4=True, muted_segments=[MUTED_SEGMENT], fps=FPS)
    generate_progressive_mp4(root / "source.mp4", duration=20, fps=FPS)
    # Enhanced Broadcasting-like renditions, small so they encode in seconds: HEVC (x265, 4 B-frames,
    # 2 s GOPs) in fMP4 with closed GOPs as hardware encoders make them and in MPEG-TS with x265's
    # default open GOPs; AV1 (SVT-AV1) in fMP4.
    small_variants = (("180p", 320, 180, 250_000),)
    generate_hls_vod(root / "hevc", duration=18, segment_seconds=6, variants=small_variants, fmp4=True,
                     codec="hevc", fps=FPS)
    generate_hls_vod(root / "hevc-open-gop", duration=18, segment_seconds=6, variants=small_variants,
                     codec="hevc", open_gop=True, fps=FPS)
    generate_hls_vod(root / "av1", duration=18, segment_seconds=6, variants=small_variants, fmp4=True,
                     codec="av1", fps=FPS)
    return root


@pytest.fixture(scope="session")
def server(media_root):
    with serve_directory(media_root) as running:
        yield running


@pytest.fixture
def fresh_server(server):
    """The shared server with its counters reset and no injected failures left over."""
    server.stats.reset()
    behaviour = server.behaviour
    behaviour.fail_first.clear()
    behaviour.not_found.clear()
    behaviour.stall.clear()
    behaviour.latency = 0.0
    yield server
    behaviour.fail_first.clear()
    behaviour.not_found.clear()
    behaviour.stall.clear()


@pytest.fixture
def options() -> ExtractOptions:
    """Options allowing loopback sources (the test server), with quick retries."""
    return ExtractOptions(policy=SourcePolicy(allow_private=True), fetch_timeout=5.0,
                          live_poll_interval=0.2, live_wait_deadline=10.0)
