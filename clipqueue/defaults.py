"""Default values of every setting, in one place.

Each constant is overridden by the environment variable of the same name
(see :mod:`clipqueue.config`).
"""

REDIS_URL = ""  # empty: built from REDIS_HOST, REDIS_PORT, REDIS_PASSWORD and REDIS_DB
REDIS_HOST = "localhost"
REDIS_PORT = 6379
REDIS_PASSWORD = ""
REDIS_DB = 0
REDIS_SOCKET_TIMEOUT = 5.0

DATABASE_URL = "sqlite:///clipqueue.db"

STORAGE_LOCAL_DIR = "media"
# Empty: web's http://localhost:$PORT, which web publishes for workers (clipqueue.publicurl).
PUBLIC_BASE_URL = ""
SCRATCH_DIR = ""  # empty: the system temporary folder

# S3 storage instead of the local folder when S3_BUCKET is set; S3_ENDPOINT_URL
# for MinIO or R2; CDN_BASE_URL the public prefix of stored objects.
S3_BUCKET = ""
S3_ENDPOINT_URL = ""
CDN_BASE_URL = ""

# Who may use the API: comma-separated bearer tokens for calls that change
# anything (empty: no token needed).
API_TOKENS = ""

# Clip limits: Twitch allows clips of 1 to 60 seconds.
MIN_CLIP_SECONDS = 1.0
MAX_CLIP_SECONDS = 60.0
MAX_VOD_SECONDS = 48 * 3600.0
MAX_URL_LENGTH = 2048
MAX_TITLE_LENGTH = 255
MAX_REQUEST_BYTES = 16 * 1024

JOB_TTL_SECONDS = 7 * 24 * 3600

# Retries of transient failures (Celery autoretry_for with exponential backoff).
JOB_MAX_RETRIES = 3
JOB_RETRY_BACKOFF_SECONDS = 5
JOB_RETRY_BACKOFF_MAX_SECONDS = 60
JOB_SOFT_TIME_LIMIT_SECONDS = 600
JOB_HARD_TIME_LIMIT_SECONDS = 660

# Delivery: a running job holds a lease renewed by a heartbeat. Celery's Redis
# transport gives an unacknowledged job back after the visibility timeout (it
# must exceed the longest retry countdown); the janitor re-queues jobs whose
# lease expired, at most MAX_REDELIVERIES times, and jobs whose message is
# nowhere; it searches the whole queue at least every PROCESSING_DEADLINE_SECONDS
# (clipqueue.janitor).
LEASE_TTL_SECONDS = 30.0
# 0: derived from the time limits (clipqueue.celery_app.visibility_timeout); a larger value is kept.
VISIBILITY_TIMEOUT_SECONDS = 0
JANITOR_INTERVAL_SECONDS = 15.0
MAX_REDELIVERIES = 3
PROCESSING_DEADLINE_SECONDS = 3600.0

# How many reverse proxies in front of web set X-Forwarded-For (0: none, trust no header).
TRUSTED_PROXY_HOPS = 0

# /metrics: with a token, bearer auth; without, loopback clients only.
METRICS_TOKEN = ""

# Outbox: clips whose job could not be queued (Redis down) are queued by beat.
OUTBOX_SWEEP_SECONDS = 10.0
OUTBOX_GRACE_SECONDS = 5.0

# Media fetching (clipqueue.media).
FETCH_CONCURRENCY = 16  # connections per job; segments are split into byte ranges to use them all
FETCH_RETRIES = 3
FETCH_TIMEOUT_SECONDS = 15.0
MAX_SEGMENTS = 40
MAX_FETCH_BYTES = 1024 * 1024 * 1024
MAX_OUTPUT_BYTES = 512 * 1024 * 1024
LIVE_WAIT_DEADLINE_SECONDS = 300.0
LIVE_POLL_SECONDS = 5.0

# Sources. Loopback, private and CGNAT addresses are refused unless
# ALLOW_PRIVATE_SOURCES is true; ALLOWED_SOURCE_HOSTS (comma-separated, empty:
# any public host) narrows sources to those hosts and their subdomains.
ALLOW_PRIVATE_SOURCES = False
ALLOWED_SOURCE_HOSTS = ""

# Calls that change anything, per API token (per client address without one);
# "0" or "off" turns a limit off. Syntax: "60/minute", "10/second;500/hour".
RATE_LIMIT = "60/minute"
RATE_LIMIT_READS = "600/minute"
# Comma-separated networks admitted as sources even when ALLOW_PRIVATE_SOURCES
# is false (e.g. one internal origin, "10.20.0.0/16").
ALLOWED_PRIVATE_NETWORKS = ""
SOURCE_MAX_REDIRECTS = 5
# The API checks a new clip's source host with one DNS lookup, bounded so a slow
# resolver cannot hold a web worker; past it the worker checks the host again.
API_DNS_TIMEOUT_SECONDS = 2.0

# Twitch links (https://www.twitch.tv/videos/<id>, https://www.twitch.tv/<channel>) are resolved as
# Twitch's web player does: a playback token from GQL, then the master playlist from usher.
TWITCH_GQL_URL = "https://gql.twitch.tv/gql"
TWITCH_USHER_URL = "https://usher.ttvnw.net"
TWITCH_CLIENT_ID = "kimne78kx3ncx6brgo4mv6wki5h1ko"  # the web player's public client id
TWITCH_OAUTH_TOKEN = ""  # a subscriber's token, sent as "Authorization: OAuth <token>", for sub-only VODs
# Codecs usher may offer, in the order a rendition of the asked height is chosen.
TWITCH_SUPPORTED_CODECS = "av1,h265,h264"

# Event streams (SSE and WebSocket): a comment line this often keeps idle streams open through proxies.
EVENTS_HEARTBEAT_SECONDS = 15.0
# Entries kept (approximately) in the stream of every clip's changes and in each clip's own stream:
# a client that reconnects with Last-Event-ID within them misses nothing.
EVENTS_STREAM_MAXLEN = 10_000
CLIP_EVENTS_MAXLEN = 1_000
# A finished job's own stream is kept this long (its hash, the job's TTL): long enough for a
# watcher to come back for what it missed, short enough that a week of clips costs little memory.
CLIP_EVENTS_FINISHED_TTL_SECONDS = 3600

# Readiness (GET /readyz): each check of Redis and the database gets at most this long.
PROBE_TIMEOUT_SECONDS = 2.0
# Worker liveness: each Celery worker touches a file in WORKER_HEARTBEAT_DIR (empty:
# {temp}/clipqueue-worker-heartbeats) every WORKER_HEARTBEAT_SECONDS from a thread;
# `clipqueue worker-health` fails when one is older than WORKER_HEARTBEAT_MAX_AGE_SECONDS.
WORKER_HEARTBEAT_DIR = ""
WORKER_HEARTBEAT_SECONDS = 5.0
WORKER_HEARTBEAT_MAX_AGE_SECONDS = 30.0

# Errors from web and workers go to Sentry when set (empty: nowhere). SENTRY_ENVIRONMENT
# and SENTRY_RELEASE are read by sentry-sdk itself.
SENTRY_DSN = ""

# Webhooks: clip.ready, clip.failed and clip.canceled POSTed to WEBHOOK_URL (signed with
# WEBHOOK_SECRET, which WEBHOOK_URL needs) and to a clip's own callback_url. A failed attempt is
# tried again after WEBHOOK_BACKOFF_SECONDS, doubling up to WEBHOOK_BACKOFF_MAX_SECONDS, for
# WEBHOOK_RETRY_HOURS after the event; beat re-sends every WEBHOOK_SWEEP_SECONDS deliveries that
# are due and whose message was lost (a worker killed, Redis restarted).
WEBHOOK_URL = ""
WEBHOOK_SECRET = ""
WEBHOOK_RETRY_HOURS = 24.0
WEBHOOK_TIMEOUT_SECONDS = 10.0
WEBHOOK_BACKOFF_SECONDS = 10.0
WEBHOOK_BACKOFF_MAX_SECONDS = 3600.0
WEBHOOK_SWEEP_SECONDS = 30.0

# How often a running job looks for a cancel request (one Redis read).
CANCEL_POLL_SECONDS = 1.0

# Clip storms (clipqueue.media.segcache, clipqueue.tasks): the worker processes of a host share a cache
# of source segments in SEGMENT_CACHE_DIR (empty: "clipqueue-segment-cache" beside the scratch folder), at
# most SEGMENT_CACHE_BYTES (0 turns it off), each kept SEGMENT_CACHE_TTL_SECONDS after it was fetched.
# A clip asked exactly as another (source, range, quality, mode, outputs) copies that clip's files
# instead of cutting again: from a twin finished within IDENTICAL_CLIP_WINDOW_SECONDS (0 turns it
# off), or from one being cut now, waited for at most IDENTICAL_CLIP_WAIT_SECONDS.
SEGMENT_CACHE_DIR = ""
SEGMENT_CACHE_BYTES = 2 * 1024 * 1024 * 1024
SEGMENT_CACHE_TTL_SECONDS = 900.0
IDENTICAL_CLIP_WINDOW_SECONDS = 24 * 3600.0
IDENTICAL_CLIP_WAIT_SECONDS = 60.0
