"""The API's request and response models, declared once with pydantic v2.

Validation of a clip request (:func:`parse_clip_request`), the error format
(:class:`ErrorBody`, :func:`validation_error`) and the OpenAPI document
(:mod:`clipqueue.openapi`, from ``model_json_schema``) all come from these
models. Limits that are settings (clip length, longest VOD, the hosts
``ALLOWED_SOURCE_HOSTS`` admits) are part of the model a deployment builds
with :func:`clip_request_model`, so the document states what is enforced.

Rules JSON Schema cannot state (``end_time`` after ``start_time``, the clip's
length, and the source policy's DNS answers) are checked here too, and the
document names them in the model's description and its ``400`` answers.
"""

import functools
import re
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import PydanticCustomError

from clipqueue import defaults
from clipqueue.config import Settings
from clipqueue.exceptions import ValidationError
from clipqueue.jobs import JOB_CANCELED, JOB_COMPLETED, JOB_FAILED, JOB_QUEUED, JOB_RETRYING, JOB_RUNNING
from clipqueue.media.extract import MODES
from clipqueue.media.playlist import QUALITIES
from clipqueue.models import (
    CLIP_STATUSES,
    DELIVERY_STATUSES,
    OUTPUTS,
    PORTRAIT_FILLS,
    PRIORITIES,
    PRIORITY_NORMAL,
    isoformat,
)

DEFAULT_QUALITY = "auto"
DEFAULT_MODE = "accurate"
JOB_STATUSES = (JOB_QUEUED, JOB_RUNNING, JOB_RETRYING, JOB_COMPLETED, JOB_FAILED, JOB_CANCELED)

Quality = Literal[QUALITIES]
Mode = Literal[MODES]
ClipStatus = Literal[CLIP_STATUSES]
Priority = Literal[PRIORITIES]
Output = Literal[OUTPUTS]
PortraitFill = Literal[PORTRAIT_FILLS]


def _any_case(text: str) -> str:
    """``text`` as a pattern that matches it in any letter case (JSON Schema has no flags)."""
    return "".join(f"[{ch.upper()}{ch.lower()}]" if ch.isalpha() else re.escape(ch) for ch in text)


# What str.isspace() calls a space, spelled out: a pattern's \s means less in JSON Schema (ECMA 262).
_SPACE = r"\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"

# A URL as the API accepts it: http(s), a host (name, IPv4 or [IPv6]), an optional
# port, no spaces or control characters. The source policy then decides on the
# host (private ranges, ALLOWED_SOURCE_HOSTS, user names), with code forbidden_source.
_SCHEME = _any_case("http") + "[Ss]?://"
_USERINFO = rf"(?:[^{_SPACE}\x00-\x1f/?#@\[\]]*@)?"
_NAME = r"(?:[A-Za-z0-9_-]+\.)*[A-Za-z0-9_-]+\.?"
_IPV6 = r"\[[0-9A-Fa-f:.]+\]"
_PORT_5_DIGITS = r"6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}"
_PORT = rf"(?:{_PORT_5_DIGITS}|[0-9]{{1,4}})"
_REST = rf"(?:[/?#][^{_SPACE}\x00-\x1f]*)?"
URL_PATTERN = rf"^{_SCHEME}{_USERINFO}(?:{_NAME}|{_IPV6})(?::{_PORT})?{_REST}$"
_URL = re.compile(URL_PATTERN)

# A title is 1 to MAX_TITLE_LENGTH characters once trimmed, with no control characters but tabs.
_TITLE_CHAR = r"[^\x00-\x08\x0a-\x1f]"
_TITLE_EDGE = rf"[^{_SPACE}\x00-\x08\x0a-\x1f]"
_TITLE_MIDDLE = rf"{_TITLE_CHAR}{{0,{defaults.MAX_TITLE_LENGTH - 2}}}"
TITLE_PATTERN = rf"^[{_SPACE}]*{_TITLE_EDGE}(?:{_TITLE_MIDDLE}{_TITLE_EDGE})?[{_SPACE}]*$"
_TITLE = re.compile(TITLE_PATTERN)


def _http_url(value: str, field: str = "vod_url") -> str:
    if any(ch.isspace() or ord(ch) < 32 for ch in value):
        raise PydanticCustomError("invalid_field", f"{field} must not contain spaces or control characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - parsing the port is what raises for "http://host:x"
    except ValueError as exc:
        raise PydanticCustomError("invalid_field", f"{field} is not a valid URL") from exc
    if not _URL.match(value) or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise PydanticCustomError("invalid_field", f"{field} must be an http(s) URL with a host")
    return value


def _title(value: str) -> str:
    if not _TITLE.match(value):
        raise PydanticCustomError(
            "invalid_field",
            f"title must be 1 to {defaults.MAX_TITLE_LENGTH} characters, without control characters")
    return value.strip()


VodUrl = Annotated[
    str,
    Field(max_length=defaults.MAX_URL_LENGTH, json_schema_extra={"pattern": URL_PATTERN},
          description="An HLS playlist (master or media) or an MP4/TS file over http(s), or a Twitch link: "
                      "https://www.twitch.tv/videos/<id> or a live channel, https://www.twitch.tv/<login>. "
                      "Refused with code forbidden_source when the source policy forbids it."),
    AfterValidator(_http_url),
]
CallbackUrl = Annotated[
    str,
    Field(max_length=defaults.MAX_URL_LENGTH, json_schema_extra={"pattern": URL_PATTERN},
          description="Where this clip's events (clip.ready, clip.failed, clip.canceled) are POSTed, beside "
                      "WEBHOOK_URL. Checked by the source URL policy (code forbidden_source)."),
    AfterValidator(lambda value: _http_url(value, "callback_url")),
]
# strict: true and "12" are not numbers; allow_inf_nan: NaN and Infinity are not seconds.
Seconds = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False, description="seconds into the VOD")]
Title = Annotated[
    str,
    Field(json_schema_extra={"pattern": TITLE_PATTERN},
          description="trimmed; must not be blank or contain control characters"),
    AfterValidator(_title),
]


class ClipRequest(BaseModel):
    """A clip to cut. Unknown fields are ignored; ``null`` means the field was left out."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"example": {
        "vod_url": "https://vod.example/videos/1234/master.m3u8",
        "start_time": 10.0, "end_time": 25.0, "quality": "720p", "title": "nice play",
    }})

    min_clip_seconds: ClassVar[float] = defaults.MIN_CLIP_SECONDS
    max_clip_seconds: ClassVar[float] = defaults.MAX_CLIP_SECONDS

    vod_url: VodUrl
    start_time: Seconds
    end_time: Seconds
    quality: Quality | None = DEFAULT_QUALITY
    mode: Mode | None = DEFAULT_MODE
    title: Title | None = None
    callback_url: CallbackUrl | None = None
    priority: Annotated[Priority, Field(
        description="a queued high job starts before any queued normal one, low after both")] | None = PRIORITY_NORMAL
    outputs: Annotated[list[Output], Field(
        max_length=len(OUTPUTS),
        description="extra versions to make: portrait, a 9:16 version (portrait_url)")] | None = None
    portrait_fill: Annotated[PortraitFill, Field(
        description="how the portrait version fills 9:16: crop (the centre, the default) or blur "
                    "(the whole picture over a blurred copy of itself)")] | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {key: value for key, value in data.items() if value is not None}
            if data.get("vod_url") == "":
                del data["vod_url"]
        return data

    @field_validator("end_time")
    @classmethod
    def _after_start_and_within_limits(cls, end_time: float, info: ValidationInfo) -> float:
        start_time = info.data.get("start_time")
        if start_time is None:
            return end_time  # start_time's own error is reported
        if end_time <= start_time:
            raise PydanticCustomError("invalid_field", "end_time must be greater than start_time")
        length = end_time - start_time
        if length < cls.min_clip_seconds:
            raise PydanticCustomError(
                "invalid_field", f"clip is {length:g} s long; the minimum is {cls.min_clip_seconds:g} s")
        if length > cls.max_clip_seconds:
            raise PydanticCustomError(
                "invalid_field", f"clip is {length:g} s long; the maximum is {cls.max_clip_seconds:g} s")
        return end_time

    @field_validator("outputs")
    @classmethod
    def _each_output_once(cls, outputs: list[str]) -> list[str]:
        return sorted(set(outputs))

    @property
    def columns(self) -> dict[str, Any]:
        """The clip row's columns this request sets: to create it, and to compare a retried POST with it."""
        outputs = self.outputs or None
        portrait = outputs is not None and "portrait" in outputs
        return {
            "vod_url": self.vod_url, "start_time": self.start_time, "end_time": self.end_time,
            "quality": self.quality, "mode": self.mode, "title": self.title,
            "callback_url": self.callback_url, "priority": self.priority, "outputs": outputs,
            "portrait_fill": (self.portrait_fill or "crop") if portrait else None,
        }


def allowed_hosts_url_pattern(allowed_hosts: tuple[str, ...]) -> str:
    """``vod_url``'s pattern when ``ALLOWED_SOURCE_HOSTS`` narrows sources to those hosts and subdomains.

    Only the document states it: the source policy enforces it (code
    ``forbidden_source``), with the rest of its static rules spelled here too:
    names as DNS labels, no user names, port 0, DEL or backslash.
    """
    hosts = "|".join(_any_case(host) for host in allowed_hosts)
    label = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    port = rf"(?:{_PORT_5_DIGITS}|[1-9][0-9]{{0,3}})"
    rest = rf"(?:[/?#][^{_SPACE}\x00-\x1f\x7f\\]*)?"
    # At most three labels before the allowed host keep a name under DNS's 253 characters.
    return rf"^{_SCHEME}(?:{label}\.){{0,3}}(?:{hosts})\.?(?::{port})?{rest}$"


@functools.lru_cache(maxsize=16)
def _deployment_clip_request(min_clip: float, max_clip: float, max_vod: float,
                             allowed_hosts: tuple[str, ...]) -> type[ClipRequest]:
    url_schema = {"pattern": allowed_hosts_url_pattern(allowed_hosts)} if allowed_hosts else {}

    class DeploymentClipRequest(ClipRequest):
        __doc__ = (f"A clip to cut: end_time must be greater than start_time; the clip lasts {min_clip:g} to "
                   f"{max_clip:g} s. Unknown fields are ignored; null means the field was left out.")
        model_config = ConfigDict(title="ClipRequest")
        min_clip_seconds: ClassVar[float] = min_clip
        max_clip_seconds: ClassVar[float] = max_clip

        vod_url: Annotated[VodUrl, Field(json_schema_extra=url_schema)]
        callback_url: Annotated[CallbackUrl, Field(json_schema_extra=url_schema)] | None = None
        end_time: Annotated[Seconds, Field(le=max_vod)]

    return DeploymentClipRequest


def clip_request_model(settings: Settings) -> type[ClipRequest]:
    """The clip request with this deployment's limits (clip length, longest VOD, allowed source hosts)."""
    return _deployment_clip_request(settings.min_clip_seconds, settings.max_clip_seconds,
                                    settings.max_vod_seconds, tuple(settings.allowed_source_hosts))


def validation_error(exc: PydanticValidationError) -> ValidationError:
    """The first of pydantic's errors in the API's terms: a code, a message, the field it names."""
    error = exc.errors(include_url=False)[0]
    loc = [str(part) for part in error["loc"]]
    field = loc[0] if loc else None
    if field is None:
        return ValidationError("the request body must be a JSON object", None, "invalid_body")
    if error["type"] == "missing":
        return ValidationError(f"{field} is required", field, "missing_field")
    message = error["msg"] if error["type"] == "invalid_field" else f"{field}: {error['msg']}"
    return ValidationError(message, field, "invalid_field")


def parse_clip_request(data: Any, settings: Settings) -> ClipRequest:
    """Return the clip to create, or raise ``ValidationError`` naming the first bad field.

    The source policy is not applied here: see :func:`clipqueue.api.check_source`.
    """
    if not isinstance(data, dict):
        raise ValidationError("the request body must be a JSON object", None, "invalid_body")
    try:
        return clip_request_model(settings).model_validate(data)
    except PydanticValidationError as exc:
        raise validation_error(exc) from None


# --- responses -------------------------------------------------------------

class Clip(BaseModel):
    """The clip record."""

    clip_id: str = Field(json_schema_extra={"format": "uuid"})
    id: str = Field(json_schema_extra={"format": "uuid"})
    vod_url: str
    start_time: float
    end_time: float
    quality: Quality
    quality_used: str | None
    mode: Mode
    title: str | None
    status: ClipStatus
    video_url: str | None
    thumbnail_url: str | None
    duration: float | None
    actual_start_time: float | None
    actual_end_time: float | None
    width: int | None
    height: int | None
    size_bytes: int | None
    muted_ranges: list[Annotated[list[float], Field(min_length=2, max_length=2)]]
    extraction_method: str | None = Field(
        description="how the clip was made: smart_cut, reencode (exact, every frame encoded again) or copy")
    codec: str | None = Field(description="the clip's video codec (h264, hevc or av1); null for audio only")
    callback_url: str | None = Field(description="where this clip's events are POSTed, beside WEBHOOK_URL")
    priority: Priority
    outputs: list[Output] = Field(description="extra versions asked for")
    portrait_fill: PortraitFill | None
    preview_url: str | None = Field(description="a short animated loop (at most 640 px wide and 6 s)")
    thumbnails: dict[Literal["small", "medium", "large"], str] | None = Field(
        description="thumbnails 320, 640 and 1280 px wide (never upscaled)")
    portrait_url: str | None = Field(description="the 9:16 version, when outputs asked for portrait")
    error: str | None
    failure_code: str | None = Field(
        description="why a failed clip failed, e.g. source_not_found, range_not_in_vod, storage_unavailable")
    created_at: str = Field(json_schema_extra={"format": "date-time"})
    updated_at: str = Field(json_schema_extra={"format": "date-time"})
    processed_at: str | None = Field(json_schema_extra={"format": "date-time"})

    @classmethod
    def of(cls, clip: Any) -> "Clip":
        """The record of a :class:`clipqueue.models.Clip` row."""
        return cls(
            clip_id=str(clip.id), id=str(clip.id),
            **{name: getattr(clip, name) for name in cls.model_fields
               if name not in ("clip_id", "id", "muted_ranges", "priority", "outputs",
                               "created_at", "updated_at", "processed_at")},
            muted_ranges=[list(r) for r in (clip.muted_ranges or [])],
            priority=clip.priority or PRIORITY_NORMAL,
            outputs=list(clip.outputs or []),
            created_at=isoformat(clip.created_at),
            updated_at=isoformat(clip.updated_at),
            processed_at=isoformat(clip.processed_at),
        )


class Job(BaseModel):
    """The job's metadata in Redis (``clip_extraction_job:{clip_id}``)."""

    status: Literal[JOB_STATUSES]
    clip_id: str
    queued_at: str | None = None
    vod_url: str | None = None
    start_time: float | None = None
    end_time: float | None = None
    quality: str | None = None
    priority: Priority | None = None
    started_at: str | None = None
    stage: str | None = None
    progress: Annotated[int, Field(ge=0, le=100)] | None = None
    attempts: int | None = None
    worker: str | None = None
    completed_at: str | None = None
    error: str | None = None


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable, e.g. invalid_field, forbidden_source")
    message: str
    field: str | None = Field(description="the request field at fault")


class ErrorBody(BaseModel):
    """Every error the API answers."""

    error: ErrorDetail


class QueueCounts(BaseModel):
    pending: int = Field(ge=0, description="jobs waiting in clip_extraction_jobs")
    dead_letter: int = Field(ge=0)
    not_yet_queued: int = Field(ge=0, description="clips whose job waits for Redis to come back")


class DeadLetter(BaseModel):
    """A job that failed for good, with its payload, error and traceback."""

    clip_id: str
    payload: dict[str, Any] | None = None
    error: str
    traceback: str | None = None
    attempts: int
    failed_at: str | None = None


class DeadLetters(BaseModel):
    count: int = Field(ge=0)
    jobs: list[DeadLetter]


def _decimal_digits(value: Any) -> Any:
    # A query string is text: only plain digits are a number ("5.0", "+5" and "1_0" are not).
    if isinstance(value, str) and not (value.isascii() and value.isdigit() and len(value) <= 4):
        raise PydanticCustomError("invalid_field", "limit must be 1 to 1000")
    return value


class DeadLetterQuery(BaseModel):
    """``GET /api/v1/dead-letter``'s query string."""

    limit: Annotated[int, Field(ge=1, le=1000), BeforeValidator(_decimal_digits)] = 100


class Replay(BaseModel):
    clip_id: str
    replayed: bool = Field(description="false when the job was not dead-lettered")
    status: ClipStatus


class ReplayAll(BaseModel):
    replayed: list[str]
    count: int = Field(ge=0)


class Purged(BaseModel):
    purged: int = Field(ge=0)


class WebhookDelivery(BaseModel):
    """One event for one receiver, and how its delivery went."""

    id: str = Field(json_schema_extra={"format": "uuid"})
    event_id: str = Field(json_schema_extra={"format": "uuid"},
                          description="the same on every attempt: receivers deduplicate by it")
    event_type: Literal["clip.ready", "clip.failed", "clip.canceled"]
    clip_id: str = Field(json_schema_extra={"format": "uuid"})
    target: Literal["webhook", "callback"] = Field(description="WEBHOOK_URL, or the clip's callback_url")
    url: str
    status: Literal[DELIVERY_STATUSES]
    attempts: int = Field(ge=0)
    next_attempt_at: str | None = Field(json_schema_extra={"format": "date-time"},
                                        description="when it is tried next, while pending")
    expires_at: str = Field(json_schema_extra={"format": "date-time"},
                            description="attempts stop then (WEBHOOK_RETRY_HOURS after the event or a retry)")
    last_status_code: int | None
    last_error: str | None
    last_response: str | None = Field(description="the start of the receiver's last answer (200 characters)")
    created_at: str = Field(json_schema_extra={"format": "date-time"})
    last_attempt_at: str | None = Field(json_schema_extra={"format": "date-time"})
    delivered_at: str | None = Field(json_schema_extra={"format": "date-time"})


class WebhookDeliveries(BaseModel):
    deliveries: list[WebhookDelivery]


class WebhookDeliveryQuery(BaseModel):
    """``GET /api/v1/webhooks/deliveries``'s query string: without ``status``, pending and failed ones."""

    status: Literal[DELIVERY_STATUSES] | None = None
    limit: Annotated[int, Field(ge=1, le=1000), BeforeValidator(_decimal_digits)] = 100
