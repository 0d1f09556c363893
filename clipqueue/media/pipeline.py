"""Start cutting while the segments still download.

Fetching a clip's segments takes about as long as cutting them, and while
the network works the CPU waits. For an accurate cut the fetcher is asked
for the first and last segments before the others; each segment is probed
as soon as it is on disk, and the frames the cut must re-encode in the first
and last (the head, from the clip's start to its first keyframe, and the
tail, after its last clean copy point) are encoded from that segment alone
while the rest still downloads. The segments' packet listings, joined, are
the joined file's: the cut needs no probe of its own.

All of it is speculative: the cut uses an early encode only when it covers
exactly the frames the cut chose from the whole file and its headers match
(see :func:`clipqueue.media.cut.cut_accurate`); otherwise the cut does the
work itself as if nothing had been prepared.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from clipqueue.exceptions import ClipqueueError
from clipqueue.media.cut import Prepared
from clipqueue.media.encode import encode_frames
from clipqueue.media.fetch import FetchedSegment
from clipqueue.media.h264 import ParameterSets, matching_encoder, parameter_sets, rate_control
from clipqueue.media.packets import Streams, join_streams, probe_streams
from clipqueue.media.playlist import Segment
from clipqueue.media.source import LocalSource
from clipqueue.media.timeline import (
    Timeline,
    build_timeline,
    closed_points,
    key_indices,
    select_frames,
    splices_cleanly,
)

log = logging.getLogger(__name__)

Part = tuple[Path, ParameterSets]


@dataclass(frozen=True)
class Basis:
    """What the early encodes share, from the first segment: its timeline and the matching encoder."""

    timeline: Timeline
    encoder: list[str]


class SegmentPipeline:
    """Early head and tail encodes of an accurate cut, fed by :meth:`Fetcher.fetch_segments`'s ``on_segment``.

    Use as a context manager around fetching and cutting: leaving it waits for
    whatever is still running. ``smart_cut`` says the cut will be an accurate
    cut of video. Does nothing (``first`` is empty, ``prepared`` returns None)
    otherwise, or for segments it cannot read alone: fMP4, byte ranges of a
    larger file, or discontinuities.
    """

    def __init__(self, segments: list[Segment], start_time: float, end_time: float, scratch: Path,
                 smart_cut: bool = True):
        self.start_time = start_time
        self.end_time = end_time
        self.scratch = scratch
        self.last = len(segments) - 1
        self.enabled = smart_cut and bool(segments) and all(
            s.init_url is None and s.byterange is None and not (s.discontinuity and i)
            for i, s in enumerate(segments))
        self._pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="early-cut")
        self._lock = threading.Lock()
        self._landed: dict[int, LocalSource] = {}
        self._probes: dict[int, Future] = {}
        self._headers: Future | None = None
        self._basis: Future | None = None
        self._tail: Future | None = None
        self._encodes: dict[tuple[float, float], Future] = {}

    @property
    def first(self) -> tuple[int, ...]:
        """The segments to fetch before the others."""
        return tuple(dict.fromkeys((0, self.last))) if self.enabled else ()

    def __enter__(self) -> SegmentPipeline:
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.scratch / "early", ignore_errors=True)

    def segment_fetched(self, index: int, fetched: FetchedSegment) -> None:
        """``on_segment`` for the fetcher: probe the segment, and start the early encode it allows."""
        if not self.enabled:
            return
        # Our own name for the segment's bytes: joining the segments removes theirs.
        own = self.scratch / "early" / f"{index:05d}.ts"
        try:
            own.parent.mkdir(exist_ok=True)
            os.link(fetched.path, own)
        except OSError as exc:  # early work is an optimization: without it the cut does everything
            log.warning("no early work on this clip: %s", exc)
            self.enabled = False
            return
        with self._lock:
            self._landed[index] = LocalSource(own, fetched.segment.start)
            self._probes[index] = self._pool.submit(probe_streams, own)
            if index == 0:
                self._headers = self._pool.submit(parameter_sets, own)
                self._basis = self._pool.submit(self._start_head, self._landed[0])
            if index in (0, self.last) and {0, self.last} <= self._landed.keys():
                # The second of the two has landed: the tail needs the first segment's timeline.
                self._tail = self._pool.submit(self._start_tail, self._landed[self.last])

    def _start_head(self, source: LocalSource) -> Basis | None:
        """Choose the encoder from the first segment; encode the head if the first keyframe is in it."""
        try:
            streams = self._probes[0].result()
            headers = self._headers.result()
            if not streams.video or streams.codec != "h264":
                return None
            timeline = build_timeline(streams, source)
            encoder = matching_encoder(headers, streams, timeline)
            first, _ = select_frames(timeline, self.start_time, self.end_time)
        except ClipqueueError as exc:  # the cut probes the joined file and reports what is wrong
            log.debug("no early encodes: %s", exc)
            return None
        if encoder is None:
            return None
        basis = Basis(timeline, encoder + rate_control(streams, source.path, timeline))
        keys = key_indices(streams, timeline)
        inner = next((k for k in keys if k >= first), None)
        if inner is not None and inner > first and splices_cleanly(streams, timeline, inner):
            self._start(source, streams, timeline, (first, inner - 1), basis, "head")
        return basis

    def _start_tail(self, source: LocalSource) -> None:
        """Start encoding the tail from the last segment: the frames after the last clean copy point."""
        basis = self._basis.result()
        if basis is None:
            return
        try:
            streams = self._probes[self.last].result()
            # On the first segment's timeline: the mapping the cut uses for the joined file.
            timeline = Timeline(sorted(p.pts for p in streams.video), basis.timeline.zero,
                                basis.timeline.offset, basis.timeline.frame)
            _, last = select_frames(timeline, self.start_time, self.end_time)
        except ClipqueueError as exc:
            log.debug("no early tail: %s", exc)
            return
        keys = key_indices(streams, timeline)
        key = max((k for k in keys if k <= last), default=None)
        if key is None or not splices_cleanly(streams, timeline, key):
            return
        copy_end = max(p for p in closed_points(streams, timeline, key) if p <= last)
        if copy_end < last:
            self._start(source, streams, timeline, (copy_end + 1, last), basis, "tail")

    def _start(self, source: LocalSource, streams: Streams, timeline: Timeline,
               frames: tuple[int, int], basis: Basis, name: str) -> None:
        key = (timeline.pts[frames[0]], timeline.pts[frames[1]])
        encode = self._pool.submit(self._encode, source, streams, timeline, frames, basis.encoder,
                                   self.scratch / f"early-{name}.ts")
        with self._lock:
            self._encodes[key] = encode

    @staticmethod
    def _encode(source: LocalSource, streams: Streams, timeline: Timeline,
                frames: tuple[int, int], encoder: list[str], out: Path) -> Part | None:
        try:
            return out, encode_frames(source, streams, timeline, frames[0], frames[1], encoder, out)
        except Exception as exc:  # speculative: the cut encodes these frames itself
            log.debug("early encode of %s failed: %s", out.name, exc)
            return None

    def prepared(self, joined: LocalSource) -> Prepared | None:
        """What the cut of ``joined`` (the segments joined in order) can use; None if nothing."""
        if not self.enabled or len(self._landed) != self.last + 1:
            return None
        try:
            headers = self._headers.result() if self._headers else ParameterSets()
            parts, offset = [], 0
            for index in sorted(self._landed):
                parts.append((self._probes[index].result(), offset))
                offset += self._landed[index].path.stat().st_size
            for started in (self._basis, self._tail):
                if started is not None:
                    started.result()
        except Exception as exc:  # speculative: the cut probes the joined file and reports what is wrong
            log.debug("segment probes unusable: %s", exc)
            return None
        streams = join_streams(parts) if offset == joined.path.stat().st_size else None
        with self._lock:
            return Prepared(streams, headers, dict(self._encodes))
