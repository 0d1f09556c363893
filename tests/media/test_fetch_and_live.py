"""Fetching against a real local server that fails, and waiting for live VODs."""

from __future__ import annotations

import threading

import pytest

from clipqueue.exceptions import LiveVodTimeout, SourceNotFound, SourceUnavailable
from clipqueue.media.extract import ClipRequest, ExtractOptions, extract_clip
from clipqueue.media.fetch import Fetcher
from samplevod.frames import read_frame_ids
from samplevod.server import serve_directory
from samplevod.vod import append_live_segments, generate_hls_vod
from clipqueue.urlpolicy import SourcePolicy

from .conftest import FPS, media_segments

POLICY = SourcePolicy(allow_private=True)


def test_segments_failing_with_503_are_retried_until_they_succeed(fresh_server, tmp_path):
    segments = list(media_segments(fresh_server)[:3])
    fresh_server.behaviour.fail_first.update({"/ts/360p/0.ts": 2, "/ts/360p/1.ts": 1})
    with Fetcher(POLICY, concurrency=4, retries=3, timeout=5, max_bytes=10**9) as fetcher:
        fetched = fetcher.fetch_segments(segments, tmp_path)
    for item in fetched:
        name = item.segment.url.rsplit("/", 1)[1]
        assert item.path.read_bytes() == (fresh_server._server.root / "ts/360p" / name).read_bytes()
    assert fresh_server.stats.statuses[503] == 3


def test_segment_failing_more_often_than_the_retries_raises_source_unavailable(fresh_server, tmp_path):
    fresh_server.behaviour.fail_first["/ts/360p/0.ts"] = 5
    with Fetcher(POLICY, concurrency=2, retries=1, timeout=5, max_bytes=10**9) as fetcher:
        with pytest.raises(SourceUnavailable):
            fetcher.fetch_segments(list(media_segments(fresh_server)[:2]), tmp_path)


def test_missing_segment_fails_at_once_without_retries(fresh_server, tmp_path):
    fresh_server.behaviour.not_found.add("/ts/360p/1.ts")
    with Fetcher(POLICY, concurrency=2, retries=3, timeout=5, max_bytes=10**9) as fetcher:
        with pytest.raises(SourceNotFound):
            fetcher.fetch_segments(list(media_segments(fresh_server)[:2]), tmp_path)
    assert fresh_server.stats.by_path["/ts/360p/1.ts"] == 1


def test_stalled_segment_times_out_and_is_fetched_again(fresh_server, tmp_path):
    fresh_server.behaviour.stall["/ts/360p/0.ts"] = 3
    # One connection: the segment is fetched whole, not split into byte ranges that would stall too.
    with Fetcher(POLICY, concurrency=1, retries=2, timeout=0.5, max_bytes=10**9) as fetcher:
        with pytest.raises(SourceUnavailable):
            fetcher.fetch_segments(list(media_segments(fresh_server)[:1]), tmp_path)
    assert fresh_server.stats.by_path["/ts/360p/0.ts"] == 3  # first try and two retries


def test_few_segments_are_split_into_byte_ranges_and_reassembled(fresh_server, tmp_path):
    segment = media_segments(fresh_server)[0]
    with Fetcher(POLICY, concurrency=4, retries=0, timeout=5, max_bytes=10**9) as fetcher:
        fetched = fetcher.fetch_segments([segment], tmp_path)
    assert fetched[0].path.read_bytes() == (fresh_server._server.root / "ts/360p/0.ts").read_bytes()
    assert fresh_server.stats.statuses[206] > 1


def test_fetch_budget_stops_a_source_larger_than_allowed(fresh_server, tmp_path):
    with Fetcher(POLICY, concurrency=2, retries=0, timeout=5, max_bytes=1000) as fetcher:
        with pytest.raises(Exception) as caught:
            fetcher.fetch_segments(list(media_segments(fresh_server)[:1]), tmp_path)
    assert "limit" in str(caught.value)


@pytest.fixture(scope="module")
def live_vod(tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    master = generate_hls_vod(root, duration=40, variants=(("240p", 426, 240, 400_000),), live=True,
                              live_segments=1, fps=FPS)
    with serve_directory(root) as server:
        yield master, server


def test_live_vod_waits_for_segments_published_after_the_request(live_vod, tmp_path):
    master, server = live_vod
    options = ExtractOptions(policy=POLICY, live_poll_interval=0.2, live_wait_deadline=20)
    timer = threading.Timer(0.6, append_live_segments, args=(master, 1))
    timer.start()
    try:
        result = extract_clip(ClipRequest(f"{server.url}/master.m3u8", 12.0, 18.0), tmp_path, options)
    finally:
        timer.cancel()
    assert read_frame_ids(result.path)[0] == 12 * FPS


def test_live_vod_that_never_reaches_the_end_times_out(live_vod, tmp_path):
    master, server = live_vod
    options = ExtractOptions(policy=POLICY, live_poll_interval=0.1, live_wait_deadline=0.5)
    with pytest.raises(LiveVodTimeout):
        extract_clip(ClipRequest(f"{server.url}/master.m3u8", 35.0, 39.0), tmp_path, options)
