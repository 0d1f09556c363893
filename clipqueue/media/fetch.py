"""Fetch playlists and segments over HTTP: checked, bounded, retried, streamed to disk.

Every request goes through :func:`clipqueue.media.http.open_checked`: each URL and
redirect hop is checked and the connection goes to the very address that was
checked (no second DNS lookup). Segments
are fetched in parallel over a pool of keep-alive connections; when there
are fewer segments than connections and the server accepts ranges, segments
are split into byte ranges so every connection is busy. Bodies are streamed
to disk, so memory does not grow with the clip. With a
:class:`~clipqueue.media.segcache.SegmentCache`, each segment and init section
is taken from the host's cache when another job fetched it, or fetched once
for all the jobs of the host that want it at the same time.

FFmpeg never fetches a source itself (it would resolve names and follow
redirects on its own): progressive files reach it through a
:class:`LoopbackRelay`, which serves that one URL on 127.0.0.1 through this
module's checked fetches.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

from clipqueue.exceptions import (
    ClipqueueError,
    InvalidMedia,
    SourceNotFound,
    SourceRejected,
    SourceUnavailable,
    TransientError,
)
from clipqueue.media.http import MAX_REDIRECTS, checked_session, open_checked
from clipqueue.media.playlist import Segment
from clipqueue.media.segcache import CacheStats, Claim, SegmentCache, cache_key
from clipqueue.urlpolicy import SourcePolicy

MAX_PLAYLIST_BYTES = 8 * 1024 * 1024
STREAM_CHUNK_BYTES = 256 * 1024
RANGE_PART_MIN_BYTES = 512 * 1024  # below this a byte range is not worth its own request
BACKOFF_BASE_SECONDS = 0.25
BACKOFF_MAX_SECONDS = 4.0


def error_for_status(url: str, status: int) -> ClipqueueError:
    """Map an HTTP error status to the exception class that decides retries."""
    if status in (404, 410):
        return SourceNotFound(f"source answered {status} for {url}")
    if status == 429 or status >= 500:
        return SourceUnavailable(f"source answered {status} for {url}")
    return SourceRejected(f"source answered {status} for {url}")


def retry_delay(attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): exponential, capped."""
    return min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt - 1))


@dataclass(frozen=True)
class FetchedSegment:
    """A segment on disk; fMP4 segments need their ``init_path`` in front to be read.

    ``segment`` is the one fetched: for a Twitch ``-unmuted`` segment that was
    refused, its ``-muted`` twin, marked muted. The files may be hard links
    into the segment cache: read or unlink them, never write into them.
    """

    segment: Segment
    path: Path
    init_path: Path | None = None


class Fetcher:
    """An HTTP client for one job: a keep-alive pool, a byte budget and a count of bytes fetched."""

    def __init__(self, policy: SourcePolicy, concurrency: int, retries: int, timeout: float, max_bytes: int,
                 max_redirects: int = MAX_REDIRECTS, cache: SegmentCache | None = None):
        self.policy = policy
        self.max_redirects = max_redirects
        self.concurrency = max(1, concurrency)
        self.retries = max(0, retries)
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._bytes = 0
        self._unmuted_refused = False  # once an "-unmuted" segment is refused, "-muted" twins are fetched
        self._session = checked_session(pool_maxsize=self.concurrency + 2)
        self.cache = cache
        self.cache_stats = CacheStats()

    @property
    def bytes_fetched(self) -> int:
        return self._bytes

    def _cache_wait_seconds(self) -> float:
        # As long as another process's fetch of one body may take before its own retries give up.
        return (self.retries + 1) * (self.timeout + BACKOFF_MAX_SECONDS)

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> "Fetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _count(self, size: int) -> None:
        with self._lock:
            self._bytes += size
            over = self._bytes > self.max_bytes
        if over:
            raise InvalidMedia(f"source needs more than the {self.max_bytes} byte fetch limit")

    def _open(self, url: str, headers: dict[str, str] | None = None) -> requests.Response:
        """GET ``url`` from the checked address, each redirect hop checked; the response is unread."""
        try:
            response = open_checked(self._session, url, self.policy, headers=headers,
                                    timeout=self.timeout, max_redirects=self.max_redirects)
        except requests.RequestException as exc:
            raise SourceUnavailable(f"cannot fetch {url}: {exc.__class__.__name__}: {exc}") from exc
        if response.status_code >= 400:
            response.close()
            raise error_for_status(response.url, response.status_code)
        return response

    def _with_retries(self, action: Callable[[], object]):
        attempt = 0
        while True:
            try:
                return action()
            except TransientError:
                attempt += 1
                if attempt > self.retries:
                    raise
                time.sleep(retry_delay(attempt))

    def get_text(self, url: str) -> tuple[str, str]:
        """Return a playlist's text and its final URL (after redirects), with retries."""

        def fetch() -> tuple[str, str]:
            response = self._open(url)
            with response:
                body = bytearray()
                try:
                    for chunk in response.iter_content(STREAM_CHUNK_BYTES):
                        body += chunk
                        if len(body) > MAX_PLAYLIST_BYTES:
                            raise InvalidMedia(f"{url} is larger than {MAX_PLAYLIST_BYTES} bytes: not a playlist")
                except requests.RequestException as exc:
                    raise SourceUnavailable(f"reading {url} failed: {exc}") from exc
                self._count(len(body))
                return body.decode("utf-8", errors="replace"), response.url

        return self._with_retries(fetch)

    def head_bytes(self, url: str, count: int = 64) -> bytes:
        """Return the first ``count`` bytes of ``url`` (to tell a playlist from a media file)."""

        def fetch() -> bytes:
            response = self._open(url, {"Range": f"bytes=0-{count - 1}"})
            with response:
                try:
                    data = response.raw.read(count)
                except Exception as exc:  # urllib3 raises several unrelated types on a broken read
                    raise SourceUnavailable(f"reading {url} failed: {exc}") from exc
            self._count(len(data))
            return data

        return self._with_retries(fetch)

    def _download_range(self, url: str, path: Path, file_offset: int, first: int | None, last: int | None,
                        on_total: Callable[[int], None] | None = None) -> int | None:
        """Write bytes ``first..last`` of ``url`` at ``file_offset`` in ``path``; return the declared size.

        That is the whole resource's size (``Content-Range``) for a 206, its
        ``Content-Length`` for a 200, None if it told neither.

        ``on_total(size)`` is called as soon as the headers tell the size, before
        the body is read. Raises ``SourceUnavailable`` on a short or broken body
        so the caller retries.
        """
        headers = None
        if first is not None:
            headers = {"Range": f"bytes={first}-{'' if last is None else last}"}
        response = self._open(url, headers)
        with response:
            total = None
            if response.status_code == 206:
                content_range = response.headers.get("Content-Range", "")
                total_text = content_range.rpartition("/")[2]
                total = int(total_text) if total_text.isdigit() else None
            elif first:
                raise SourceRejected(f"{url} ignored a byte range request")
            if total is not None and on_total is not None:
                on_total(total)
                on_total = None
            expected = response.headers.get("Content-Length")
            expected = int(expected) if expected and expected.isdigit() else None
            if expected is not None and self._bytes + expected > self.max_bytes:
                raise InvalidMedia(f"{url} would exceed the {self.max_bytes} byte fetch limit")
            written = 0
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                for chunk in response.iter_content(STREAM_CHUNK_BYTES):
                    os.pwrite(fd, chunk, file_offset + written)
                    written += len(chunk)
                    self._count(len(chunk))
            except requests.RequestException as exc:
                raise SourceUnavailable(f"reading {url} failed after {written} bytes: {exc}") from exc
            finally:
                os.close(fd)
            if expected is not None and written != expected:
                raise SourceUnavailable(f"{url}: got {written} of {expected} bytes")
            if response.status_code == 200:
                total = expected
            return total

    def _take_cached(self, key: str, path: Path, coalesced: bool = False) -> int | None:
        """Put the cached body of ``key`` at ``path`` and count it; its size, None if the cache has none."""
        size = self.cache.take(key, path) if self.cache is not None else None
        if size is not None:
            with self._lock:
                if coalesced:
                    self.cache_stats.coalesced += 1
                else:
                    self.cache_stats.hits += 1
                self.cache_stats.bytes_saved += size
        return size

    def _publish(self, key: str, path: Path, declared: int | None) -> None:
        """Count a body fetched from the source, and keep it in the cache if its size is the one declared."""
        with self._lock:
            self.cache_stats.misses += 1
        if self.cache is not None and declared is not None:
            self.cache.publish(key, path, declared)

    def _through_cache(self, key: str, path: Path,
                       stop: Callable[[], bool] = lambda: False) -> tuple[Claim | None, int | None]:
        """Look ``key`` up for ``path``: (None, size) when the cache had it or another fetch brought it,
        else (claim, None) to fetch it and publish, or (None, None) to fetch it after waiting in vain.

        Another process fetching it now is waited for rather than raced.
        """
        size = self._take_cached(key, path)
        if size is not None:
            return None, size
        claim = self.cache.claim(key)
        coalesced = claim is None
        if coalesced:
            claim = self.cache.wait_claim(key, self._cache_wait_seconds(), stop)
        # Published by a fetch that ended between the look-up and the lock, or during the wait.
        size = self._take_cached(key, path, coalesced=coalesced)
        if size is not None and claim is not None:
            claim.release()
            claim = None
        return claim, size

    def _fetch_body(self, url: str, byterange: tuple[int, int] | None, path: Path) -> None:
        """Fetch ``url`` (or ``byterange`` of it) into ``path`` in one request, through the cache if any."""
        first_byte, last_byte = (byterange[0], sum(byterange) - 1) if byterange else (None, None)

        def download() -> int | None:
            declared = self._with_retries(lambda: self._download_range(url, path, 0, first_byte, last_byte))
            return byterange[1] if byterange else declared

        if self.cache is None:
            download()
            return
        key = cache_key(url, byterange)
        claim, size = self._through_cache(key, path)
        if size is not None:
            return
        try:
            self._publish(key, path, download())
        finally:
            if claim is not None:
                claim.release()

    def fetch_segments(self, segments: list[Segment], dest: Path,
                       on_progress: Callable[[int, int], None] | None = None,
                       on_segment: Callable[[int, FetchedSegment], None] | None = None,
                       first: tuple[int, ...] = ()) -> list[FetchedSegment]:
        """Download ``segments`` into ``dest`` in parallel; return them in playlist order.

        fMP4 init sections are fetched once per distinct URL.
        ``on_progress(done, total)`` is called as parts complete, in bytes
        fetched over bytes needed (the sizes not known yet are taken as the
        mean of those known), and
        ``on_segment(index, fetched)`` (from a fetch thread) as each segment is
        whole. The segments at the indices ``first`` are fetched before the
        others, one after the other with every connection, so work on them can
        start while the rest arrives.
        """
        dest.mkdir(parents=True, exist_ok=True)
        init_paths: dict[tuple[str, tuple[int, int] | None], Path] = {}
        for init in dict.fromkeys((s.init_url, s.init_byterange) for s in segments if s.init_url):
            init_path = dest / f"init-{len(init_paths)}.mp4"
            self._fetch_body(*init, init_path)
            init_paths[init] = init_path
        results = [
            FetchedSegment(segment, dest / f"{index:05d}.seg",
                           init_paths.get((segment.init_url, segment.init_byterange)))
            for index, segment in enumerate(segments)
        ]
        # Twitch lists "<n>-unmuted" segments that often answer 403 while "<n>-muted" works: the first
        # is tried (it has the sound, when Twitch still serves it), the muted twin fetched if refused.
        urls = [segment.url for segment in segments]
        leading = [i for i in dict.fromkeys(first) if 0 <= i < len(segments)]
        trailing = [i for i in range(len(segments)) if i not in leading]
        split = len(segments) < self.concurrency

        def parts_for(index: int) -> int:
            # With few segments, each is split so that every connection is busy: each
            # leading one has all of them, then the rest share them.
            return (self.concurrency if index in leading else math.ceil(self.concurrency / len(trailing))) if split else 1

        lock = threading.Lock()
        done = 0
        total_parts = len(segments)
        start_bytes = self._bytes
        reused = 0  # bytes taken from the segment cache
        sizes: list[int | None] = [s.byterange[1] if s.byterange else None for s in segments]
        declared: list[int | None] = [None] * len(segments)  # the sizes the source declared
        claims: dict[int, Claim] = {}  # segments this job fetches for the host's cache
        taken: set[int] = set()  # segments the cache gave
        stopping = threading.Event()

        def bytes_progress() -> tuple[int, int]:
            known = [size for size in sizes if size is not None]
            if not known:
                return done, total_parts
            needed = sum(known) + sum(known) * (len(sizes) - len(known)) // len(known)
            return min(self._bytes - start_bytes + reused, needed), needed
        outstanding = [1] * len(segments)  # parts of each segment not yet written
        waiting_for = list(leading) if split else []  # leading segments whose size is not known yet, in order

        def part_scheduled(index: int, count: int) -> None:
            nonlocal total_parts
            with lock:
                total_parts += count
                outstanding[index] += count

        def part_done(index: int) -> None:
            nonlocal done
            if outstanding[index] == 1 and sizes[index] is None:
                sizes[index] = results[index].path.stat().st_size
            with lock:
                done += 1
                outstanding[index] -= 1
                whole = outstanding[index] == 0
                snapshot = bytes_progress()
            if whole and self.cache is not None and index not in taken:
                self._publish(key_of(index), results[index].path, declared[index])
                claim = claims.pop(index, None)
                if claim is not None:
                    claim.release()
            if on_progress:
                on_progress(*snapshot)
            if whole and on_segment:
                on_segment(index, results[index])

        def key_of(index: int) -> str:
            return cache_key(urls[index], segments[index].byterange)

        def fetched_as(index: int) -> None:
            segment = segments[index]
            if urls[index] != segment.url:
                muted = replace(segment, url=urls[index], muted=True)
                results[index] = replace(results[index], segment=muted)

        # Claims are let go once their segment is published, or at the very end (after the threads).
        with contextlib.ExitStack() as held, \
                ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="fetch") as pool, \
                ThreadPoolExecutor(max(1, len(segments)), thread_name_prefix="cache-wait") as waiters:
            pending: set[Future] = set()

            def submit(fn, *args, executor=pool) -> None:
                with lock:
                    pending.add(executor.submit(fn, *args))

            def leading_sized(index: int) -> None:
                # Once a leading segment's parts are queued, queue the next leading segment
                # behind them, and after the last one the others.
                with lock:
                    if index not in waiting_for:
                        return
                    waiting_for.remove(index)
                    following = waiting_for[:1] or trailing
                for other in following:
                    submit(fetch_segment, other)

            def fetch_rest(index: int, size: int, start: int) -> None:
                # The first part told us the size; spread the rest over the idle connections.
                remaining = size - start
                parts = max(1, min(parts_for(index) - 1, remaining // RANGE_PART_MIN_BYTES))
                step = math.ceil(remaining / parts)
                ranges = [(first, min(size, first + step) - 1) for first in range(start, size, step)]
                part_scheduled(index, len(ranges))
                for first, last in ranges:
                    submit(fetch_part, index, first, last)

            def fetch_part(index: int, first: int, last: int) -> None:
                url, path = urls[index], results[index].path
                self._with_retries(lambda: self._download_range(url, path, first, first, last))
                part_done(index)

            def first_request(index: int, download: Callable[[str], object]) -> None:
                # A refused "-unmuted" segment is fetched as its muted twin; later ones go to theirs at once.
                segment = segments[index]
                if segment.muted_url and self._unmuted_refused:
                    urls[index] = segment.muted_url
                try:
                    declared[index] = self._with_retries(lambda: download(urls[index]))
                except (SourceRejected, SourceNotFound):
                    if not segment.muted_url or urls[index] == segment.muted_url:
                        raise
                    self._unmuted_refused = True
                    urls[index] = segment.muted_url
                    declared[index] = self._with_retries(lambda: download(urls[index]))
                fetched_as(index)

            def fetch_whole(index: int) -> None:
                segment, path = segments[index], results[index].path
                if segment.byterange:
                    offset, length = segment.byterange
                    last = offset + length - 1
                    first_request(index, lambda url: self._download_range(url, path, 0, offset, last))
                    declared[index] = length  # the 206's Content-Length, checked
                elif split:
                    # The first part's headers tell the size: the rest is spread over idle
                    # connections while this one still reads (once, whatever the retries).
                    first_size = RANGE_PART_MIN_BYTES
                    scheduled = []

                    def schedule_rest(size: int) -> None:
                        sizes[index] = size
                        if not scheduled and size > first_size:
                            scheduled.append(size)
                            fetch_rest(index, size, first_size)
                        leading_sized(index)

                    first_request(index, lambda url: self._download_range(url, path, 0, 0, first_size - 1,
                                                                          schedule_rest))
                else:
                    first_request(index, lambda url: self._download_range(url, path, 0, None, None))
                leading_sized(index)
                part_done(index)

            def from_cache(index: int, size: int) -> None:
                nonlocal reused
                claim = claims.pop(index, None)
                if claim is not None:
                    claim.release()
                with lock:
                    reused += size
                    taken.add(index)
                sizes[index] = size
                fetched_as(index)
                leading_sized(index)
                part_done(index)

            def fetch_segment(index: int) -> None:
                # Through the cache: taken from it, or fetched here and published, or (when another
                # process fetches it now) waited for on a thread of its own, never on a connection's.
                if self.cache is None:
                    return fetch_whole(index)
                segment = segments[index]
                if segment.muted_url and self._unmuted_refused:
                    urls[index] = segment.muted_url
                key, path = key_of(index), results[index].path
                size = self._take_cached(key, path)
                if size is None:
                    claim = self.cache.claim(key)
                    if claim is None:
                        return submit(wait_for_other, index, executor=waiters)
                    hold(index, claim)
                    size = self._take_cached(key, path)  # published between the look-up and the lock
                if size is not None:
                    return from_cache(index, size)
                fetch_whole(index)

            def wait_for_other(index: int) -> None:
                claim, size = self._through_cache(key_of(index), results[index].path, stopping.is_set)
                if size is not None:
                    return from_cache(index, size)
                if not stopping.is_set():
                    if claim is not None:
                        hold(index, claim)
                    submit(fetch_whole, index)

            def hold(index: int, claim: Claim) -> None:
                claims[index] = claim
                held.callback(claim.release)

            for index in waiting_for[:1] or leading + trailing:
                submit(fetch_segment, index)
            try:
                while True:
                    with lock:
                        snapshot = list(pending)
                    if not snapshot:
                        break
                    finished, _ = wait(snapshot, return_when=FIRST_EXCEPTION)
                    with lock:
                        pending.difference_update(finished)
                    for future in finished:
                        future.result()
            except BaseException:
                stopping.set()
                with lock:
                    for future in pending:
                        future.cancel()
                raise
        return results


class _RelayHandler(BaseHTTPRequestHandler):
    server: "_RelayServer"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:
        relay = self.server.relay
        if self.path != LoopbackRelay.PATH:
            self.send_error(404)
            return
        headers = {"Range": self.headers["Range"]} if self.headers.get("Range") else None
        try:
            response = relay.fetcher._with_retries(lambda: relay.fetcher._open(relay.source_url, headers))
        except ClipqueueError as exc:
            relay.record(exc)
            self.send_error(404 if isinstance(exc, SourceNotFound) else 502)
            return
        with response:
            self.send_response(response.status_code)
            for name in ("Content-Type", "Content-Length", "Content-Range", "Accept-Ranges"):
                if name in response.headers:
                    self.send_header(name, response.headers[name])
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for chunk in response.iter_content(STREAM_CHUNK_BYTES):
                    relay.fetcher._count(len(chunk))
                    self.wfile.write(chunk)
            except (requests.RequestException, ClipqueueError) as exc:
                relay.record(exc if isinstance(exc, ClipqueueError)
                             else SourceUnavailable(f"reading {relay.source_url} failed: {exc}"))
            except OSError:
                pass  # FFmpeg hung up, e.g. to seek elsewhere: not the source's fault


class _RelayServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, relay: "LoopbackRelay"):
        super().__init__(("127.0.0.1", 0), _RelayHandler)
        self.relay = relay


class LoopbackRelay:
    """Serve one source URL at ``http://127.0.0.1:<port>/source`` for FFmpeg, for as long as the ``with`` lasts.

    Every request FFmpeg sends (byte ranges included) is made again through the
    job's :class:`Fetcher`: checked, pinned to the checked address, counted in
    its byte budget. A failure upstream is kept: call :meth:`raise_upstream_error`
    after FFmpeg is done, since FFmpeg may take a cut-short body for the end of
    the file.
    """

    PATH = "/source"

    def __init__(self, fetcher: Fetcher, source_url: str):
        self.fetcher = fetcher
        self.source_url = source_url
        self._error: ClipqueueError | None = None
        self._lock = threading.Lock()
        self._server = _RelayServer(self)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}{self.PATH}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="source-relay", daemon=True)

    def record(self, error: ClipqueueError) -> None:
        with self._lock:
            self._error = self._error or error

    def raise_upstream_error(self) -> None:
        """Raise the first failure met while fetching the source, if any."""
        if self._error is not None:
            raise self._error

    def __enter__(self) -> "LoopbackRelay":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
