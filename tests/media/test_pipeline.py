"""Work started while the segments download: the fetch order, and early work the cut really uses."""

from __future__ import annotations

import math

import pytest

from clipqueue.media.cut import cut_clip
from clipqueue.media.fetch import Fetcher
from clipqueue.media.pipeline import SegmentPipeline
from clipqueue.media.h264 import parameter_sets
from clipqueue.media.packets import probe_streams
from clipqueue.media.playlist import select_segments, parse_media
from clipqueue.media.source import LocalSource, join_segments
from clipqueue.media.timeline import build_timeline, select_frames
from samplevod.frames import read_frame_ids
from clipqueue.urlpolicy import SourcePolicy

from .conftest import FPS, media_segments

POLICY = SourcePolicy(allow_private=True)


def _served(server, segment) -> bytes:
    return (server._server.root / "ts/360p" / segment.url.rsplit("/", 1)[1]).read_bytes()


def test_segments_asked_for_first_are_fetched_first_when_each_takes_a_connection(fresh_server, tmp_path):
    segments = list(media_segments(fresh_server)[:4])
    arrived = []
    with Fetcher(POLICY, concurrency=1, retries=1, timeout=5, max_bytes=10**9) as fetcher:
        fetcher.fetch_segments(segments, tmp_path, on_segment=lambda index, fetched: arrived.append(index),
                               first=(0, 3))
    assert arrived == [0, 3, 1, 2]


def test_each_split_segment_is_reported_once_and_whole(fresh_server, tmp_path):
    segments = list(media_segments(fresh_server)[:4])
    fresh_server.behaviour.latency = 0.01
    reported = {}

    def on_segment(index, fetched):
        assert index not in reported
        reported[index] = fetched.path.read_bytes()  # read now: the file must already be complete

    with Fetcher(POLICY, concurrency=8, retries=1, timeout=5, max_bytes=10**9) as fetcher:
        fetcher.fetch_segments(segments, tmp_path, on_segment=on_segment, first=(0, 3))
    assert sorted(reported) == [0, 1, 2, 3]
    for index, segment in enumerate(segments):
        assert reported[index] == _served(fresh_server, segment)
    assert fresh_server.stats.requests > len(segments)  # split into byte ranges


def _fetch_with_pipeline(server, scratch, start: float, end: float):
    """Fetch the 720p segments of ``start``-``end`` feeding a SegmentPipeline, as extract_clip does; return
    the open pipeline, the joined source and what the pipeline prepared."""
    text = (server._server.root / "ts/360p/index.m3u8").read_text()
    segments = select_segments(parse_media(text, f"{server.url}/ts/360p/index.m3u8"), start, end)
    pipeline = SegmentPipeline(segments, start, end, scratch)
    assert pipeline.first == tuple(dict.fromkeys((0, len(segments) - 1)))
    with Fetcher(POLICY, concurrency=8, retries=1, timeout=5, max_bytes=10**9) as fetcher:
        fetched = fetcher.fetch_segments(segments, scratch / "segments", on_segment=pipeline.segment_fetched,
                                         first=pipeline.first)
    source = join_segments(fetched, scratch / "source")
    return pipeline, source, pipeline.prepared(source)


def _exact(path, start: float, end: float) -> bool:
    return read_frame_ids(path) == list(range(math.ceil(start * FPS - 0.5), math.ceil(end * FPS - 0.5)))


@pytest.mark.parametrize("start,end", [(7.3, 33.5), (12.4, 17.1)])
def test_the_cut_uses_the_listing_and_encodes_prepared_while_segments_downloaded(
        fresh_server, tmp_path, start, end):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    pipeline, source, prepared = _fetch_with_pipeline(fresh_server, scratch, start, end)
    with pipeline:
        assert prepared.streams == probe_streams(source.path)  # the joined listings are the file's
        assert prepared.file_headers == parameter_sets(source.path)
        timeline = build_timeline(prepared.streams, source)
        first, _ = select_frames(timeline, start, end)
        assert timeline.pts[first] in {key[0] for key in prepared.encodes}  # the head, from the first segment
        early = [part[0] for part in (job.result() for job in prepared.encodes.values()) if part is not None]
        assert early and all(path.exists() for path in early)
        result = cut_clip(source, start, end, "accurate", tmp_path / "clip.mp4", scratch, prepared=prepared)
    assert result.method == "smart_cut"
    assert not any(path.exists() for path in early)  # the cut took the early encodes instead of its own
    assert _exact(tmp_path / "clip.mp4", start, end)


def test_an_early_encode_that_fails_leaves_its_frames_to_the_cut(fresh_server, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "early-head.ts").mkdir()  # FFmpeg cannot write the early head there
    pipeline, source, prepared = _fetch_with_pipeline(fresh_server, scratch, 7.3, 33.5)
    with pipeline:
        assert [job.result() for job in prepared.encodes.values()].count(None) == 1
        result = cut_clip(source, 7.3, 33.5, "accurate", tmp_path / "clip.mp4", scratch, prepared=prepared)
    assert result.method == "smart_cut"
    assert _exact(tmp_path / "clip.mp4", 7.3, 33.5)


def test_a_copy_or_an_fmp4_source_prepares_nothing(fresh_server, tmp_path):
    ts = list(media_segments(fresh_server)[:2])
    fmp4 = list(media_segments(fresh_server, "fmp4/360p")[:2])
    with SegmentPipeline(ts, 1.0, 12.0, tmp_path, smart_cut=False) as pipeline:
        assert pipeline.first == ()
    with SegmentPipeline(fmp4, 1.0, 12.0, tmp_path) as pipeline:
        assert pipeline.first == ()
        assert pipeline.prepared(LocalSource(tmp_path / "missing.ts", 0.0)) is None
