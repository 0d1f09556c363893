"""Video frames on the VOD's timeline: which frames a range holds, where keyframes and clean copy points are.

Frames are indexed in display order (a :class:`Timeline`'s ``pts``);
packets in :class:`~clipqueue.media.packets.Streams` are in decode order.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clipqueue.exceptions import RangeNotInVod
from clipqueue.media.packets import Streams

if TYPE_CHECKING:
    from clipqueue.media.source import LocalSource


@dataclass(frozen=True)
class Timeline:
    """Video frames in display order, mapped to VOD time."""

    pts: list[float]  # sorted display times (file seconds)
    zero: float  # file time of VOD time ``offset``
    offset: float
    frame: float  # seconds per frame

    def vod(self, pts: float) -> float:
        return pts - self.zero + self.offset

    def file(self, vod_time: float) -> float:
        return vod_time - self.offset + self.zero


def build_timeline(streams: Streams, source: LocalSource) -> Timeline:
    pts = sorted(p.pts for p in streams.video)
    steps = sorted(b - a for a, b in zip(pts, pts[1:]) if b > a)
    frame = steps[len(steps) // 2] if steps else 1 / 30
    if source.zero_pts is not None:
        zero = source.zero_pts
    else:
        zero = segment_start_pts(streams)
    return Timeline(pts, zero, source.vod_offset, frame)


def segment_start_pts(streams: Streams) -> float:
    """The display time of the frame a segmenter starts a segment with: its first keyframe in decode order.

    Not the earliest display time after it: an open GOP's leading pictures
    (HEVC RASL frames, x265's default) follow the keyframe in decode order but
    are shown before it, as the previous segment's last frames; anchoring on
    them put every frame of a clip several frames early.
    """
    return next((p.pts for p in streams.video if p.key), streams.video[0].pts)


def key_indices(streams: Streams, timeline: Timeline) -> list[int]:
    """Display indices of the keyframes, in display order."""
    return sorted(timeline.pts.index(p.pts) for p in streams.video if p.key)


def decode_index(streams: Streams, pts: float) -> int:
    """Where the video packet shown at ``pts`` lies in decode order (its index in ``streams.video``)."""
    return next(i for i, p in enumerate(streams.video) if p.pts == pts)


def select_frames(timeline: Timeline, start_time: float, end_time: float) -> tuple[int, int]:
    """Return display indices ``(first, last)`` of the frames shown in ``[start_time, end_time)``.

    A frame belongs to the clip when its display time is within half a frame
    of the range, so an end at a frame boundary keeps exactly the frames before it.
    """
    half = timeline.frame / 2
    first = bisect.bisect_left(timeline.pts, timeline.file(start_time) - half)
    last = bisect.bisect_left(timeline.pts, timeline.file(end_time) - half) - 1
    if first >= len(timeline.pts) or last < first:
        raise RangeNotInVod(f"no video frame of the fetched media lies in {start_time:.3f}-{end_time:.3f}s")
    return first, last


def closed_points(streams: Streams, timeline: Timeline, key_index: int):
    """Yield the display indices where a stream copy starting at keyframe ``key_index`` may end.

    Copying packets in decode order is only decodable if it stops where every
    frame shown so far has been decoded and nothing later has: with B-frames
    that is the end of a mini-GOP, not any frame.
    """
    for _, shown in closed_packets(streams, timeline, key_index):
        yield shown


def closed_packets(streams: Streams, timeline: Timeline, key_index: int):
    """:func:`closed_points` as ``(index in streams.video of the packet that closes it, display index)``."""
    index_of = {pts: i for i, pts in enumerate(timeline.pts)}
    key_pts = timeline.pts[key_index]
    start = decode_index(streams, key_pts)
    count, highest = 0, key_index
    for position in range(start, len(streams.video)):
        if streams.video[position].pts < key_pts:
            continue  # a leading picture of an open GOP's keyframe: not decodable from it, never shown
        count += 1
        highest = max(highest, index_of[streams.video[position].pts])
        if highest - key_index + 1 == count:
            yield position, highest


def closed_end(streams: Streams, timeline: Timeline, key_index: int, last: int) -> int:
    """Return the first clean end of a copy from ``key_index`` at or after display index ``last``."""
    for point in closed_points(streams, timeline, key_index):
        if point >= last:
            return point
    return len(timeline.pts) - 1


def splices_cleanly(streams: Streams, timeline: Timeline, key_index: int) -> bool:
    """True if decoding can start at keyframe ``key_index``: no later packet shows a frame before it (closed GOP)."""
    key_pts = timeline.pts[key_index]
    start = decode_index(streams, key_pts)
    return all(p.pts >= key_pts for p in streams.video[start:])


def gop_shape(streams: Streams) -> tuple[int, int]:
    """Return (keyframe interval, longest run of B-frames) measured from the packets."""
    keys = [i for i, p in enumerate(streams.video) if p.key]
    gaps = [b - a for a, b in zip(keys, keys[1:])]
    interval = max(gaps) if gaps else max(1, len(streams.video))
    longest = run = 0
    newest = float("-inf")
    for packet in streams.video:
        if packet.key or packet.pts > newest:
            newest, run = packet.pts, 0
        else:
            run += 1
            longest = max(longest, run)
    return interval, longest
