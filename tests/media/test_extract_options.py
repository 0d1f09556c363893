"""ExtractOptions built from the service's settings: every limit comes across under its own name."""

from __future__ import annotations

from clipqueue.config import Settings
from clipqueue.media.extract import ExtractOptions
from clipqueue.media.twitch import TwitchConfig
from clipqueue.urlpolicy import SourcePolicy


def test_options_from_settings_carry_every_limit_and_the_source_policy():
    settings = Settings.from_env({
        "ALLOW_PRIVATE_SOURCES": "false", "ALLOWED_SOURCE_HOSTS": "cdn.example",
        "ALLOWED_PRIVATE_NETWORKS": "10.1.0.0/16", "FETCH_CONCURRENCY": "3", "FETCH_RETRIES": "4",
        "FETCH_TIMEOUT_SECONDS": "5.5", "MAX_SEGMENTS": "6", "MAX_FETCH_BYTES": "7000", "MAX_OUTPUT_BYTES": "8000",
        "LIVE_WAIT_DEADLINE_SECONDS": "9.5", "LIVE_POLL_SECONDS": "1.5", "SOURCE_MAX_REDIRECTS": "2",
        "TWITCH_GQL_URL": "http://gql.example/gql", "TWITCH_USHER_URL": "http://usher.example",
        "TWITCH_CLIENT_ID": "client", "TWITCH_OAUTH_TOKEN": "oauth", "TWITCH_SUPPORTED_CODECS": "h264,av1",
        "SEGMENT_CACHE_DIR": "/var/cache/segments", "SEGMENT_CACHE_BYTES": "9000", "SEGMENT_CACHE_TTL_SECONDS": "10.5",
    })
    assert ExtractOptions.from_settings(settings, thumbnail=True) == ExtractOptions(
        policy=SourcePolicy(allow_private=False, allowed_hosts=("cdn.example",), allowed_networks=("10.1.0.0/16",)),
        fetch_concurrency=3, fetch_retries=4, fetch_timeout=5.5, max_segments=6, max_fetch_bytes=7_000,
        max_output_bytes=8_000, live_wait_deadline=9.5, live_poll_interval=1.5, max_redirects=2, thumbnail=True,
        twitch=TwitchConfig(gql_url="http://gql.example/gql", usher_url="http://usher.example", client_id="client",
                            oauth_token="oauth", supported_codecs=("h264", "av1"), timeout=5.5),
        segment_cache_dir="/var/cache/segments", segment_cache_bytes=9_000, segment_cache_ttl=10.5,
    )
    assert ExtractOptions.from_settings(settings).thumbnail is False


def test_the_segment_cache_lies_beside_the_scratch_folder_unless_placed_and_is_off_at_zero_bytes(tmp_path):
    options = ExtractOptions.from_settings(Settings.from_env({"SCRATCH_DIR": str(tmp_path / "scratch")}))
    assert options.segment_cache().root == tmp_path / "clipqueue-segment-cache"
    (tmp_path / "file").write_text("")
    unusable = ExtractOptions.from_settings(Settings.from_env({"SEGMENT_CACHE_DIR": str(tmp_path / "file" / "c")}))
    assert unusable.segment_cache() is None  # the clip is cut all the same, without sharing
    assert ExtractOptions.from_settings(Settings.from_env({"SEGMENT_CACHE_BYTES": "0"})).segment_cache() is None
    assert ExtractOptions().segment_cache() is None  # the media layer alone caches nothing
