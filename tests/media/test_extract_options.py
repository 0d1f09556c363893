"""ExtractOptions built from the service's settings: every limit comes across under its own name."""

from __future__ import annotations

from types import SimpleNamespace

from clipqueue.media.extract import ExtractOptions
from clipqueue.urlpolicy import SourcePolicy


def test_options_from_settings_carry_every_limit_and_the_source_policy():
    settings = SimpleNamespace(
        allow_private_sources=False, allowed_source_hosts=("cdn.example",), allowed_private_networks=("10.1.0.0/16",),
        fetch_concurrency=3, fetch_retries=4, fetch_timeout_seconds=5.5, max_segments=6, max_fetch_bytes=7_000,
        max_output_bytes=8_000, live_wait_deadline_seconds=9.5, live_poll_seconds=1.5, source_max_redirects=2,
    )
    assert ExtractOptions.from_settings(settings, thumbnail=True) == ExtractOptions(
        policy=SourcePolicy(allow_private=False, allowed_hosts=("cdn.example",), allowed_networks=("10.1.0.0/16",)),
        fetch_concurrency=3, fetch_retries=4, fetch_timeout=5.5, max_segments=6, max_fetch_bytes=7_000,
        max_output_bytes=8_000, live_wait_deadline=9.5, live_poll_interval=1.5, max_redirects=2, thumbnail=True,
    )
    assert ExtractOptions.from_settings(settings).thumbnail is False
