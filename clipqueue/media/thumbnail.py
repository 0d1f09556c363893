"""Make a JPEG thumbnail of a clip."""

from __future__ import annotations

import subprocess
from pathlib import Path

import ffmpeg

from clipqueue.exceptions import InvalidMedia
from clipqueue.media.probe import MP4_FORMATS, probe_media
from clipqueue.media.process import run_ffmpeg

THUMBNAIL_WIDTH = 480
THUMBNAIL_TIMEOUT_SECONDS = 60


def make_thumbnail(video: Path, out: Path, at: float | None = None, duration: float | None = None) -> Path:
    """Write a JPEG of the keyframe at or before ``at`` seconds (default: a third of the way in) and return ``out``.

    A keyframe is decoded on its own, so the thumbnail costs one frame's decode, not a GOP's. Pass the clip's ``duration`` when known (``ExtractResult.duration``) to save probing the file.
    """
    if duration is None:
        info = probe_media(video)
        if info.width is None:
            raise InvalidMedia(f"{video} has no video stream to take a thumbnail from")
        duration = info.duration
    if at is None:
        at = duration / 3
    at = max(0.0, min(at, max(0.0, duration - 0.1)))
    source = ffmpeg.input(str(video), ss=at, noaccurate_seek=None, skip_frame="nokey", protocol_whitelist="file",
                          format_whitelist=MP4_FORMATS)
    return _render(source, out, str(video))


def keyframe_thumbnail(keyframe: Path, out: Path) -> Path:
    """Write a JPEG of the first picture of ``keyframe``, an MPEG-TS file of ours holding one keyframe, and return ``out``.

    The cut makes the thumbnail this way from the source's own keyframe while
    it re-encodes, instead of after it from the finished clip.
    """
    return _render(ffmpeg.input(str(keyframe), f="mpegts", protocol_whitelist="file"), out, str(keyframe))


def _render(source, out: Path, name: str) -> Path:
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
