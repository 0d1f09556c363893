"""The source on disk: fetched segments joined into one MPEG-TS file, or a window of a progressive file.

Times are VOD seconds; a :class:`LocalSource` says how its file's timestamps map to them.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import av

from clipqueue.exceptions import InvalidMedia, RangeNotInVod
from clipqueue.media.fetch import FetchedSegment
from clipqueue.media.h264 import parameter_sets
from clipqueue.media.mux import TS_SYNC_BYTE, ffmpeg_command, ts_input
from clipqueue.media.packets import probe_streams
from clipqueue.media.probe import PROGRESSIVE_FORMATS, probe_media
from clipqueue.media.process import run_ffmpeg
from clipqueue.media.timeline import build_timeline

RETIME_BASE_SECONDS = 10.0  # where re-timed media starts: keeps early B-frame decode timestamps positive
PROGRESSIVE_MARGIN_SECONDS = 2.0  # fetched past end_time so B-frames that follow it can be decoded
TS_VIDEO_CODECS = ("h264", "hevc")  # what the joined MPEG-TS source carries and the cut handles
MP4_VIDEO_CODECS = ("av1",)  # kept in the joined fMP4 itself (``.mp4``): FFmpeg 5.1 cannot put AV1 in MPEG-TS
ISO_BMFF_FIRST_BOXES = {b"ftyp", b"styp", b"moof", b"moov", b"sidx", b"emsg", b"prft", b"free"}


@dataclass(frozen=True)
class LocalSource:
    """Media on disk covering part of a VOD.

    ``vod_offset`` is the VOD time of the file's first video frame, or, when
    ``zero_pts`` is set, the VOD time of timestamp ``zero_pts`` (seconds).
    """

    path: Path
    vod_offset: float
    zero_pts: float | None = None
    # False when the video's parameter sets change inside the file (at a discontinuity):
    # its packets cannot be spliced or copied into one MP4 track.
    uniform: bool = True
    # True when the file is separately muxed runs joined end to end (after discontinuities): byte
    # ranges across runs are not one stream to a demuxer, so packets are selected by timestamp.
    joined_runs: bool = False


def _check_segment_kind(path: Path, fmp4: bool) -> None:
    """Refuse a segment that is not what the playlist says (e.g. a playlist posing as a segment).

    FFmpeg's MPEG-TS demuxer would skip such bytes and resync on the next
    segment, silently moving the clip in time.
    """
    with open(path, "rb") as file:
        head = file.read(8)
    ok = head[4:8] in ISO_BMFF_FIRST_BOXES if fmp4 else head[:1] == bytes([TS_SYNC_BYTE])
    if not ok:
        kind = "fragmented MP4" if fmp4 else "MPEG-TS"
        raise InvalidMedia(f"a segment of the source is not {kind} (starts with {head[:8]!r})")


def _append(path: Path, out) -> None:
    """Append the file ``path`` to the open file ``out``, copied inside the kernel where it can be."""
    out.flush()
    with open(path, "rb") as src:
        try:
            offset, size = 0, os.fstat(src.fileno()).st_size
            while offset < size:
                sent = os.sendfile(out.fileno(), src.fileno(), offset, size - offset)
                if sent == 0:
                    raise InvalidMedia("a fetched segment shrank while it was being joined")
                offset += sent
        except OSError:  # no sendfile between these files: through Python's buffers
            out.seek(0, os.SEEK_END)
            src.seek(offset)
            shutil.copyfileobj(src, out, 1024 * 1024)


def join_segments(fetched: list[FetchedSegment], dest_stem: Path) -> LocalSource:
    """Join fetched segments into one MPEG-TS file on the VOD's timeline (fMP4 is remuxed, copying streams).

    Across an ``#EXT-X-DISCONTINUITY`` timestamps restart or jump: each run
    of segments between discontinuities is re-timed to where the playlist
    places it before the runs are joined.
    """
    if not fetched:
        raise InvalidMedia("no segments to join")
    runs: list[list[FetchedSegment]] = []
    for item in fetched:
        if not runs or item.segment.discontinuity:
            runs.append([])
        runs[-1].append(item)
    if len(runs) == 1:
        return _join_run(fetched, dest_stem)
    if _video_codec(fetched[0]) in MP4_VIDEO_CODECS:
        raise InvalidMedia("an AV1 rendition with discontinuities cannot be cut yet; "
                           "choose an H.264 or HEVC one")
    first_start = fetched[0].segment.start
    retimed_parts, headers = [], []
    for index, run in enumerate(runs):
        part = _join_run(run, dest_stem.with_name(f"{dest_stem.name}-run{index}"))
        streams = probe_streams(part.path)
        zero = build_timeline(streams, part).zero if streams.video else streams.audio[0].pts
        shift = RETIME_BASE_SECONDS + part.vod_offset - first_start - zero
        retimed = part.path.with_suffix(".retimed.ts")
        run_ffmpeg(ffmpeg_command("-copyts", *ts_input(part.path), "-map", "0:v:0?", "-map", "0:a:0?", "-c", "copy",
                                  "-muxdelay", "0", "-muxpreload", "0", "-output_ts_offset", f"{shift:.6f}",
                                  "-f", "mpegts", str(retimed)), what="re-timing segments after a discontinuity")
        if streams.video:
            headers.append(parameter_sets(part.path))
        part.path.unlink()
        retimed_parts.append(retimed)
    path = dest_stem.with_suffix(".ts")
    with open(path, "wb") as out:
        for part_path in retimed_parts:
            _append(part_path, out)
            part_path.unlink()
    return LocalSource(path, first_start, zero_pts=RETIME_BASE_SECONDS,
                       uniform=all(h == headers[0] for h in headers), joined_runs=True)


def _join_run(fetched: list[FetchedSegment], dest_stem: Path) -> LocalSource:
    """Join segments with continuous timestamps into one MPEG-TS file."""
    fmp4 = fetched[0].init_path is not None
    for path in dict.fromkeys(p for item in fetched for p in (item.init_path, item.path) if p is not None):
        _check_segment_kind(path, fmp4)
    dest_stem.parent.mkdir(parents=True, exist_ok=True)
    joined = dest_stem.with_suffix(".joined")
    with open(joined, "wb") as out:
        written_inits: Path | None = None
        for item in fetched:
            if item.init_path is not None and item.init_path != written_inits:
                _append(item.init_path, out)
                written_inits = item.init_path
            _append(item.path, out)
            item.path.unlink()
    if fetched[0].init_path is None:
        path = joined.replace(dest_stem.with_suffix(".ts"))
    elif _check_video_codec(joined) in MP4_VIDEO_CODECS:
        path = joined.replace(dest_stem.with_suffix(".mp4"))  # cut from the fMP4 itself (cut_from_mp4)
    else:
        # One timebase (90 kHz) for every stream keeps timestamp arithmetic exact below.
        path = dest_stem.with_suffix(".ts")
        run_ffmpeg(ffmpeg_command("-copyts", "-protocol_whitelist", "file", "-f", "mov", "-i", str(joined),
                                  "-map", "0:v:0?", "-map", "0:a:0?", "-c", "copy", "-f", "mpegts", str(path)),
                   what="remuxing fMP4 segments")
        joined.unlink()
    return LocalSource(path, fetched[0].segment.start)


def _video_codec(item: FetchedSegment) -> str | None:
    """The video codec of a fetched fMP4 segment's initialization section (None for MPEG-TS segments)."""
    return _check_video_codec(item.init_path) if item.init_path is not None else None


def _check_video_codec(joined: Path) -> str | None:
    """The video codec of fMP4 media (None without video); refuse one the cut cannot handle, rather than
    remux it into a data stream and silently lose the clip's picture."""
    try:
        with av.open(str(joined), format="mov", options={"protocol_whitelist": "file"}) as container:
            video = next(iter(container.streams.video), None)
            codec = video.codec_context.codec.canonical_name if video is not None else None
    except av.FFmpegError as exc:
        raise InvalidMedia("cannot read the fetched fMP4 segments") from exc
    if codec is not None and codec not in TS_VIDEO_CODECS + MP4_VIDEO_CODECS:
        raise InvalidMedia(f"{codec.upper()} video cannot be cut yet; choose an H.264, HEVC or AV1 rendition "
                           "(quality of another variant)")
    return codec


def fetch_progressive_window(relay_url: str, start_time: float, end_time: float, dest_stem: Path,
                             timeout: float) -> LocalSource:
    """Copy the part of a progressive file (MP4/TS) around the range into a local TS file.

    ``relay_url`` is a :class:`~clipqueue.media.fetch.LoopbackRelay`'s: FFmpeg
    seeks with HTTP range requests through it. The copy starts at the keyframe
    at or before ``start_time`` and keeps the original timestamps.
    """
    info = probe_media(relay_url, PROGRESSIVE_FORMATS, what="the source")
    if end_time > info.duration + 1e-3:
        raise RangeNotInVod(f"range {start_time:.3f}-{end_time:.3f}s ends after the file ({info.duration:.3f}s)")
    path = dest_stem.with_suffix(".ts")
    path.parent.mkdir(parents=True, exist_ok=True)
    ts_shift = RETIME_BASE_SECONDS
    seek = max(0.0, start_time)
    # -copyts keeps source timestamps (shifted by ts_shift, no muxer delay) so VOD time maps exactly.
    # The relay gives up on a stalled source after ``timeout``; FFmpeg waits longer so the relay's error wins.
    args = ffmpeg_command("-protocol_whitelist", "http,tcp", "-http_proxy", "", "-format_whitelist", PROGRESSIVE_FORMATS,
                          "-rw_timeout", str(int((2 * timeout + 1) * 1e6)), "-copyts", "-ss", f"{seek:.6f}",
                          "-to", f"{end_time + PROGRESSIVE_MARGIN_SECONDS:.6f}", "-i", relay_url,
                          "-map", "0:v:0?", "-map", "0:a:0?", "-c", "copy", "-muxdelay", "0", "-muxpreload", "0",
                          "-output_ts_offset", str(ts_shift), "-f", "mpegts", str(path))
    run_ffmpeg(args, what="reading the progressive source")
    return LocalSource(path, 0.0, zero_pts=info.start_time + ts_shift)
