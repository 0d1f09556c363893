"""What a finished clip is also shown as: thumbnails in three sizes, an animated preview, a 9:16 portrait version.

All of them come from the clip file on local scratch, never the source again,
in one FFmpeg run: the clip is decoded once and its frames are split between
the outputs. Without a portrait the run seeks to the preview's start and stops
decoding once the preview's last frame is out, so a long clip costs no more
than its 6 s preview.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from clipqueue.exceptions import InvalidMedia
from clipqueue.media.mux import MP4_FLAGS, ffmpeg_command
from clipqueue.media.process import run_ffmpeg

THUMBNAIL_SIZES = {"small": 320, "medium": 640, "large": 1280}  # widths; never wider than the clip
PREVIEW_MAX_WIDTH = 640
PREVIEW_SECONDS = 6.0
PORTRAIT_MAX_WIDTH, PORTRAIT_MAX_HEIGHT = 1080, 1920
RENDITIONS_TIMEOUT_SECONDS = 300

# x264 settings: the portrait is a clip people watch; the preview is a small muted loop.
_PORTRAIT_ENCODE = ("-c:v", "libx264", "-preset", "veryfast", "-crf", "21", "-pix_fmt", "yuv420p")
_PREVIEW_ENCODE = ("-c:v", "libx264", "-preset", "veryfast", "-crf", "28", "-pix_fmt", "yuv420p")
_JPEG_ENCODE = ("-c:v", "mjpeg", "-q:v", "3", "-f", "image2")
_BLUR_SHRINK = 8  # the fill is blurred at an eighth of its size: the same look for a fraction of the work


@dataclass(frozen=True)
class Renditions:
    """The files made from a clip; sizes capped at the clip's width share one file."""

    thumbnails: dict[str, Path]  # "small", "medium", "large" → JPEG (the poster's file when it is that wide)
    preview: Path  # H.264 MP4, no audio, at most 640 px wide and 6 s
    portrait: Path | None = None  # H.264 MP4 with the clip's audio, when asked for
    poster: Path | None = None  # the clip's ``thumbnail_url`` JPEG, when asked for


def thumbnail_widths(width: int) -> dict[str, int]:
    """Each thumbnail size's width for a clip ``width`` pixels wide: never upscaled, so capped at ``width``."""
    return {name: min(target, width) for name, target in THUMBNAIL_SIZES.items()}


def preview_window(duration: float) -> tuple[float, float]:
    """The preview's ``(start, length)`` in the clip: 6 s from the thumbnails' moment (a third of the way in),
    moved earlier when the clip ends before that; a clip of 6 s or less is its own preview."""
    length = min(PREVIEW_SECONDS, duration)
    return min(thumbnail_time(duration), duration - length), length


def thumbnail_time(duration: float) -> float:
    """Where in the clip the thumbnails are taken: a third of the way in, as the cut's own thumbnail."""
    return duration / 3


def portrait_size(width: int, height: int, fill: str) -> tuple[int, int]:
    """The portrait version's size for a ``width`` x ``height`` clip: 9:16, at most 1080x1920, even.

    "crop" keeps the clip's own pixels: the largest 9:16 window of the clip
    (405x720 of a 720p clip, rounded to even), scaled down only past 1080x1920.
    "blur" shows the whole picture across the portrait's width, so that width
    is the clip's height (720 for 720p, 1080 for 1080p; a narrower clip's
    width): the picture is never scaled up, only the blurred fill around it.
    """
    if fill == "blur":
        out_width = min(PORTRAIT_MAX_WIDTH, width, height)
        return _even(out_width), _even(out_width * 16 / 9)
    crop_width, crop_height = _crop_window(width, height)
    scale = min(1.0, PORTRAIT_MAX_WIDTH / crop_width, PORTRAIT_MAX_HEIGHT / crop_height)
    return _even(crop_width * scale), _even(crop_height * scale)


def make_renditions(clip: Path, workdir: Path, *, width: int, height: int, duration: float,
                    portrait_fill: str | None = None, poster_width: int | None = None) -> Renditions:
    """Write the thumbnails and the preview of ``clip`` (and its portrait version with ``portrait_fill``
    "crop" or "blur", and with ``poster_width`` the ``thumbnail_url`` JPEG that wide) into ``workdir``.

    ``width``, ``height`` and ``duration`` are the clip's (``ExtractResult``'s), so nothing is probed.
    Raises ``InvalidMedia`` when FFmpeg fails or writes nothing.
    """
    widths = thumbnail_widths(width)
    pictures = {w: workdir / f"thumbnail-{w}.jpg" for w in sorted(set(widths.values()))}
    poster = workdir / "thumbnail.jpg" if poster_width else None
    if poster is not None:
        pictures[min(poster_width, width)] = poster  # a size of its own, or one of the three written once
    preview = workdir / "preview.mp4"
    portrait = workdir / "portrait.mp4" if portrait_fill else None

    preview_start, preview_length = preview_window(duration)
    at = thumbnail_time(duration)
    # The portrait needs every frame; the rest only the preview's stretch, which holds the thumbnails' frame.
    seek = 0.0 if portrait else preview_start
    branches = ["preview", "thumbnails"] + (["portrait"] if portrait else [])
    graph = [f"[0:v]split={len(branches)}" + "".join(f"[{b}]" for b in branches),
             f"[preview]trim=start={preview_start - seek:.6f}:duration={preview_length:.6f},setpts=PTS-STARTPTS,"
             f"scale='min({PREVIEW_MAX_WIDTH},iw)':-2,setsar=1[preview_out]",
             # One frame, then end of stream: the split stops feeding this branch.
             f"[thumbnails]trim=start={at - seek:.6f},trim=end_frame=1,setpts=PTS-STARTPTS,split={len(pictures)}"
             + "".join(f"[picture{w}]" for w in pictures)]
    graph += [f"[picture{w}]scale={w}:-2,setsar=1[picture{w}_out]" for w in pictures]
    args = ["-protocol_whitelist", "file", "-f", "mp4", *(["-ss", f"{seek:.6f}"] if seek else []),
            "-i", str(clip)]
    args += ["-map", "[preview_out]", "-an", *_PREVIEW_ENCODE, "-movflags", MP4_FLAGS, str(preview)]
    for w, path in pictures.items():
        args += ["-map", f"[picture{w}_out]", "-frames:v", "1", *_JPEG_ENCODE, str(path)]
    if portrait:
        graph.append(f"[portrait]{_portrait_filter(width, height, portrait_fill)}[portrait_out]")
        # Every frame of the clip with its own timestamps, and its audio as it is: frame-exact and in sync.
        args += ["-map", "[portrait_out]", "-map", "0:a?", "-fps_mode", "passthrough", *_PORTRAIT_ENCODE,
                 "-c:a", "copy", "-movflags", MP4_FLAGS, str(portrait)]
    args = ffmpeg_command("-filter_complex", ";".join(graph), *args)
    try:
        run_ffmpeg(args, RENDITIONS_TIMEOUT_SECONDS, what="making the clip's thumbnails and preview")
    except subprocess.TimeoutExpired as exc:
        raise InvalidMedia(f"thumbnails and preview took longer than {RENDITIONS_TIMEOUT_SECONDS}s") from exc
    written = [preview, *pictures.values(), *([portrait] if portrait else [])]
    missing = [path.name for path in written if not path.exists() or path.stat().st_size == 0]
    if missing:
        raise InvalidMedia(f"FFmpeg wrote no {', '.join(missing)} of the clip")
    return Renditions(thumbnails={name: pictures[w] for name, w in widths.items()}, preview=preview,
                      portrait=portrait, poster=poster)


def _portrait_filter(width: int, height: int, fill: str) -> str:
    """The filter making the clip's picture into its portrait version (see :func:`portrait_size`)."""
    out_width, out_height = portrait_size(width, height, fill)
    crop_width, crop_height = _crop_window(width, height)
    crop = f"crop={_even(crop_width)}:{_even(crop_height)}"
    if fill != "blur":
        return f"{crop},scale={out_width}:{out_height},setsar=1"
    small_width, small_height = _even(out_width / _BLUR_SHRINK), _even(out_height / _BLUR_SHRINK)
    return (f"split=2[picture][fill];"
            f"[fill]{crop},scale={small_width}:{small_height},boxblur=4:2,scale={out_width}:{out_height}[blurred];"
            f"[picture]scale={out_width}:-2,setsar=1[fitted];"
            f"[blurred][fitted]overlay=(W-w)/2:(H-h)/2,setsar=1,format=yuv420p")


def _crop_window(width: int, height: int) -> tuple[float, float]:
    """The largest 9:16 window of a ``width`` x ``height`` picture."""
    if width * 16 >= height * 9:
        return height * 9 / 16, float(height)
    return float(width), width * 16 / 9


def _even(value: float) -> int:
    """``value`` rounded to the nearest even number of pixels (H.264 in 4:2:0 needs even sizes), at least 2."""
    return max(2, int(value / 2 + 0.5) * 2)

