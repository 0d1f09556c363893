"""Cut a clip out of the source on disk with FFmpeg: stream copy, smart cut or re-encode.

Times are VOD seconds. Packets are chosen by their timestamps from the
source's packet listing (:mod:`~clipqueue.media.packets`), so the cut never
depends on FFmpeg's seeking; the output is an MP4 whose first video frame is
a keyframe at time 0, without edit lists.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from clipqueue.exceptions import InvalidMedia, RangeNotInVod
from clipqueue.media.encode import encode_frames
from clipqueue.media.h264 import (
    ParameterSets,
    headers_at_key,
    matching_encoder,
    parameter_set_list,
    parameter_sets,
    rate_control,
)
from clipqueue.media import hevc
from clipqueue.media.mux import (
    MP4_FLAGS,
    concat_listing,
    ffmpeg_command,
    keep_between,
    select_copies,
    select_copy,
    ts_input,
    write_mp4,
)
from clipqueue.media.packets import Streams, probe_streams
from clipqueue.media.process import run_ffmpeg
from clipqueue.media.source import LocalSource
from clipqueue.media.thumbnail import thumbnail_from_source
from clipqueue.media.timeline import (
    Timeline,
    build_timeline,
    closed_end,
    closed_points,
    key_indices,
    select_frames,
    splices_cleanly,
)


# A clip that cannot be spliced is re-encoded whole to H.264, whatever the source's codec: x264 is several
# times faster than x265 for the same picture (a 60 s 1080p clip in HEVC would take minutes on a small
# worker) and H.264 plays in every browser, where HEVC does not (Firefox, Chrome without hardware support).
REENCODE_CODEC = "h264"


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
    codec: str | None = None  # the clip's video codec: "h264" or "hevc"; None without video


def _audio_range(streams: Streams, low: float, high: float) -> tuple[float, float]:
    """File-time bounds selecting the audio packets that start nearest ``low`` and end nearest ``high``."""
    half = streams.audio_frame / 2
    return low - half, high - half


def _describe(output: Path, streams: Streams, actual_start: float, actual_end: float, method: str,
              codec: str | None = None) -> CutResult:
    width, height = streams.size or (None, None)
    return CutResult(round(actual_start, 6), round(actual_end, 6), round(actual_end - actual_start, 6),
                     width, height, output.stat().st_size, method, codec=codec)


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
    select_copy(source.path, selected, **ranges)
    if while_muxing:
        while_muxing()
    write_mp4(selected, selected if streams.audio else None, output, codec=streams.codec)
    return _describe(output, streams, timeline.vod(low), timeline.vod(high) + timeline.frame, "copy",
                     streams.codec)


def cut_accurate(source: LocalSource, streams: Streams, start_time: float, end_time: float,
                 output: Path, scratch: Path, file_headers: ParameterSets | None = None,
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
    if source.uniform and streams.codec in ("h264", "hevc") and inner is not None \
            and splices_cleanly(streams, timeline, inner):
        headers = file_headers or headers_at_key(source.path, streams, timeline.pts[inner], scratch)
        encoder = (matching_encoder(headers, streams, timeline) if streams.codec == "h264"
                   else hevc.matching_encoder(headers, streams))
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
    if encoder is not None and streams.codec == "hevc":
        # x265 reproduces only headers an x265 like it wrote (not a hardware encoder's): one frame, the
        # keyframe the copy starts with, tells before a GOP's worth of frames is encoded for nothing.
        probe = scratch / "hevc-probe.ts"
        if encode_frames(source, streams, timeline, inner, inner, encoder, probe) != headers:
            encoder = None
        probe.unlink(missing_ok=True)
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
            body_headers = pool.submit(select_copies, source.path, selections, headers_in=body_range,
                                       codec=streams.codec)
            encodes = []
            if first < inner:
                encodes.append(pool.submit(encode_matching, first, inner - 1, head))
            if copy_end < last:
                encodes.append(pool.submit(encode_matching, copy_end + 1, last, tail))
            copied = body_headers.result()
            matching = all([job.result() for job in encodes])
        # Every header the copied packets carry must be the encodes'; carrying none, the splice is unchecked: re-encode.
        copied_sets = parameter_set_list(copied, streams.codec)
        matching = matching and bool(copied_sets) and all(
            nal == getattr(headers, kind) for kind, nal in copied_sets)
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
        select_copy(source.path, audio, a=_audio_range(streams, low, high))
    if while_muxing:
        while_muxing()
    codec = streams.codec if method == "smart_cut" else REENCODE_CODEC
    write_mp4(concat_listing(parts, scratch), audio, output, video_is_concat=True, codec=codec)
    return _describe(output, streams, timeline.vod(low), timeline.vod(high), method, codec)


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
    select_copy(source.path, audio, a=(low, high))
    write_mp4(None, audio, output)
    return _describe(output, streams, timeline.vod(min(chosen)), timeline.vod(max(chosen)) + streams.audio_frame, "copy")


def cut_from_mp4(source: LocalSource, streams: Streams, start_time: float, end_time: float, mode: str,
                 output: Path) -> CutResult:
    """Cut a source kept as MP4 (AV1, which MPEG-TS cannot carry) in one FFmpeg run.

    "copy" copies from the keyframe at or before the start; "accurate"
    re-encodes exactly the range's frames to H.264 (an AV1 splice would need
    an encoder reproducing the source's sequence header). The audio packets
    nearest the range are copied; timestamps move so the first frame is at 0.
    """
    timeline = build_timeline(streams, source)
    first, last = select_frames(timeline, start_time, end_time)
    if mode == "copy":
        at_or_before = [k for k in key_indices(streams, timeline) if k <= first]
        if not at_or_before:
            raise InvalidMedia("the fetched media has no keyframe at or before the clip's start")
        first, last = at_or_before[-1], closed_end(streams, timeline, at_or_before[-1], last)
    low, high = timeline.pts[first], timeline.pts[last]
    args = ffmpeg_command("-copyts", *ts_input(source.path), "-map", "0:v:0")
    if mode == "copy":
        args += ["-c:v", "copy", "-bsf:v", keep_between(low - 1e-4, high + 1e-4)]
        method, codec = "copy", streams.codec
    else:
        half = timeline.frame / 2
        args += ["-vf", f"select='between(pts*TB\\,{low - half:.6f}\\,{high + half:.6f})'",
                 "-fps_mode", "passthrough", "-c:v", "libx264", "-preset", "veryfast",
                 *rate_control(streams, source.path, timeline)]
        method, codec = "reencode", REENCODE_CODEC
    if streams.audio:
        audio = _audio_range(streams, low, high + timeline.frame)
        args += ["-map", "0:a:0", "-c:a", "copy", "-bsf:a", keep_between(*audio)]
    args += ["-output_ts_offset", f"{-low:.6f}", "-movflags", MP4_FLAGS, "-use_editlist", "0",
             "-f", "mp4", str(output)]
    run_ffmpeg(args, what="cutting the clip")
    return _describe(output, streams, timeline.vod(low), timeline.vod(high) + timeline.frame, method, codec)


@dataclass(frozen=True)
class Prepared:
    """What was worked out while the source's segments still downloaded (see :mod:`clipqueue.media.pipeline`).

    ``streams`` is the source's packet listing (None: probe it), ``file_headers``
    its first H.264 headers; ``encodes`` are re-encoded heads or tails keyed by
    the timestamps of their first and last frame, each a future of
    ``(path, parameter sets)`` or of None.
    """

    streams: Streams | None
    file_headers: ParameterSets
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
    if source.path.suffix == ".mp4":
        return cut_from_mp4(source, streams, start_time, end_time, mode, output)
    with ThreadPoolExecutor(max_workers=1) as pool:
        picture: list[Future] = []

        def make_thumbnail() -> None:
            # One keyframe's decode beside the final mux, which leaves a core idle.
            if thumbnail and not picture:
                picture.append(pool.submit(thumbnail_from_source, source, streams, start_time, end_time,
                                           thumbnail, scratch, mode))

        if mode == "copy":
            result = cut_copy(source, streams, start_time, end_time, output, scratch, make_thumbnail)
        else:
            result = cut_accurate(source, streams, start_time, end_time, output, scratch, file_headers,
                                  prepared.encodes if prepared else None, make_thumbnail)
        make_thumbnail()
        return replace(result, thumbnail=picture[0].result() if picture else None)
