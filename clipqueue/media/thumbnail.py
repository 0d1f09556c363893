"""Make a JPEG thumbnail of a clip."""

from __future__ import annotations

import subprocess
from pathlib import Path

import ffmpeg

from clipqueue.exceptions import InvalidMedia
from clipqueue.media.mux import copy_packet
from clipqueue.media.packets import Streams
from clipqueue.media.probe import MP4_FORMATS, probe_media
from clipqueue.media.process import run_ffmpeg
from clipqueue.media.source import LocalSource
from clipqueue.media.timeline import build_timeline, key_indices, select_frames

THUMBNAIL_WIDTH = 480
THUMBNAIL_TIMEOUT_SECONDS = 60


def make_thumbnail(video: Path, out: Path, at: float | None = None, duration: float | None = None) -> Path:
    """Write a JPEG of the keyframe at or before ``at`` seconds (default: a third of the way in) and return ``out``.

    A keyframe is decoded on its own, so the thumbnail costs one frame's decode, not a GOP's; a clip
    whose only keyframe is its first frame (shorter than a GOP) gets that frame. Pass the clip's
    ``duration`` when known (``ExtractResult.duration``) to save probing the file.
    """
    if duration is None:
        info = probe_media(video, what="the clip")
        if info.width is None:
            raise InvalidMedia("the clip has no video to take a thumbnail from")
        duration = info.duration
    if at is None:
        at = duration / 3
    at = max(0.0, min(at, max(0.0, duration - 0.1)))
    keyframe = ffmpeg.input(str(video), ss=at, noaccurate_seek=None, skip_frame="nokey", protocol_whitelist="file",
                            format_whitelist=MP4_FORMATS)
    try:
        return _render(keyframe, out, "the clip")
    except InvalidMedia:
        # Seeking found no keyframe from ``at`` on: the clip's first frame, a keyframe, is the picture.
        first = ffmpeg.input(str(video), skip_frame="nokey", protocol_whitelist="file", format_whitelist=MP4_FORMATS)
        return _render(first, out, "the clip")


def keyframe_thumbnail(keyframe: Path, out: Path) -> Path:
    """Write a JPEG of the first picture of ``keyframe``, an MPEG-TS file of ours holding one keyframe, and return ``out``.

    The cut makes the thumbnail this way from the source's own keyframe while
    it re-encodes, instead of after it from the finished clip.
    """
    return _render(ffmpeg.input(str(keyframe), f="mpegts", protocol_whitelist="file"), out, "a keyframe of the source")


def thumbnail_from_source(source: LocalSource, streams: Streams, start_time: float, end_time: float,
                          out: Path, scratch: Path, mode: str = "accurate") -> Path | None:
    """Write a JPEG of the source keyframe about a third of the way into ``[start_time, end_time)``.

    Returns ``out``, or None when the clip holds no source keyframe or its bytes
    cannot be cut out of the source (the caller then takes a frame of the
    finished clip). The clip copies that keyframe (or, before its first
    keyframe, re-encodes it), so the picture is the clip's own. A ``mode``
    "copy" clip also starts with the keyframe at or before ``start_time``: a
    clip shorter than a GOP gets that one.
    """
    if source.joined_runs or source.path.suffix != ".ts":  # keyframe bytes are only cut out of MPEG-TS
        return None
    timeline = build_timeline(streams, source)
    first, last = select_frames(timeline, start_time, end_time)
    keys = key_indices(streams, timeline)
    clip_first = max((k for k in keys if k <= first), default=first) if mode == "copy" else first
    inside = [k for k in keys if clip_first <= k <= last]
    if not inside:
        return None
    third = first + (last - first + 1) // 3
    key = max((k for k in inside if k <= third), default=inside[0])
    keyframe = scratch / "thumbnail-keyframe.ts"
    if not copy_packet(source.path, streams, timeline.pts[key], keyframe):
        return None
    try:
        return keyframe_thumbnail(keyframe, out)
    except InvalidMedia:
        return None


def _render(source, out: Path, name: str) -> Path:
    """Write the first picture ``source`` decodes to the JPEG ``out``; ``name`` says what it is in errors."""
    args = (
        source.video.filter("scale", f"min({THUMBNAIL_WIDTH},iw)", -2)
        .output(str(out), vframes=1, format="image2", vcodec="mjpeg", **{"q:v": 3})
        .global_args("-nostdin", "-hide_banner", "-loglevel", "error")
        .overwrite_output()
        .compile()
    )
    try:
        run_ffmpeg(args, THUMBNAIL_TIMEOUT_SECONDS, what=f"making a thumbnail of {name}")
    except subprocess.TimeoutExpired as exc:
        raise InvalidMedia(f"thumbnail of {name} took longer than {THUMBNAIL_TIMEOUT_SECONDS}s") from exc
    if not out.exists() or out.stat().st_size == 0:
        raise InvalidMedia(f"cannot make a thumbnail of {name}: FFmpeg wrote no picture")
    return out
