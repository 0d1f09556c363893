"""Make a JPEG thumbnail of a clip."""

from __future__ import annotations

import subprocess
from pathlib import Path

import ffmpeg

from clipqueue.exceptions import InvalidMedia
from clipqueue.media.cut import dies_with_parent
from clipqueue.media.probe import MP4_FORMATS, probe_media

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
    args = (
        ffmpeg.input(str(video), ss=at, noaccurate_seek=None, skip_frame="nokey", protocol_whitelist="file",
                     format_whitelist=MP4_FORMATS)
        .filter("scale", f"min({THUMBNAIL_WIDTH},iw)", -2)
        .output(str(out), vframes=1, format="image2", vcodec="mjpeg", **{"q:v": 3})
        .global_args("-nostdin", "-hide_banner", "-loglevel", "error")
        .overwrite_output()
        .compile()
    )
    try:
        result = subprocess.run(dies_with_parent(args), capture_output=True, timeout=THUMBNAIL_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired as exc:
        raise InvalidMedia(f"thumbnail of {video} took longer than {THUMBNAIL_TIMEOUT_SECONDS}s") from exc
    if result.returncode != 0 or not out.exists() or out.stat().st_size == 0:
        raise InvalidMedia(f"cannot make a thumbnail of {video}: {result.stderr.decode(errors='replace')[-500:]}")
    return out
