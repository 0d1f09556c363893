"""Read what a media file contains (ffprobe), and tell what a source that is not media is instead."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from clipqueue.exceptions import InvalidMedia, SourceUnavailable
from clipqueue.media.process import run_ffmpeg

# Demuxers FFmpeg may pick (-format_whitelist): never hls, concat or anything
# else that opens further files named inside the media.
MP4_FORMATS = "mov,mp4,m4a,3gp,3g2,mj2"
PROGRESSIVE_FORMATS = f"{MP4_FORMATS},mpegts"
PROBE_TIMEOUT_SECONDS = 60
EXPECTED_SOURCE = "expected an HLS playlist or an MP4/TS file"


@dataclass(frozen=True)
class MediaInfo:
    """The facts about a media file the service records or decides on."""

    duration: float
    width: int | None
    height: int | None
    video_codec: str | None
    audio_codec: str | None
    has_audio: bool
    start_time: float = 0.0


def probe_media(path: Path | str, formats: str = MP4_FORMATS, what: str = "the clip",
                timeout: float = PROBE_TIMEOUT_SECONDS) -> MediaInfo:
    """Return the duration, picture size and codecs of ``path``; raise ``InvalidMedia``.

    ``path`` is a local file, or the loopback URL of a
    :class:`~clipqueue.media.fetch.LoopbackRelay`; ``formats`` are the demuxers
    allowed. ``what`` names it in errors, which never show the path or URL
    itself. A probe longer than ``timeout`` seconds is killed: ``SourceUnavailable``
    for a relay (the network is slow), ``InvalidMedia`` for a local file.
    """
    is_relay = str(path).startswith("http://127.0.0.1:")
    protocols = ["-protocol_whitelist", "http,tcp", "-http_proxy", ""] if is_relay else ["-protocol_whitelist", "file"]
    args = ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json",
            "-format_whitelist", formats, *protocols, str(path)]
    try:
        info = json.loads(run_ffmpeg(args, timeout, what=f"reading {what}"))
    except subprocess.TimeoutExpired as exc:
        error = SourceUnavailable if is_relay else InvalidMedia
        raise error(f"reading {what} took longer than {timeout:g}s") from exc
    except InvalidMedia as exc:
        reason = str(exc).strip().splitlines()[-1].rpartition(": ")[2]
        hint = f"; {EXPECTED_SOURCE}" if is_relay else ""
        raise InvalidMedia(f"{what} is not media FFmpeg can read ({reason}){hint}") from exc
    streams = info.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video"), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    if video is None and audio is None:
        raise InvalidMedia(f"{what} has no audio or video stream")
    container = info.get("format", {})
    duration = float(container.get("duration") or (video or audio).get("duration") or 0.0)
    return MediaInfo(
        duration=duration,
        width=int(video["width"]) if video else None,
        height=int(video["height"]) if video else None,
        video_codec=video.get("codec_name") if video else None,
        audio_codec=audio.get("codec_name") if audio else None,
        has_audio=audio is not None,
        start_time=float(container.get("start_time") or 0.0),
    )


def describe_non_media(head: bytes) -> str | None:
    """What the first bytes of a source show it to be when that is plainly not media (an HTML page, JSON...), else None.

    FFmpeg would only say "Invalid data found"; this names the mistake in a user's terms.
    """
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<!--")):
        return "an HTML page"
    if text.startswith(b"<?xml") or text.startswith(b"<"):
        return "an XML or HTML document"
    if text.startswith((b"{", b"[")):
        return "a JSON document"
    if text and all(32 <= byte < 127 or byte in b"\t\r\n" for byte in text):
        return "a text file"
    if not head:
        return "an empty file"
    return None
