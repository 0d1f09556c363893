"""Checks on produced files with the real ffprobe and ffmpeg."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import boto3


def ffprobe(path: Path) -> dict:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, f"ffprobe cannot read {path}: {result.stderr}"
    return json.loads(result.stdout)


def stream(info: dict, kind: str) -> dict | None:
    return next((s for s in info["streams"] if s["codec_type"] == kind), None)


def assert_playable_mp4(path: Path, expected_duration: float, tolerance: float,
                        video_codec: str = "h264") -> dict:
    """An MP4 with H.264 (or ``video_codec``) video and AAC audio, of about the expected length, that decodes
    fully."""
    info = ffprobe(path)
    assert "mp4" in info["format"]["format_name"]
    video, audio = stream(info, "video"), stream(info, "audio")
    assert video is not None and video["codec_name"] == video_codec
    assert audio is not None and audio["codec_name"] == "aac"
    duration = float(info["format"]["duration"])
    assert abs(duration - expected_duration) <= tolerance, (duration, expected_duration)
    decoded = subprocess.run(
        ["ffmpeg", "-v", "error", "-xerror", "-i", str(path), "-f", "null", "-"],
        capture_output=True, text=True, timeout=120,
    )
    assert decoded.returncode == 0 and not decoded.stderr.strip(), decoded.stderr
    return info


def assert_jpeg(path: Path) -> dict:
    info = ffprobe(path)
    image = stream(info, "video")
    assert image is not None and image["codec_name"] == "mjpeg"
    assert int(image["width"]) > 0 and int(image["height"]) > 0
    return image


def fetch_stored(service, url: str, destination: Path) -> Path:
    """Read a stored object back the way a viewer would: from local storage via web, or from S3."""
    if service.env.get("S3_BUCKET"):
        key = url.split(f"/{service.env['S3_BUCKET']}/", 1)[1]
        boto3.client("s3", endpoint_url=service.env["S3_ENDPOINT_URL"]).download_file(
            service.env["S3_BUCKET"], key, str(destination)
        )
    else:
        path = url.removeprefix(service.env["PUBLIC_BASE_URL"])
        response = service.client.get(path)
        assert response.status_code == 200, (url, response.status_code)
        destination.write_bytes(response.data)
        response.close()
    return destination


def clip_object_keys(clip: dict) -> set[str]:
    """The storage keys of every object a clip record links: its video, thumbnails, preview and portrait."""
    urls = [clip["video_url"], clip["thumbnail_url"], clip["preview_url"], clip["portrait_url"],
            *(clip["thumbnails"] or {}).values()]
    return {"clips/" + url.rpartition("/clips/")[2] for url in urls if url}
