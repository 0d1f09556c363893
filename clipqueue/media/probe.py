"""Read what a media file contains (ffprobe)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import ffmpeg

from clipqueue.exceptions import InvalidMedia

# Demuxers FFmpeg may pick (-format_whitelist): never hls, concat or anything
# else that opens further files named inside the media.
MP4_FORMATS = "mov,mp4,m4a,3gp,3g2,mj2"
PROGRESSIVE_FORMATS = f"{MP4_FORMATS},mpegts"


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


def probe_media(path: Path | str, formats: str = MP4_FORMATS) -> MediaInfo:
    """Return the duration, picture size and codecs of ``path``; raise ``InvalidMedia``.

    ``path`` is a local file, or the loopback URL of a
    :class:`~clipqueue.media.fetch.LoopbackRelay`; ``formats`` are the demuxers allowed.
    """
    is_relay = str(path).startswith("http://127.0.0.1:")
    protocols = {"protocol_whitelist": "http,tcp", "http_proxy": ""} if is_relay else {"protocol_whitelist": "file"}
    try:
        info = ffmpeg.probe(str(path), format_whitelist=formats, **protocols)
    except ffmpeg.Error as exc:
        message = exc.stderr.decode(errors="replace").strip().splitlines()[-1:] if exc.stderr else []
        raise InvalidMedia(f"ffprobe cannot read {path}: {' '.join(message) or exc}") from exc
    streams = info.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video"), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    if video is None and audio is None:
        raise InvalidMedia(f"{path} has no audio or video stream")
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
