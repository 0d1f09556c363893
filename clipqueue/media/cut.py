"""Cut a clip out of fetched media with FFmpeg: stream copy, smart cut or re-encode.

Times are VOD seconds. Packets are chosen by their timestamps from an
ffprobe listing, so the cut never depends on FFmpeg's seeking; the output is
an MP4 whose first video frame is a keyframe at time 0, without edit lists.

Every FFmpeg input names the protocols and demuxers it may use: FFmpeg
never opens a URL or a file named inside the media (an HLS playlist posing
as a segment, an AVI with an embedded playlist).
"""

from __future__ import annotations

import bisect
from concurrent.futures import Future, ThreadPoolExecutor
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import av
import av.logging
from av.bitstream import BitStreamFilterContext

from clipqueue.exceptions import InvalidMedia, RangeNotInVod
from clipqueue.media.fetch import FetchedSegment
from clipqueue.media.probe import PROGRESSIVE_FORMATS, probe_media
from clipqueue.media.process import run_ffmpeg, run_ffmpeg_logged
from clipqueue.media.thumbnail import keyframe_thumbnail

RETIME_BASE_SECONDS = 10.0  # where re-timed media starts: keeps early B-frame decode timestamps positive
PROGRESSIVE_MARGIN_SECONDS = 2.0  # fetched past end_time so B-frames that follow it can be decoded
MP4_FLAGS = "+faststart+negative_cts_offsets"  # first frame at 0 without an edit list despite B-frames


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


@dataclass(frozen=True)
class CutResult:
    """Where the clip really lies in the VOD, and how it was made."""

    actual_start: float
    actual_end: float
    duration: float
    width: int | None
    height: int | None
    size_bytes: int
    method: str
    thumbnail: Path | None = None  # a JPEG of a frame of the clip, when one was asked for and made


@dataclass(frozen=True)
class Packet:
    pts: float  # seconds, file timestamps
    dts: float
    key: bool
    pos: int = -1  # byte offset in the file where the packet starts, -1 if unknown


@dataclass(frozen=True)
class Streams:
    """Packets of the first video and audio stream, in decode order."""

    video: list[Packet]
    audio: list[Packet]
    audio_frame: float  # seconds per audio packet
    codec: str | None
    size: tuple[int, int] | None = None  # of the first video frames
    tables_end: int = -1  # byte offset of the first packet: before it, MPEG-TS tables (PAT, PMT)


def _tracing(args: list[str]) -> list[str]:
    """``args`` from :func:`_ffmpeg` logging at info level, where the trace_headers bitstream filter writes."""
    args = list(args)
    args[args.index("error")] = "info"
    return args


def _ffmpeg(*args: str) -> list[str]:
    return ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args]


def _local_ts(path: Path) -> list[str]:
    """Input options for one of our own MPEG-TS files: the file protocol and the mpegts demuxer only."""
    return ["-protocol_whitelist", "file", "-f", "mpegts", "-i", str(path)]


TS_SYNC_BYTE = 0x47
TS_PACKET_BYTES = 188
MAX_TS_TABLES_BYTES = 64 * 1024  # more "tables" than this before the first packet: not a file we understand
ISO_BMFF_FIRST_BOXES = {b"ftyp", b"styp", b"moof", b"moov", b"sidx", b"emsg", b"prft", b"free"}


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
                    raise InvalidMedia(f"{path} shrank while it was being joined")
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
    first_start = fetched[0].segment.start
    retimed_parts, headers = [], []
    for index, run in enumerate(runs):
        part = _join_run(run, dest_stem.with_name(f"{dest_stem.name}-run{index}"))
        streams = probe_streams(part.path)
        zero = build_timeline(streams, part).zero if streams.video else streams.audio[0].pts
        shift = RETIME_BASE_SECONDS + part.vod_offset - first_start - zero
        retimed = part.path.with_suffix(".retimed.ts")
        run_ffmpeg(_ffmpeg("-copyts", *_local_ts(part.path), "-map", "0:v:0?", "-map", "0:a:0?", "-c", "copy",
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
    else:
        # One timebase (90 kHz) for every stream keeps timestamp arithmetic exact below.
        path = dest_stem.with_suffix(".ts")
        run_ffmpeg(_ffmpeg("-copyts", "-protocol_whitelist", "file", "-f", "mov", "-i", str(joined), "-map", "0:v:0?", "-map", "0:a:0?", "-c", "copy",
                           "-f", "mpegts", str(path)), what="remuxing fMP4 segments")
        joined.unlink()
    return LocalSource(path, fetched[0].segment.start)


def fetch_progressive_window(relay_url: str, start_time: float, end_time: float, dest_stem: Path,
                             timeout: float) -> LocalSource:
    """Copy the part of a progressive file (MP4/TS) around the range into a local TS file.

    ``relay_url`` is a :class:`~clipqueue.media.fetch.LoopbackRelay`'s: FFmpeg
    seeks with HTTP range requests through it. The copy starts at the keyframe
    at or before ``start_time`` and keeps the original timestamps.
    """
    info = probe_media(relay_url, PROGRESSIVE_FORMATS)
    if end_time > info.duration + 1e-3:
        raise RangeNotInVod(f"range {start_time:.3f}-{end_time:.3f}s ends after the file ({info.duration:.3f}s)")
    path = dest_stem.with_suffix(".ts")
    path.parent.mkdir(parents=True, exist_ok=True)
    ts_shift = RETIME_BASE_SECONDS
    seek = max(0.0, start_time)
    # -copyts keeps source timestamps (shifted by ts_shift, no muxer delay) so VOD time maps exactly.
    # The relay gives up on a stalled source after ``timeout``; FFmpeg waits longer so the relay's error wins.
    args = _ffmpeg("-protocol_whitelist", "http,tcp", "-http_proxy", "", "-format_whitelist", PROGRESSIVE_FORMATS,
                   "-rw_timeout", str(int((2 * timeout + 1) * 1e6)), "-copyts", "-ss", f"{seek:.6f}",
                   "-to", f"{end_time + PROGRESSIVE_MARGIN_SECONDS:.6f}", "-i", relay_url,
                   "-map", "0:v:0?", "-map", "0:a:0?", "-c", "copy", "-muxdelay", "0", "-muxpreload", "0",
                   "-output_ts_offset", str(ts_shift), "-f", "mpegts", str(path))
    run_ffmpeg(args, what="reading the progressive source")
    return LocalSource(path, 0.0, zero_pts=info.start_time + ts_shift)


def probe_streams(path: Path) -> Streams:
    """List the packets of the first video and audio stream of the MPEG-TS ``path``.

    Demuxed in this process with PyAV (FFmpeg's libraries): listing a clip's
    packets is cheaper than starting an ffprobe, which a cut would do several
    times.
    """
    try:
        container = av.open(str(path), format="mpegts", options={"protocol_whitelist": "file"})
    except av.FFmpegError as exc:
        raise InvalidMedia(f"cannot read {path}: {exc}") from exc
    with container:
        video = next(iter(container.streams.video), None)
        audio = next(iter(container.streams.audio), None)
        listed: dict[int, list[Packet]] = {s.index: [] for s in (video, audio) if s is not None}
        durations: dict[int, list[float]] = {index: [] for index in listed}
        codec = video.codec_context.name if video else None
        size = (video.codec_context.width, video.codec_context.height) if video and video.codec_context.width else None
        first_position = -1
        try:
            for packet in container.demux():
                if packet.pos is not None and packet.pos >= 0 and (first_position < 0 or packet.pos < first_position):
                    first_position = packet.pos
                chosen = listed.get(packet.stream.index)
                if chosen is None or packet.pts is None or packet.is_discard:
                    continue
                num, den = packet.stream.time_base.numerator, packet.stream.time_base.denominator
                dts = packet.dts if packet.dts is not None else packet.pts
                chosen.append(Packet(packet.pts * num / den, dts * num / den, packet.is_keyframe,
                                     packet.pos if packet.pos is not None else -1))
                if packet.duration:
                    durations[packet.stream.index].append(packet.duration * num / den)
        except av.FFmpegError as exc:
            raise InvalidMedia(f"cannot read {path}: {exc}") from exc
        video_index = video.index if video else None
        audio_index = audio.index if audio else None

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2] if values else 0.0

    video_packets = listed.get(video_index, [])
    audio_packets = listed.get(audio_index, [])
    if not video_packets and not audio_packets:
        raise InvalidMedia(f"{path} has no audio or video packets")
    audio_frame = median(durations[audio_index]) if audio_index is not None else 0.0
    return Streams(video_packets, audio_packets, audio_frame, codec, size, first_position)


def join_streams(parts: list[tuple[Streams, int]]) -> Streams:
    """The packet listing of MPEG-TS files joined end to end, from each file's listing and its byte offset in the join.

    HLS segments hold whole packets, so the join holds the same packets with
    the same timestamps; only their positions move by the bytes before them.
    """
    def moved(packets: list[Packet], offset: int) -> list[Packet]:
        return [replace(p, pos=p.pos + offset) if p.pos >= 0 else p for p in packets]

    first = parts[0][0]
    return Streams(
        video=[p for streams, offset in parts for p in moved(streams.video, offset)],
        audio=[p for streams, offset in parts for p in moved(streams.audio, offset)],
        audio_frame=next((streams.audio_frame for streams, _ in parts if streams.audio), 0.0),
        codec=first.codec, size=first.size, tables_end=first.tables_end,
    )


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
        first_key = next((i for i, p in enumerate(streams.video) if p.key), 0)
        second_key = next((i for i, p in enumerate(streams.video) if p.key and i > first_key), len(streams.video))
        zero = min(p.pts for p in streams.video[first_key:second_key])
    return Timeline(pts, zero, source.vod_offset, frame)


def key_indices(streams: Streams, timeline: Timeline) -> list[int]:
    """Display indices of the keyframes, in display order."""
    return sorted(timeline.pts.index(p.pts) for p in streams.video if p.key)


def _decode_index(streams: Streams, pts: float) -> int:
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
    for _, shown in _closed_packets(streams, timeline, key_index):
        yield shown


def _closed_packets(streams: Streams, timeline: Timeline, key_index: int):
    """:func:`closed_points` as ``(index in streams.video of the packet that closes it, display index)``."""
    index_of = {pts: i for i, pts in enumerate(timeline.pts)}
    key_pts = timeline.pts[key_index]
    start = _decode_index(streams, key_pts)
    count, highest = 0, key_index
    for position in range(start, len(streams.video)):
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
    start = _decode_index(streams, key_pts)
    return all(p.pts >= key_pts for p in streams.video[start:])


def _select_copy(source: Path, out: Path, **ranges: tuple[float, float]) -> None:
    """Copy, per stream (``v=(low, high)``, ``a=...``), the packets with file time in ``[low, high]`` to MPEG-TS ``out``."""
    _select_copies(source, {out: ranges})


def _select_copies(source: Path, outputs: dict[Path, dict[str, tuple[float, float]]],
                   headers_in: tuple[float, float] | None = None) -> list[tuple[str, dict[str, int]]]:
    """:func:`_select_copy` into several files in one read of ``source``: ``{out: {"v": (low, high), ...}}``.

    With ``headers_in=(low, high)``, also return every H.264 SPS and PPS of
    the video packets in that range, read in the same pass (as :func:`_parameter_set_list`).
    """
    def keep(low: float, high: float) -> str:
        return f"noise=drop='not(between(pts*tb\\,{low:.6f}\\,{high:.6f}))'"

    args = _ffmpeg("-copyts", *_local_ts(source))
    for out, ranges in outputs.items():
        for stream in ranges:
            args += ["-map", f"0:{stream}:0"]
        args += ["-c", "copy"]
        for stream, (low, high) in ranges.items():
            args += [f"-bsf:{stream}", keep(low, high)]
        args += ["-muxdelay", "0", "-muxpreload", "0", "-f", "mpegts", str(out)]
    if headers_in is None:
        run_ffmpeg(args, what="selecting packets")
        return []
    # Only the parameter sets (NAL types 7 and 8) reach trace_headers: its log stays short.
    args += ["-map", "0:v:0", "-c", "copy", "-bsf:v", f"{keep(*headers_in)},filter_units=pass_types=7|8,trace_headers",
             "-f", "null", "-"]
    return _parameter_set_list(run_ffmpeg_logged(_tracing(args), what="selecting packets")[1])


def _audio_range(streams: Streams, low: float, high: float) -> tuple[float, float]:
    """File-time bounds selecting the audio packets that start nearest ``low`` and end nearest ``high``."""
    half = streams.audio_frame / 2
    return low - half, high - half


def _mux(video: Path | None, audio: Path | None, output: Path, video_is_concat: bool = False) -> None:
    """Write the MP4 ``output`` from a video and an audio file (the same file may hold both)."""
    args = _ffmpeg()
    if video is not None:
        if video_is_concat:
            # Our own listing of our own TS parts; the whitelists pass on to the files it opens.
            args += ["-f", "concat", "-safe", "0", "-protocol_whitelist", "file",
                     "-format_whitelist", "concat,mpegts", "-i", str(video)]
        else:
            args += _local_ts(video)
    separate_audio = audio is not None and audio != video
    if separate_audio:
        args += _local_ts(audio)
    args += ["-map", "0:v:0"] if video is not None else []
    args += ["-map", f"{1 if video is not None and separate_audio else 0}:a:0"] if audio is not None else []
    args += ["-c", "copy", "-movflags", MP4_FLAGS, "-use_editlist", "0", "-f", "mp4", str(output)]
    run_ffmpeg(args, what="writing the clip")


def _describe(output: Path, streams: Streams, actual_start: float, actual_end: float, method: str) -> CutResult:
    width, height = streams.size or (None, None)
    return CutResult(round(actual_start, 6), round(actual_end, 6), round(actual_end - actual_start, 6),
                     width, height, output.stat().st_size, method)


def cut_copy(source: LocalSource, streams: Streams, start_time: float, end_time: float,
             output: Path, scratch: Path, while_muxing: Callable[[], None] | None = None) -> CutResult:
    """Stream copy from the keyframe at or before ``start_time`` to the first clean end at or after ``end_time``."""
    if not source.uniform:
        raise InvalidMedia("the video's encoding changes at a discontinuity inside the clip: "
                           "it cannot be stream-copied; cut it in accurate mode")
    timeline = build_timeline(streams, source)
    first, last = select_frames(timeline, start_time, end_time)
    keys = key_indices(streams, timeline)
    at_or_before = [k for k in keys if k <= first]
    if not at_or_before:
        raise InvalidMedia("the fetched media has no keyframe at or before the clip's start")
    key = at_or_before[-1]
    end = closed_end(streams, timeline, key, last)
    low, high = timeline.pts[key], timeline.pts[end]
    selected = scratch / "copy.ts"
    ranges = {"v": (low - 1e-4, high + 1e-4)}
    if streams.audio:
        ranges["a"] = _audio_range(streams, low, high + timeline.frame)
    _select_copy(source.path, selected, **ranges)
    if while_muxing:
        while_muxing()
    _mux(selected, selected if streams.audio else None, output)
    return _describe(output, streams, timeline.vod(low), timeline.vod(high) + timeline.frame, "copy")


# FFmpeg's log level is one setting for the whole process: one trace at a time raises it.
_TRACE_LOCK = threading.Lock()


def parameter_sets(path: Path, at: float | None = None) -> dict[str, dict[str, int]]:
    """Return the fields of the first H.264 SPS and PPS of the MPEG-TS ``path``, or of its first
    video packet at or after ``at`` seconds (file time), from FFmpeg's trace_headers.

    Run in this process through PyAV, as :func:`probe_streams` is: cheaper than starting an ffmpeg.
    """
    logs: list = []
    try:
        with av.open(str(path), format="mpegts", options={"protocol_whitelist": "file"}) as container:
            if not container.streams.video:
                return {}
            video = container.streams.video[0]
            trace = BitStreamFilterContext("trace_headers", video)
            with _TRACE_LOCK:
                level = av.logging.get_level()
                av.logging.set_level(av.logging.INFO)  # where trace_headers writes
                try:
                    with av.logging.Capture(local=True) as logs:
                        for packet in container.demux(video):
                            if packet.pts is None:
                                continue
                            base = video.time_base
                            if at is None or packet.pts * base.numerator / base.denominator >= at - 1e-4:
                                trace.filter(packet)
                                break
                finally:
                    av.logging.set_level(level)
    except av.FFmpegError:
        return {}  # no headers to match: the caller re-encodes rather than splices
    return _parse_parameter_sets("\n".join(f"[{name}] {message.rstrip()}" for _, name, message in logs
                                           if name == "trace_headers"))


def _parse_parameter_sets(log: str) -> dict[str, dict[str, int]]:
    """The fields of the first SPS and PPS in an FFmpeg log holding trace_headers output."""
    sets: dict[str, dict[str, int]] = {}
    for name, fields in _parameter_set_list(log):
        sets.setdefault(name, fields)
    return sets


def _parameter_set_list(log: str) -> list[tuple[str, dict[str, int]]]:
    """Every SPS and PPS in an FFmpeg log holding trace_headers output, in order, as ``("sps" or "pps", fields)``."""
    found: list[tuple[str, dict[str, int]]] = []
    current: dict[str, int] | None = None
    for line in log.splitlines():
        if "[trace_headers" not in line:
            continue
        text = line.split("]", 1)[1].strip()
        if text in ("Sequence Parameter Set", "Picture Parameter Set"):
            current = {}
            found.append(("sps" if text.startswith("Sequence") else "pps", current))
            continue
        parts = text.split()
        if current is not None and len(parts) >= 4 and parts[-2] == "=" and parts[0].isdigit():
            current[parts[1]] = int(parts[-1])
        elif not (parts and parts[0].isdigit()):
            current = None
    return found


def _gop_shape(streams: Streams) -> tuple[int, int]:
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


def matching_encoder(headers: dict[str, dict[str, int]], streams: Streams, timeline: Timeline) -> list[str] | None:
    """Return libx264 options whose SPS/PPS should equal the source's, or None if it is not x264-like.

    Only header-visible choices are copied (profile, level, references,
    B-frames, CABAC, 8x8 transform, weighted prediction, keyframe interval,
    time base); the fastest preset does the rest, since nothing else shows in the headers.
    """
    sps, pps = headers.get("sps"), headers.get("pps")
    if not sps or not pps or sps.get("nal_hrd_parameters_present_flag") or pps.get("pic_init_qp_minus26", 0):
        return None
    profiles = {66: "baseline", 77: "main", 100: "high"}
    profile = profiles.get(sps.get("profile_idc", 0))
    if profile is None:
        return None
    interval, bframes = _gop_shape(streams)
    reorder = sps.get("max_num_reorder_frames", 1 if bframes else 0)
    params = {
        "level": f"{sps['level_idc'] / 10:.1f}",
        "ref": pps.get("num_ref_idx_l0_default_active_minus1", 0) + 1,
        "bframes": bframes,
        "b-pyramid": "normal" if reorder >= 2 else "none",
        "cabac": pps.get("entropy_coding_mode_flag", 0),
        "8x8dct": pps.get("transform_8x8_mode_flag", 0),
        "weightp": 1 if pps.get("weighted_pred_flag") else 0,
        "weightb": 1 if pps.get("weighted_bipred_idc") == 2 else 0,
        "keyint": interval, "min-keyint": interval, "scenecut": 0,
        "chroma-qp-offset": pps.get("chroma_qp_index_offset", 0),
        # ultrafast turns the loop filter off; at the bitrate given the frames then look as good as
        # superfast's (PSNR 42.1 against 42.2 dB on the bench's 1080p head) for less CPU.
        "deblock": "0,0",
    }
    args = ["-c:v", "libx264", "-preset", "ultrafast", "-profile:v", profile,
            "-x264-params", ":".join(f"{k}={v}" for k, v in params.items())]
    if sps.get("timing_info_present_flag") and sps.get("time_scale"):
        args += ["-enc_time_base:v", f"{sps['num_units_in_tick']}/{sps['time_scale'] // 2}"]
    return args


def rate_control(streams: Streams, path: Path, timeline: Timeline) -> list[str]:
    """Encoder options giving re-encoded frames the source's bitrate, with headroom, so they look alike."""
    seconds = max(timeline.frame, timeline.pts[-1] - timeline.pts[0] + timeline.frame)
    bitrate = str(int(path.stat().st_size * 8 / seconds * 1.5))
    return ["-b:v", bitrate, "-maxrate", bitrate, "-bufsize", bitrate]


def encode_frames(source: LocalSource, streams: Streams, timeline: Timeline, first: int, last: int,
                  encoder: list[str], out: Path, scale_to: tuple[int, int] | None = None
                  ) -> dict[str, dict[str, int]]:
    """Encode display frames ``first..last`` to MPEG-TS, scaled to ``scale_to`` if given; return the
    output's parameter sets (as :func:`parameter_sets`).

    Only the packets they need are decoded: from the keyframe before them to
    the first point in decode order where every frame up to ``last`` is
    decoded, copied out by byte range (or by timestamp, whole GOPs), which is
    exact and far cheaper than seeking in MPEG-TS.
    """
    keys = key_indices(streams, timeline)
    decode_from = max((k for k in keys if k <= first), default=0)
    decode_to = min((k for k in keys if k > last), default=None)
    closing = next((position for position, shown in _closed_packets(streams, timeline, decode_from)
                    if shown >= last), None)
    after = streams.video[closing + 1].pts if closing is not None and closing + 1 < len(streams.video) else None
    gops = out.with_suffix(".gops.ts")
    if source.joined_runs or not _copy_gop_bytes(source.path, streams, timeline.pts[decode_from], after, gops):
        upper = timeline.pts[decode_to] - 1e-4 if decode_to is not None else timeline.pts[-1] + 1e-4
        _select_copy(source.path, gops, v=(timeline.pts[decode_from] - 1e-4, upper))
    low = timeline.pts[first] - timeline.frame / 2
    high = timeline.pts[last] + timeline.frame / 2
    scale = f",scale={scale_to[0]}:{scale_to[1]}" if scale_to else ""
    args = _tracing(_ffmpeg("-copyts", *_local_ts(gops), "-map", "0:v:0",
                            "-vf", f"select='between(pts*TB\\,{low:.6f}\\,{high:.6f})'" + scale,
                            "-fps_mode", "passthrough",
                            *encoder, "-bsf:v", "trace_headers", "-f", "mpegts", str(out)))
    try:
        return _parse_parameter_sets(run_ffmpeg_logged(args, what="re-encoding frames")[1])
    finally:
        gops.unlink(missing_ok=True)


def _copy_gop_bytes(source: Path, streams: Streams, key_pts: float, end_pts: float | None, out: Path) -> bool:
    """Copy the bytes of the video packets from keyframe ``key_pts`` up to the packet ``end_pts`` (or the end)
    of the MPEG-TS ``source`` into ``out``, behind the file's tables; False if the packet positions do not allow it.

    MPEG-TS stores packets in decode order, so that byte range holds every video packet
    between them: reading it instead of the whole file saves a pass over the source.
    """
    positions = {p.pts: p.pos for p in streams.video}
    first = positions.get(key_pts, -1)
    last = positions.get(end_pts, -1) if end_pts is not None else source.stat().st_size
    return _copy_byte_range(source, streams, first, last, out)


def _copy_byte_range(source: Path, streams: Streams, first: int, last: int, out: Path) -> bool:
    """Copy bytes ``first..last-1`` of the MPEG-TS ``source`` into ``out`` behind the file's tables;
    False (nothing written) unless both are packet boundaries after the tables."""
    if not 0 <= streams.tables_end <= MAX_TS_TABLES_BYTES or first < streams.tables_end or last <= first \
            or first % TS_PACKET_BYTES or last % TS_PACKET_BYTES or streams.tables_end % TS_PACKET_BYTES:
        return False
    with open(source, "rb") as src, open(out, "wb") as dst:
        dst.write(src.read(streams.tables_end))
        src.seek(first)
        remaining = last - first
        while remaining:
            chunk = src.read(min(remaining, 1024 * 1024))
            if not chunk:
                break
            dst.write(chunk)
            remaining -= len(chunk)
    return True


def _concat(parts: list[tuple[Path, float]], scratch: Path) -> Path:
    listing = scratch / "parts.ffconcat"
    lines = ["ffconcat version 1.0"]
    for path, duration in parts:
        lines += [f"file '{path.resolve()}'", f"duration {duration:.6f}"]
    listing.write_text("\n".join(lines) + "\n")
    return listing


def _copy_packet(source: Path, streams: Streams, pts: float, out: Path) -> bool:
    """Copy the bytes of the video packet shown at ``pts`` into ``out`` as an MPEG-TS file of its own
    (as :func:`_copy_byte_range`, which says whether it could)."""
    index = _decode_index(streams, pts)
    end = streams.video[index + 1].pos if index + 1 < len(streams.video) else source.stat().st_size
    return _copy_byte_range(source, streams, streams.video[index].pos, end, out)


def _headers_at_key(source: Path, streams: Streams, key_pts: float, scratch: Path) -> dict[str, dict[str, int]]:
    """:func:`parameter_sets` of the keyframe at ``key_pts``, read from that one packet's bytes when possible."""
    chunk = scratch / "keyframe.ts"
    if _copy_packet(source, streams, key_pts, chunk):
        return parameter_sets(chunk)
    return parameter_sets(source, key_pts)


def cut_accurate(source: LocalSource, streams: Streams, start_time: float, end_time: float,
                 output: Path, scratch: Path, file_headers: dict[str, dict[str, int]] | None = None,
                 early_encodes: dict[tuple[float, float], Future] | None = None,
                 while_muxing: Callable[[], None] | None = None) -> CutResult:
    """Cut exactly ``[start_time, end_time)``: re-encode the frames before the first keyframe
    and after the last clean copy point, stream copy the rest ("smart cut").

    Falls back to re-encoding the whole clip when the source cannot be spliced
    safely (not H.264, open GOPs, headers an x264 encode cannot reproduce).
    ``file_headers`` (:func:`parameter_sets` of the file's start, read while it
    was probed) chooses the encoder early; the copied part's own are then checked
    beside the encodes. ``early_encodes`` are head or tail encodes started before
    the whole source was on disk (see :class:`Prepared`), used when they cover
    exactly the frames needed and their headers match. ``while_muxing`` is
    called as the final mux starts (as by :func:`cut_copy`): work the MP4 does
    not need can use the core that the mux leaves idle.
    """
    timeline = build_timeline(streams, source)
    first, last = select_frames(timeline, start_time, end_time)
    keys = key_indices(streams, timeline)
    inner = next((k for k in keys if first <= k <= last), None)
    encoder = None
    if source.uniform and streams.codec == "h264" and inner is not None and splices_cleanly(streams, timeline, inner):
        headers = file_headers or _headers_at_key(source.path, streams, timeline.pts[inner], scratch)
        encoder = matching_encoder(headers, streams, timeline)
    rate = rate_control(streams, source.path, timeline)
    parts: list[tuple[Path, float]] = []
    method = "smart_cut"
    low, high = timeline.pts[first], timeline.pts[last] + timeline.frame
    audio = scratch / "accurate-audio.ts" if streams.audio else None
    if encoder is not None:
        encoder = encoder + rate
        copy_end = max((p for p in closed_points(streams, timeline, inner) if p <= last), default=None)
        if copy_end is None:
            encoder = None
    if encoder is not None:
        # Head, body, tail and audio are independent: produce them side by side.
        head, body, tail = scratch / "head.ts", scratch / "body.ts", scratch / "tail.ts"
        after = copy_end + 1 if copy_end + 1 < len(timeline.pts) else None
        body_end = timeline.pts[after] if after is not None else timeline.pts[copy_end] + timeline.frame

        def encode_matching(first_frame: int, last_frame: int, out: Path) -> bool:
            early = (early_encodes or {}).get((timeline.pts[first_frame], timeline.pts[last_frame]))
            made = early.result() if early is not None else None
            if made is not None and made[1] == headers:
                made[0].replace(out)
                return True
            return encode_frames(source, streams, timeline, first_frame, last_frame, encoder, out) == headers

        body_range = (timeline.pts[inner] - 1e-4, timeline.pts[copy_end] + 1e-4)
        selections = {body: {"v": body_range}}
        if streams.audio:
            selections[audio] = {"a": _audio_range(streams, low, high)}
        # Room for every job at once: an early encode's job only waits for it.
        with ThreadPoolExecutor(max_workers=3) as pool:
            # The copied keyframes' own headers are read while copying: each must match the encodes'.
            body_headers = pool.submit(_select_copies, source.path, selections, headers_in=body_range)
            encodes = []
            if first < inner:
                encodes.append(pool.submit(encode_matching, first, inner - 1, head))
            if copy_end < last:
                encodes.append(pool.submit(encode_matching, copy_end + 1, last, tail))
            copied = body_headers.result()
            matching = all([job.result() for job in encodes])
        # Every header the copied packets carry must be the encodes'; carrying none, the splice is unchecked: re-encode.
        matching = matching and bool(copied) and all(fields == headers.get(name) for name, fields in copied)
        if first < inner:
            parts.append((head, timeline.pts[inner] - timeline.pts[first]))
        parts.append((body, body_end - timeline.pts[inner]))
        if copy_end < last:
            parts.append((tail, timeline.pts[last] + timeline.frame - timeline.pts[copy_end + 1]))
        if not matching:
            encoder = None  # a decoder would meet other headers mid-file: not a safe splice
    if encoder is None:
        method = "reencode"
        whole = scratch / "whole.ts"
        encode_frames(source, streams, timeline, first, last,
                      ["-c:v", "libx264", "-preset", "veryfast", *rate], whole,
                      # one picture size for the whole clip when it changes at a discontinuity
                      scale_to=None if source.uniform else streams.size)
        parts = [(whole, timeline.pts[last] + timeline.frame - timeline.pts[first])]
    if streams.audio and not audio.exists():
        _select_copy(source.path, audio, a=_audio_range(streams, low, high))
    if while_muxing:
        while_muxing()
    _mux(_concat(parts, scratch), audio, output, video_is_concat=True)
    return _describe(output, streams, timeline.vod(low), timeline.vod(high), method)


def cut_audio(source: LocalSource, streams: Streams, start_time: float, end_time: float,
              output: Path, scratch: Path) -> CutResult:
    """Cut an audio-only source: copy the audio frames nearest the range (each ~21 ms for AAC)."""
    zero = source.zero_pts if source.zero_pts is not None else streams.audio[0].pts
    timeline = Timeline([p.pts for p in streams.audio], zero, source.vod_offset, streams.audio_frame)
    low, high = _audio_range(streams, timeline.file(start_time), timeline.file(end_time))
    chosen = [p.pts for p in streams.audio if low <= p.pts <= high]
    if not chosen:
        raise RangeNotInVod(f"no audio of the fetched media lies in {start_time:.3f}-{end_time:.3f}s")
    audio = scratch / "audio-only.ts"
    _select_copy(source.path, audio, a=(low, high))
    _mux(None, audio, output)
    return _describe(output, streams, timeline.vod(min(chosen)), timeline.vod(max(chosen)) + streams.audio_frame, "copy")


def thumbnail_from_source(source: LocalSource, streams: Streams, start_time: float, end_time: float,
                          out: Path, scratch: Path) -> Path | None:
    """Write a JPEG of the source keyframe about a third of the way into ``[start_time, end_time)``.

    Returns ``out``, or None when no keyframe lies in the range or its bytes
    cannot be cut out of the source (the caller then takes a frame of the
    finished clip). The clip copies that keyframe (or, before its first
    keyframe, re-encodes it), so the picture is the clip's own.
    """
    if source.joined_runs:
        return None
    timeline = build_timeline(streams, source)
    first, last = select_frames(timeline, start_time, end_time)
    inside = [k for k in key_indices(streams, timeline) if first <= k <= last]
    if not inside:
        return None
    third = first + (last - first + 1) // 3
    key = max((k for k in inside if k <= third), default=inside[0])
    keyframe = scratch / "thumbnail-keyframe.ts"
    if not _copy_packet(source.path, streams, timeline.pts[key], keyframe):
        return None
    try:
        return keyframe_thumbnail(keyframe, out)
    except InvalidMedia:
        return None


@dataclass(frozen=True)
class Prepared:
    """What was worked out while the source's segments still downloaded (see :mod:`clipqueue.media.pipeline`).

    ``streams`` is the source's packet listing (None: probe it), ``file_headers``
    its first H.264 headers; ``encodes`` are re-encoded heads or tails keyed by
    the timestamps of their first and last frame, each a future of
    ``(path, parameter sets)`` or of None.
    """

    streams: Streams | None
    file_headers: dict[str, dict[str, int]]
    encodes: dict[tuple[float, float], Future]


def cut_clip(source: LocalSource, start_time: float, end_time: float, mode: str, output: Path, scratch: Path,
             on_progress: Callable[[int], None] | None = None, thumbnail: Path | None = None,
             prepared: Prepared | None = None, audio_only: bool = False) -> CutResult:
    """Cut ``[start_time, end_time)`` (VOD seconds) of ``source`` into the MP4 ``output``.

    ``mode`` is "accurate" (frame-exact, smart cut) or "copy" (stream copy from
    the keyframe at or before the start). With ``thumbnail``, a JPEG of a frame
    of the clip is made there beside the cut when the source allows
    (``CutResult.thumbnail`` says whether it was). With ``audio_only`` only
    the audio is kept, as from a source without video.
    """
    if prepared is not None:
        streams, file_headers = prepared.streams or probe_streams(source.path), prepared.file_headers
    elif mode == "copy":
        streams = probe_streams(source.path)
        file_headers = None
    else:
        # An accurate cut needs the H.264 headers too: read them while the file is probed.
        with ThreadPoolExecutor(max_workers=1) as pool:
            headers_job = pool.submit(parameter_sets, source.path)
            streams = probe_streams(source.path)
            file_headers = headers_job.result() if streams.video else None
    if on_progress:
        on_progress(10)
    if audio_only and not streams.audio:
        raise InvalidMedia("the VOD has no audio to make an audio-only clip of")
    if audio_only:
        streams = replace(streams, video=[], codec=None, size=None)  # as if the source had no video
    if not streams.video:
        return cut_audio(source, streams, start_time, end_time, output, scratch)
    with ThreadPoolExecutor(max_workers=1) as pool:
        picture: list[Future] = []

        def make_thumbnail() -> None:
            # One keyframe's decode beside the final mux, which leaves a core idle.
            if thumbnail and not picture:
                picture.append(pool.submit(thumbnail_from_source, source, streams, start_time, end_time,
                                           thumbnail, scratch))

        if mode == "copy":
            result = cut_copy(source, streams, start_time, end_time, output, scratch, make_thumbnail)
        else:
            result = cut_accurate(source, streams, start_time, end_time, output, scratch, file_headers,
                                  prepared.encodes if prepared else None, make_thumbnail)
        make_thumbnail()
        return replace(result, thumbnail=picture[0].result() if picture else None)
