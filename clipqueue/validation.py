"""Validation of a clip request: every field, with an error that names it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from clipqueue import defaults
from clipqueue.config import Settings
from clipqueue.exceptions import ForbiddenSource, SourceUnavailable, ValidationError
from clipqueue.urlpolicy import SourcePolicy, check_url

QUALITIES = ("source", "1080p", "720p", "480p", "360p", "160p", "audio_only", "auto")
MODES = ("accurate", "copy")
DEFAULT_QUALITY = "auto"
DEFAULT_MODE = "accurate"


@dataclass(frozen=True)
class ClipInput:
    vod_url: str
    start_time: float
    end_time: float
    quality: str
    mode: str
    title: str | None


def _number(data: dict[str, Any], name: str) -> float:
    if name not in data or data[name] is None:
        raise ValidationError(f"{name} is required", name, "missing_field")
    value = data[name]
    # bool is an int in Python, and "12" is not a number.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(f"{name} must be a number of seconds", name)
    value = float(value)
    if not math.isfinite(value):
        raise ValidationError(f"{name} must be finite", name)
    if value < 0:
        raise ValidationError(f"{name} must not be negative", name)
    return value


def _choice(data: dict[str, Any], name: str, choices: tuple[str, ...], default: str) -> str:
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, str) or value not in choices:
        raise ValidationError(f"{name} must be one of: {', '.join(choices)}", name)
    return value


def _vod_url(data: dict[str, Any], settings: Settings) -> str:
    value = data.get("vod_url")
    if value is None or value == "":
        raise ValidationError("vod_url is required", "vod_url", "missing_field")
    if not isinstance(value, str):
        raise ValidationError("vod_url must be a string", "vod_url")
    if len(value) > defaults.MAX_URL_LENGTH:
        raise ValidationError(f"vod_url is longer than {defaults.MAX_URL_LENGTH} characters", "vod_url")
    if any(ch.isspace() or ord(ch) < 32 for ch in value):
        raise ValidationError("vod_url must not contain spaces or control characters", "vod_url")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - parsing the port is what raises for "http://host:x"
    except ValueError as exc:
        raise ValidationError("vod_url is not a valid URL", "vod_url") from exc
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValidationError("vod_url must be an http(s) URL with a host", "vod_url")
    try:
        check_url(value, SourcePolicy.from_settings(settings))
    except ForbiddenSource as exc:
        raise ValidationError(str(exc), "vod_url", "forbidden_source") from exc
    except SourceUnavailable:
        # DNS is failing for now: the worker checks the URL again before any fetch.
        pass
    return value


def validate_clip_request(data: Any, settings: Settings) -> ClipInput:
    """Return the clip to create, or raise ``ValidationError`` naming the first bad field."""
    if not isinstance(data, dict):
        raise ValidationError("the request body must be a JSON object", None, "invalid_body")
    vod_url = _vod_url(data, settings)
    start_time = _number(data, "start_time")
    end_time = _number(data, "end_time")
    if end_time <= start_time:
        raise ValidationError("end_time must be greater than start_time", "end_time")
    if end_time > settings.max_vod_seconds:
        raise ValidationError(
            f"end_time is past the longest VOD accepted ({settings.max_vod_seconds:g} s)", "end_time"
        )
    length = end_time - start_time
    if length < settings.min_clip_seconds:
        raise ValidationError(
            f"clip is {length:g} s long; the minimum is {settings.min_clip_seconds:g} s", "end_time"
        )
    if length > settings.max_clip_seconds:
        raise ValidationError(
            f"clip is {length:g} s long; the maximum is {settings.max_clip_seconds:g} s", "end_time"
        )
    quality = _choice(data, "quality", QUALITIES, DEFAULT_QUALITY)
    mode = _choice(data, "mode", MODES, DEFAULT_MODE)
    title = data.get("title")
    if title is not None:
        if not isinstance(title, str):
            raise ValidationError("title must be a string", "title")
        title = title.strip()
        if not 1 <= len(title) <= defaults.MAX_TITLE_LENGTH:
            raise ValidationError(f"title must be 1 to {defaults.MAX_TITLE_LENGTH} characters", "title")
        if any(ord(ch) < 32 and ch not in "\t" for ch in title):
            raise ValidationError("title must not contain control characters", "title")
    return ClipInput(vod_url, start_time, end_time, quality, mode, title)
