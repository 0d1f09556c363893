"""Fetching against a real local server that fails, and waiting for live VODs."""

from __future__ import annotations

import os
import threading

import pytest

from clipqueue.exceptions import LiveVodTimeout, SourceNotFound, SourceUnavailable
from clipqueue.media.extract import ClipRequest, ExtractOptions, extract_clip
from clipqueue.media.fetch import Fetcher
from clipqueue.media.playlist import muted_ranges, parse_media
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


def _unmuted_vod(root, sizes: dict[str, int]) -> str:
    """Random files of the given sizes under ``root``; a playlist of 0.ts, 1-unmuted.ts and 2-unmuted.ts."""
    for name, size in sizes.items():
        (root / name).write_bytes(os.urandom(size))
    listed = "".join(f"#EXTINF:10.000,\n{name}\n" for name in ("0.ts", "1-unmuted.ts", "2-unmuted.ts"))
    return f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n{listed}#EXT-X-ENDLIST\n"


def test_unmuted_segment_answering_403_is_fetched_as_its_muted_twin_and_reported_muted(tmp_path):
    root = tmp_path / "vod"
    root.mkdir()
    text = _unmuted_vod(root, {"0.ts": 1000, "1-unmuted.ts": 1000, "1-muted.ts": 1001, "2-muted.ts": 1002})
    with serve_directory(root, forbidden={"/1-unmuted.ts"}) as server:
        segments = list(parse_media(text, f"{server.url}/index-dvr.m3u8").segments)
        # One connection: segments go in order, so the second "-unmuted" one follows the first's refusal.
        with Fetcher(POLICY, concurrency=1, retries=2, timeout=5, max_bytes=10**9) as fetcher:
            fetched = fetcher.fetch_segments(segments, tmp_path / "out")
        names = [item.segment.url.rsplit("/", 1)[1] for item in fetched]
        assert names == ["0.ts", "1-muted.ts", "2-muted.ts"]
        assert [item.segment.muted for item in fetched] == [False, True, True]
        for item in fetched:
            assert item.path.read_bytes() == (root / item.segment.url.rsplit("/", 1)[1]).read_bytes()
        assert server.stats.statuses[403] == 1  # refused once, not retried
        assert server.stats.by_path["/1-unmuted.ts"] == 1 and server.stats.by_path["/2-unmuted.ts"] == 0
        assert muted_ranges([item.segment for item in fetched], 5, 25) == [(5.0, 20.0)]


def test_unmuted_segment_that_twitch_serves_is_fetched_with_its_sound(tmp_path):
    root = tmp_path / "vod"
    root.mkdir()
    text = _unmuted_vod(root, {"0.ts": 1000, "1-unmuted.ts": 1000, "1-muted.ts": 1001, "2-unmuted.ts": 1002,
                               "2-muted.ts": 1003})
    with serve_directory(root) as server:
        segments = list(parse_media(text, f"{server.url}/index-dvr.m3u8").segments)
        with Fetcher(POLICY, concurrency=2, retries=0, timeout=5, max_bytes=10**9) as fetcher:
            fetched = fetcher.fetch_segments(segments, tmp_path / "out")
        assert [item.segment for item in fetched] == segments
        assert fetched[1].path.read_bytes() == (root / "1-unmuted.ts").read_bytes()
        assert server.stats.by_path["/1-muted.ts"] == 0 and server.stats.by_path["/2-muted.ts"] == 0


def test_unmuted_segment_split_into_byte_ranges_falls_back_to_its_muted_twin_whole(tmp_path):
    root = tmp_path / "vod"
    root.mkdir()
    (root / "1-muted.ts").write_bytes(os.urandom(3 * 1024 * 1024))
    text = "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.000,\n1-unmuted.ts\n#EXT-X-ENDLIST\n"
    with serve_directory(root, forbidden={"/1-unmuted.ts"}) as server:
        segments = list(parse_media(text, f"{server.url}/index-dvr.m3u8").segments)
        with Fetcher(POLICY, concurrency=4, retries=0, timeout=5, max_bytes=10**9) as fetcher:
            fetched = fetcher.fetch_segments(segments, tmp_path / "out")
        assert fetched[0].segment.muted and fetched[0].path.read_bytes() == (root / "1-muted.ts").read_bytes()
        assert server.stats.statuses[206] > 1  # the twin was still spread over the connections


def test_muted_twin_missing_too_fails_with_the_twins_error(tmp_path):
    root = tmp_path / "vod"
    root.mkdir()
    text = _unmuted_vod(root, {"0.ts": 1000})
    with serve_directory(root, forbidden={"/1-unmuted.ts"}) as server:
        segments = list(parse_media(text, f"{server.url}/index-dvr.m3u8").segments)[:2]
        with Fetcher(POLICY, concurrency=1, retries=0, timeout=5, max_bytes=10**9) as fetcher:
            with pytest.raises(SourceNotFound, match="1-muted.ts"):
                fetcher.fetch_segments(segments, tmp_path / "out")


def test_single_file_fmp4_fetches_its_init_section_and_segment_by_their_byte_ranges(tmp_path):
    root = tmp_path / "vod"
    root.mkdir()
    data = os.urandom(5000)
    (root / "main.mp4").write_bytes(data)
    text = ('#EXTM3U\n#EXT-X-TARGETDURATION:6\n#EXT-X-MAP:URI="main.mp4",BYTERANGE="718@0"\n'
            "#EXTINF:6.006,\n#EXT-X-BYTERANGE:3000@718\nmain.mp4\n#EXT-X-ENDLIST\n")
    with serve_directory(root) as server:
        segments = list(parse_media(text, f"{server.url}/index.m3u8").segments)
        with Fetcher(POLICY, concurrency=2, retries=0, timeout=5, max_bytes=10**9) as fetcher:
            fetched = fetcher.fetch_segments(segments, tmp_path / "out")
    assert fetched[0].init_path.read_bytes() == data[:718]
    assert fetched[0].path.read_bytes() == data[718:3718]
