"""Settings read from the environment, with defaults from :mod:`clipqueue.defaults`.

One field per environment variable, named as the variable in lower case
(``MAX_CLIP_SECONDS`` → ``settings.max_clip_seconds``). Read once by
:func:`clipqueue.create_app` and handed down from there.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import Annotated, Any
from urllib.parse import quote

from limits import parse_many
from pydantic import AliasGenerator, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from clipqueue import defaults

CommaList = Annotated[tuple[str, ...], NoDecode]

# Rate limits are the settings an empty value turns off rather than defaults.
_RATE_LIMITS = ("rate_limit", "rate_limit_reads")
_OFF = {"", "0", "off", "none", "false"}
TWITCH_CODECS = ("av1", "h265", "h264")  # the names usher's supported_codecs takes


class Settings(BaseSettings):
    """Everything a process of clipqueue needs to know about its deployment."""

    model_config = SettingsConfigDict(
        frozen=True,
        case_sensitive=True,
        extra="ignore",
        validate_default=True,
        populate_by_name=True,
        alias_generator=AliasGenerator(validation_alias=str.upper),
    )

    # The REDIS_HOST family comes before redis_url, which is built from it.
    redis_host: str = defaults.REDIS_HOST
    redis_port: int = defaults.REDIS_PORT
    redis_password: str = defaults.REDIS_PASSWORD
    redis_db: int = defaults.REDIS_DB
    redis_url: str = defaults.REDIS_URL
    database_url: str = defaults.DATABASE_URL
    storage_local_dir: str = defaults.STORAGE_LOCAL_DIR
    public_base_url: str = defaults.PUBLIC_BASE_URL
    s3_bucket: str = defaults.S3_BUCKET
    s3_endpoint_url: str = defaults.S3_ENDPOINT_URL
    cdn_base_url: str = defaults.CDN_BASE_URL
    scratch_dir: str = defaults.SCRATCH_DIR
    allow_private_sources: bool = defaults.ALLOW_PRIVATE_SOURCES
    allowed_source_hosts: CommaList = defaults.ALLOWED_SOURCE_HOSTS
    api_tokens: CommaList = defaults.API_TOKENS
    min_clip_seconds: float = defaults.MIN_CLIP_SECONDS
    max_clip_seconds: float = defaults.MAX_CLIP_SECONDS
    max_vod_seconds: float = defaults.MAX_VOD_SECONDS
    max_request_bytes: int = defaults.MAX_REQUEST_BYTES
    job_ttl_seconds: int = defaults.JOB_TTL_SECONDS
    job_max_retries: int = defaults.JOB_MAX_RETRIES
    job_retry_backoff_seconds: int = defaults.JOB_RETRY_BACKOFF_SECONDS
    job_retry_backoff_max_seconds: int = defaults.JOB_RETRY_BACKOFF_MAX_SECONDS
    job_soft_time_limit_seconds: int = defaults.JOB_SOFT_TIME_LIMIT_SECONDS
    job_hard_time_limit_seconds: int = defaults.JOB_HARD_TIME_LIMIT_SECONDS
    lease_ttl_seconds: float = defaults.LEASE_TTL_SECONDS
    visibility_timeout_seconds: int = defaults.VISIBILITY_TIMEOUT_SECONDS
    janitor_interval_seconds: float = defaults.JANITOR_INTERVAL_SECONDS
    max_redeliveries: int = defaults.MAX_REDELIVERIES
    processing_deadline_seconds: float = defaults.PROCESSING_DEADLINE_SECONDS
    metrics_token: str = defaults.METRICS_TOKEN
    trusted_proxy_hops: int = defaults.TRUSTED_PROXY_HOPS
    outbox_sweep_seconds: float = defaults.OUTBOX_SWEEP_SECONDS
    outbox_grace_seconds: float = defaults.OUTBOX_GRACE_SECONDS
    fetch_concurrency: int = defaults.FETCH_CONCURRENCY
    fetch_retries: int = defaults.FETCH_RETRIES
    fetch_timeout_seconds: float = defaults.FETCH_TIMEOUT_SECONDS
    max_segments: int = defaults.MAX_SEGMENTS
    max_fetch_bytes: int = defaults.MAX_FETCH_BYTES
    max_output_bytes: int = defaults.MAX_OUTPUT_BYTES
    live_wait_deadline_seconds: float = defaults.LIVE_WAIT_DEADLINE_SECONDS
    live_poll_seconds: float = defaults.LIVE_POLL_SECONDS
    rate_limit: str = defaults.RATE_LIMIT
    rate_limit_reads: str = defaults.RATE_LIMIT_READS
    allowed_private_networks: CommaList = defaults.ALLOWED_PRIVATE_NETWORKS
    source_max_redirects: int = defaults.SOURCE_MAX_REDIRECTS
    twitch_gql_url: str = defaults.TWITCH_GQL_URL
    twitch_usher_url: str = defaults.TWITCH_USHER_URL
    twitch_client_id: str = defaults.TWITCH_CLIENT_ID
    twitch_oauth_token: str = defaults.TWITCH_OAUTH_TOKEN
    twitch_supported_codecs: CommaList = defaults.TWITCH_SUPPORTED_CODECS
    events_heartbeat_seconds: float = defaults.EVENTS_HEARTBEAT_SECONDS
    worker_heartbeat_dir: str = defaults.WORKER_HEARTBEAT_DIR
    worker_heartbeat_seconds: float = defaults.WORKER_HEARTBEAT_SECONDS
    worker_heartbeat_max_age_seconds: float = defaults.WORKER_HEARTBEAT_MAX_AGE_SECONDS
    sentry_dsn: str = defaults.SENTRY_DSN
    webhook_url: str = defaults.WEBHOOK_URL
    webhook_secret: str = defaults.WEBHOOK_SECRET
    webhook_retry_hours: float = defaults.WEBHOOK_RETRY_HOURS
    webhook_timeout_seconds: float = defaults.WEBHOOK_TIMEOUT_SECONDS
    webhook_backoff_seconds: float = defaults.WEBHOOK_BACKOFF_SECONDS
    webhook_backoff_max_seconds: float = defaults.WEBHOOK_BACKOFF_MAX_SECONDS
    webhook_sweep_seconds: float = defaults.WEBHOOK_SWEEP_SECONDS
    cancel_poll_seconds: float = defaults.CANCEL_POLL_SECONDS
    segment_cache_dir: str = defaults.SEGMENT_CACHE_DIR
    segment_cache_bytes: int = defaults.SEGMENT_CACHE_BYTES
    segment_cache_ttl_seconds: float = defaults.SEGMENT_CACHE_TTL_SECONDS
    identical_clip_window_seconds: float = defaults.IDENTICAL_CLIP_WINDOW_SECONDS
    identical_clip_wait_seconds: float = defaults.IDENTICAL_CLIP_WAIT_SECONDS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings from ``env`` alone, or from ``os.environ`` when it is ``None``.

        Raises ``ValueError`` naming each variable whose value is not valid.
        """
        try:
            if env is None:
                return cls()
            names = {field.validation_alias for field in cls.model_fields.values()}
            given = _FromMappingOnly(**{name: value for name, value in env.items() if name in names})
            return cls.model_construct(**dict(given))
        except ValidationError as exc:
            raise ValueError(_describe(exc)) from None

    # An empty variable means its default (as if unset), except for rate limits.
    @field_validator("*", mode="before")
    @classmethod
    def _empty_means_default(cls, value: Any, info: ValidationInfo) -> Any:
        if value == "" and info.field_name not in _RATE_LIMITS:
            return cls.model_fields[info.field_name].default
        return value

    @field_validator("allowed_source_hosts", mode="before")
    @classmethod
    def _hosts(cls, value: Any) -> Any:
        return tuple(item.lower() for item in _split(value)) if isinstance(value, str) else value

    @field_validator("twitch_supported_codecs", mode="before")
    @classmethod
    def _codecs(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        codecs = tuple(item.lower() for item in _split(value))
        unknown = [codec for codec in codecs if codec not in TWITCH_CODECS]
        if unknown or not codecs:
            raise ValueError(f"must list codecs among {', '.join(TWITCH_CODECS)}")
        return codecs

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _tokens(cls, value: Any) -> Any:
        return _split(value) if isinstance(value, str) else value

    @field_validator("allowed_private_networks", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> tuple[str, ...]:
        items = _split(value.lower()) if isinstance(value, str) else value
        networks = []
        for item in items:
            try:
                networks.append(str(ipaddress.ip_network(item, strict=False)))
            except ValueError:
                raise ValueError(f"{item!r} is not a network like 10.20.0.0/16") from None
        return tuple(networks)

    @field_validator(*_RATE_LIMITS, mode="after")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        """A rate limit such as ``60/minute``; empty when the setting turns it off ("0", "off")."""
        value = value.strip()
        if value.lower() in _OFF:
            return ""
        try:
            parse_many(value)
        except ValueError:
            raise ValueError("not a rate limit like 60/minute") from None
        return value

    @field_validator("redis_url", mode="after")
    @classmethod
    def _redis_url(cls, value: str, info: ValidationInfo) -> str:
        """``REDIS_URL``, or one built from the seed's ``REDIS_HOST``/``PORT``/``PASSWORD``/``DB``."""
        parts = [info.data.get(name) for name in ("redis_host", "redis_port", "redis_password", "redis_db")]
        if value or None in parts:  # set, or a part is invalid and already reported
            return value
        host, port, password, db = parts
        auth = f":{quote(password, safe='')}@" if password else ""
        return f"redis://{auth}{host}:{port}/{db}"

    @field_validator("database_url", mode="after")
    @classmethod
    def _database_url(cls, value: str) -> str:
        # Heroku-style postgres:// and a bare postgresql:// both mean psycopg2 (the
        # design's driver); SQLAlchemy 2.1 would otherwise pick psycopg 3.
        for prefix in ("postgres://", "postgresql://"):
            if value.startswith(prefix):
                value = "postgresql+psycopg2://" + value[len(prefix):]
        # A relative SQLite path means the folder the processes run in, for every process alike.
        if value.startswith("sqlite:///") and not value.startswith("sqlite:////"):
            relative = value[len("sqlite:///"):]
            if relative and relative != ":memory:":
                value = "sqlite:///" + os.path.abspath(relative)
        return value

    @field_validator("storage_local_dir", mode="after")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return os.path.abspath(value)

    @field_validator("public_base_url", "cdn_base_url", mode="after")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.job_soft_time_limit_seconds > self.job_hard_time_limit_seconds:
            raise ValueError("JOB_SOFT_TIME_LIMIT_SECONDS must not be more than JOB_HARD_TIME_LIMIT_SECONDS")
        if self.min_clip_seconds <= 0 or self.max_clip_seconds < self.min_clip_seconds:
            raise ValueError("need 0 < MIN_CLIP_SECONDS <= MAX_CLIP_SECONDS")
        if self.webhook_url and not self.webhook_secret:
            # Unsigned events at the operator's own receiver could be forged by anyone who finds it.
            raise ValueError("WEBHOOK_URL needs WEBHOOK_SECRET (its deliveries are signed)")
        return self


class _FromMappingOnly(Settings):
    """Settings validated from keyword arguments alone, never from ``os.environ``."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **_other_sources):
        return (init_settings,)


def _split(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _describe(error: ValidationError) -> str:
    """One line per bad setting: ``setting NAME='value': what is wrong``."""
    lines = []
    for item in error.errors(include_url=False):
        reason = str(item["ctx"]["error"]) if item["type"] == "value_error" else item["msg"]
        if item["loc"]:
            lines.append(f"setting {item['loc'][0]}={item['input']!r}: {reason}")
        else:
            lines.append(f"settings: {reason}")
    return "; ".join(lines)
