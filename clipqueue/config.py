"""Settings read from the environment, with defaults from :mod:`clipqueue.defaults`."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from urllib.parse import quote

from limits import parse_many

from clipqueue import defaults


def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _list(value: str) -> tuple[str, ...]:
    return tuple(item.strip().lower() for item in value.split(",") if item.strip())


def _tokens(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _rate_limit(env: Mapping[str, str], name: str) -> str:
    """A rate limit such as ``60/minute``; empty when the setting turns it off ("0", "off")."""
    value = env.get(name, getattr(defaults, name)).strip()
    if value.lower() in {"", "0", "off", "none", "false"}:
        return ""
    try:
        parse_many(value)
    except ValueError as exc:
        raise ValueError(f"setting {name}={value!r} is not a rate limit like 60/minute") from exc
    return value


def _networks(value: str) -> tuple[str, ...]:
    networks = []
    for item in _list(value):
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError as exc:
            raise ValueError(f"setting ALLOWED_PRIVATE_NETWORKS: {item!r} is not a network") from exc
    return tuple(networks)


def redis_url_from_env(env: Mapping[str, str]) -> str:
    """Return ``REDIS_URL``, or a URL built from the seed's ``REDIS_HOST``/``PORT``/``PASSWORD``/``DB``."""
    if env.get("REDIS_URL"):
        return env["REDIS_URL"]
    host = env.get("REDIS_HOST", defaults.REDIS_HOST)
    port = env.get("REDIS_PORT", str(defaults.REDIS_PORT))
    password = env.get("REDIS_PASSWORD", defaults.REDIS_PASSWORD)
    db = env.get("REDIS_DB", str(defaults.REDIS_DB))
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{host}:{port}/{db}"


@dataclass(frozen=True)
class Settings:
    """Everything a process of clipqueue needs to know about its deployment."""

    redis_url: str
    database_url: str
    storage_local_dir: str
    public_base_url: str
    s3_bucket: str
    s3_endpoint_url: str
    cdn_base_url: str
    scratch_dir: str
    allow_private_sources: bool
    allowed_source_hosts: tuple[str, ...]
    api_tokens: tuple[str, ...]
    min_clip_seconds: float
    max_clip_seconds: float
    max_vod_seconds: float
    max_request_bytes: int
    job_ttl_seconds: int
    job_max_retries: int
    job_retry_backoff_seconds: int
    job_retry_backoff_max_seconds: int
    job_soft_time_limit_seconds: int
    job_hard_time_limit_seconds: int
    lease_ttl_seconds: float
    visibility_timeout_seconds: int
    janitor_interval_seconds: float
    max_redeliveries: int
    processing_deadline_seconds: float
    metrics_token: str
    trusted_proxy_hops: int
    outbox_sweep_seconds: float
    outbox_grace_seconds: float
    fetch_concurrency: int
    fetch_retries: int
    fetch_timeout_seconds: float
    max_segments: int
    max_fetch_bytes: int
    max_output_bytes: int
    live_wait_deadline_seconds: float
    live_poll_seconds: float
    rate_limit: str
    rate_limit_reads: str
    allowed_private_networks: tuple[str, ...]
    source_max_redirects: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings from ``env`` (default: ``os.environ``)."""
        env = os.environ if env is None else env

        def get(name: str, convert=str):
            default = getattr(defaults, name)
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                return convert(raw)
            except ValueError as exc:
                raise ValueError(f"setting {name}={raw!r} is not a valid {convert.__name__}") from exc

        database_url = env.get("DATABASE_URL") or defaults.DATABASE_URL
        # Heroku-style postgres:// and a bare postgresql:// both mean psycopg2 (the
        # design's driver); SQLAlchemy 2.1 would otherwise pick psycopg 3.
        for prefix in ("postgres://", "postgresql://"):
            if database_url.startswith(prefix):
                database_url = "postgresql+psycopg2://" + database_url[len(prefix):]
        # A relative SQLite path means the folder the processes run in, for every process alike.
        if database_url.startswith("sqlite:///") and not database_url.startswith("sqlite:////"):
            relative = database_url[len("sqlite:///"):]
            if relative and relative != ":memory:":
                database_url = "sqlite:///" + os.path.abspath(relative)
        return cls(
            redis_url=redis_url_from_env(env),
            database_url=database_url,
            storage_local_dir=os.path.abspath(get("STORAGE_LOCAL_DIR")),
            public_base_url=get("PUBLIC_BASE_URL").rstrip("/"),
            s3_bucket=env.get("S3_BUCKET", ""),
            s3_endpoint_url=env.get("S3_ENDPOINT_URL", ""),
            cdn_base_url=env.get("CDN_BASE_URL", "").rstrip("/"),
            scratch_dir=get("SCRATCH_DIR"),
            allow_private_sources=_bool(env.get("ALLOW_PRIVATE_SOURCES", "false")),
            allowed_source_hosts=_list(env.get("ALLOWED_SOURCE_HOSTS", "")),
            api_tokens=_tokens(env.get("API_TOKENS", "")),
            min_clip_seconds=get("MIN_CLIP_SECONDS", float),
            max_clip_seconds=get("MAX_CLIP_SECONDS", float),
            max_vod_seconds=get("MAX_VOD_SECONDS", float),
            max_request_bytes=get("MAX_REQUEST_BYTES", int),
            job_ttl_seconds=get("JOB_TTL_SECONDS", int),
            job_max_retries=get("JOB_MAX_RETRIES", int),
            job_retry_backoff_seconds=get("JOB_RETRY_BACKOFF_SECONDS", int),
            job_retry_backoff_max_seconds=get("JOB_RETRY_BACKOFF_MAX_SECONDS", int),
            job_soft_time_limit_seconds=get("JOB_SOFT_TIME_LIMIT_SECONDS", int),
            job_hard_time_limit_seconds=get("JOB_HARD_TIME_LIMIT_SECONDS", int),
            lease_ttl_seconds=get("LEASE_TTL_SECONDS", float),
            visibility_timeout_seconds=get("VISIBILITY_TIMEOUT_SECONDS", int),
            janitor_interval_seconds=get("JANITOR_INTERVAL_SECONDS", float),
            max_redeliveries=get("MAX_REDELIVERIES", int),
            processing_deadline_seconds=get("PROCESSING_DEADLINE_SECONDS", float),
            metrics_token=env.get("METRICS_TOKEN", defaults.METRICS_TOKEN),
            trusted_proxy_hops=get("TRUSTED_PROXY_HOPS", int),
            outbox_sweep_seconds=get("OUTBOX_SWEEP_SECONDS", float),
            outbox_grace_seconds=get("OUTBOX_GRACE_SECONDS", float),
            fetch_concurrency=get("FETCH_CONCURRENCY", int),
            fetch_retries=get("FETCH_RETRIES", int),
            fetch_timeout_seconds=get("FETCH_TIMEOUT_SECONDS", float),
            max_segments=get("MAX_SEGMENTS", int),
            max_fetch_bytes=get("MAX_FETCH_BYTES", int),
            max_output_bytes=get("MAX_OUTPUT_BYTES", int),
            live_wait_deadline_seconds=get("LIVE_WAIT_DEADLINE_SECONDS", float),
            live_poll_seconds=get("LIVE_POLL_SECONDS", float),
            rate_limit=_rate_limit(env, "RATE_LIMIT"),
            rate_limit_reads=_rate_limit(env, "RATE_LIMIT_READS"),
            allowed_private_networks=_networks(env.get("ALLOWED_PRIVATE_NETWORKS", defaults.ALLOWED_PRIVATE_NETWORKS)),
            source_max_redirects=get("SOURCE_MAX_REDIRECTS", int),
        )

    def __post_init__(self) -> None:
        if self.job_soft_time_limit_seconds > self.job_hard_time_limit_seconds:
            raise ValueError("JOB_SOFT_TIME_LIMIT_SECONDS must not be more than JOB_HARD_TIME_LIMIT_SECONDS")
        if self.min_clip_seconds <= 0 or self.max_clip_seconds < self.min_clip_seconds:
            raise ValueError("need 0 < MIN_CLIP_SECONDS <= MAX_CLIP_SECONDS")

    def as_dict(self) -> dict:
        return asdict(self)
