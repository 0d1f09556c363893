"""The host's segment cache: one fetch per segment across processes, never a partial body, bounded."""

from __future__ import annotations

import multiprocessing
import os
import socket
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from clipqueue.exceptions import SourceUnavailable
from clipqueue.media.fetch import Fetcher
from clipqueue.media.segcache import SegmentCache, cache_key
from clipqueue.urlpolicy import SourcePolicy

from .conftest import media_segments

POLICY = SourcePolicy(allow_private=True)


def _fetch_in_process(segments, cache_root: str, dest: str, barrier, results) -> None:
    cache = SegmentCache(cache_root, max_bytes=10**9, ttl_seconds=600)
    barrier.wait(timeout=30)
    with Fetcher(POLICY, concurrency=4, retries=1, timeout=10, max_bytes=10**9, cache=cache) as fetcher:
        fetched = fetcher.fetch_segments(segments, Path(dest))
        results.put((fetcher.bytes_fetched, [item.path.read_bytes() for item in fetched],
                     vars(fetcher.cache_stats)))


def test_processes_wanting_the_same_segments_at_once_fetch_each_one_once(fresh_server, tmp_path):
    segments = list(media_segments(fresh_server)[1:4])
    fresh_server.behaviour.latency = 0.3  # every process asks while the first fetches are under way
    processes = 4
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_fetch_in_process, args=(segments, str(tmp_path / "cache"),
                                                               str(tmp_path / f"job{n}"), barrier, results))
               for n in range(processes)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(10)
        assert worker.exitcode == 0
    folder = fresh_server._server.root / "ts/360p"
    expected = [(folder / s.url.rsplit("/", 1)[1]).read_bytes() for s in segments]
    assert all(bodies == expected for _, bodies, _ in outcomes)
    assert fresh_server.stats.bytes_sent == sum(len(body) for body in expected)  # each byte crossed once
    assert sum(fetched for fetched, _, _ in outcomes) == sum(len(body) for body in expected)
    stats = [s for _, _, s in outcomes]
    assert sum(s["misses"] for s in stats) == 3
    assert sum(s["hits"] + s["coalesced"] for s in stats) == 3 * (processes - 1)
    assert sum(s["coalesced"] for s in stats) > 0  # some waited for a fetch in flight rather than fetching


class _Truncating(BaseHTTPRequestHandler):
    """Serves ``body`` with its full Content-Length but hangs up halfway through the first ``cut`` times."""

    protocol_version = "HTTP/1.1"
    body = os.urandom(300_000)
    cut = 1
    requests = 0

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        type(self).requests += 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        if type(self).requests <= self.cut:
            self.wfile.write(self.body[: len(self.body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(self.body)


@pytest.fixture
def truncating():
    _Truncating.requests, _Truncating.cut = 0, 1
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Truncating)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/seg.ts"
    server.shutdown()
    server.server_close()


def _segment(url: str):
    from clipqueue.media.playlist import Segment

    return Segment(url=url, start=0.0, duration=2.0, sequence=0)


def test_a_body_cut_short_is_never_cached_and_a_retry_caches_the_whole(truncating, tmp_path):
    cache = SegmentCache(tmp_path / "cache", max_bytes=10**9, ttl_seconds=600)
    with Fetcher(POLICY, concurrency=1, retries=0, timeout=5, max_bytes=10**9, cache=cache) as fetcher:
        with pytest.raises(SourceUnavailable):
            fetcher.fetch_segments([_segment(truncating)], tmp_path / "job1")
    assert cache.size() == 0 and cache.take(cache_key(truncating), tmp_path / "probe") is None
    with Fetcher(POLICY, concurrency=1, retries=0, timeout=5, max_bytes=10**9, cache=cache) as fetcher:
        [fetched] = fetcher.fetch_segments([_segment(truncating)], tmp_path / "job2")
    assert fetched.path.read_bytes() == _Truncating.body
    assert cache.size() == len(_Truncating.body)


def test_a_job_waiting_for_a_fetch_that_fails_fetches_itself(truncating, tmp_path):
    cache = SegmentCache(tmp_path / "cache", max_bytes=10**9, ttl_seconds=600)
    _Truncating.cut = 0
    other = cache.claim(cache_key(truncating))  # another process is fetching it...
    assert other is not None
    threading.Timer(0.5, other.release).start()  # ...and gives up without publishing anything
    began = time.monotonic()
    with Fetcher(POLICY, concurrency=2, retries=0, timeout=5, max_bytes=10**9, cache=cache) as fetcher:
        [fetched] = fetcher.fetch_segments([_segment(truncating)], tmp_path / "job")
    assert time.monotonic() - began >= 0.5  # it waited rather than raced
    assert fetched.path.read_bytes() == _Truncating.body
    assert _Truncating.requests == 1 and vars(fetcher.cache_stats)["misses"] == 1


def _publish(cache: SegmentCache, tmp_path: Path, name: str, size: int) -> str:
    body = tmp_path / f"{name}.body"
    body.write_bytes(name.encode()[:1] * size)
    cache.publish(cache_key(name), body, size)
    return cache_key(name)


def test_the_cache_keeps_to_its_size_dropping_the_least_recently_used(tmp_path):
    cache = SegmentCache(tmp_path / "cache", max_bytes=30_000, ttl_seconds=600)
    keys = [_publish(cache, tmp_path, name, 10_000) for name in ("a", "b", "c")]
    time.sleep(0.05)
    assert cache.take(keys[0], tmp_path / "reader-a") == 10_000  # "a" used again: "b" is now the oldest
    time.sleep(0.05)
    _publish(cache, tmp_path, "d", 10_000)
    assert cache.size() <= 30_000
    assert cache.take(keys[1], tmp_path / "x") is None
    assert cache.take(keys[0], tmp_path / "y") == 10_000
    # A reader's file outlives its eviction: it holds a link of its own.
    for name in "efgh":
        _publish(cache, tmp_path, name, 10_000)
    assert cache.take(keys[0], tmp_path / "z") is None
    assert (tmp_path / "reader-a").read_bytes() == b"a" * 10_000
    # A body larger than the whole cache is not kept.
    big = tmp_path / "big.body"
    big.write_bytes(b"x" * 40_000)
    assert cache.publish(cache_key("big"), big, 40_000) is False


def test_bodies_expire_after_their_ttl_and_a_wrong_size_is_never_published(tmp_path):
    cache = SegmentCache(tmp_path / "cache", max_bytes=10**6, ttl_seconds=0.3)
    key = _publish(cache, tmp_path, "a", 1000)
    assert cache.take(key, tmp_path / "fresh") == 1000
    time.sleep(0.4)
    assert cache.take(key, tmp_path / "stale") is None
    cache.sweep()
    assert cache.size() == 0
    body = tmp_path / "short.body"
    body.write_bytes(b"s" * 999)
    assert cache.publish(cache_key("short"), body, 1000) is False and cache.size() == 0


def test_renditions_and_byte_ranges_never_share_a_key(fresh_server, tmp_path):
    url = media_segments(fresh_server)[0].url
    assert len({cache_key(url), cache_key(url, (0, 1000)), cache_key(url, (1000, 1000)),
                cache_key(url.replace("360p", "240p"))}) == 4
    cache = SegmentCache(tmp_path / "cache", max_bytes=10**9, ttl_seconds=600)
    root = fresh_server._server.root / "ts"
    whole = (root / "360p/0.ts").read_bytes()
    for variant in ("ts/360p", "ts/240p"):
        with Fetcher(POLICY, concurrency=2, retries=0, timeout=5, max_bytes=10**9, cache=cache) as fetcher:
            segments = list(media_segments(fresh_server, variant)[:2])
            fetched = fetcher.fetch_segments(segments, tmp_path / variant)
        for item in fetched:
            name = item.segment.url.rsplit("/", 1)[1]
            assert item.path.read_bytes() == (root / variant.split("/")[1] / name).read_bytes()
    ranges = [replace(media_segments(fresh_server)[0], byterange=(offset, 4 * 188))
              for offset in (0, 4 * 188, 0)]
    with Fetcher(POLICY, concurrency=2, retries=0, timeout=5, max_bytes=10**9, cache=cache) as fetcher:
        fetched = fetcher.fetch_segments(ranges, tmp_path / "ranges")
        stats = vars(fetcher.cache_stats)
    assert stats["misses"] == 2 and stats["hits"] + stats["coalesced"] == 1  # the third is the first again
    assert [item.path.read_bytes() for item in fetched] == [whole[:752], whole[752:1504], whole[:752]]


def test_init_sections_and_segments_of_fmp4_come_from_the_cache_the_second_time(fresh_server, tmp_path):
    cache = SegmentCache(tmp_path / "cache", max_bytes=10**9, ttl_seconds=600)
    segments = list(media_segments(fresh_server, "fmp4/360p")[:2])
    runs = []
    for job in ("first", "second"):
        with Fetcher(POLICY, concurrency=4, retries=0, timeout=5, max_bytes=10**9, cache=cache) as fetcher:
            fetched = fetcher.fetch_segments(segments, tmp_path / job)
            runs.append((fetcher.bytes_fetched, vars(fetcher.cache_stats),
                         [(item.init_path.read_bytes(), item.path.read_bytes()) for item in fetched]))
    (first_bytes, first_stats, first_bodies), (second_bytes, second_stats, second_bodies) = runs
    assert first_stats["misses"] == 3 and first_bytes > 0  # the init section and two segments
    assert second_stats == {"hits": 3, "coalesced": 0, "misses": 0, "bytes_saved": first_bytes}
    assert second_bytes == 0 and second_bodies == first_bodies
