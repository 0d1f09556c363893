"""Fetch progress is measured in bytes, against a real local server."""

from __future__ import annotations

import pytest

from clipqueue.media.fetch import Fetcher
from clipqueue.urlpolicy import SourcePolicy

from .conftest import media_segments

POLICY = SourcePolicy(allow_private=True)


@pytest.mark.parametrize("concurrency", [2, 16])
def test_fetch_progress_counts_bytes_fetched_over_bytes_needed(fresh_server, tmp_path, concurrency):
    segments = list(media_segments(fresh_server)[:3])
    reports: list[tuple[int, int]] = []
    with Fetcher(POLICY, concurrency=concurrency, retries=1, timeout=5, max_bytes=10**9) as fetcher:
        fetched = fetcher.fetch_segments(segments, tmp_path, on_progress=lambda done, total: reports.append(
            (done, total)))
    needed = sum(item.path.stat().st_size for item in fetched)
    assert reports[-1] == (needed, needed)
    assert all(done <= total for done, total in reports)
    # Split into byte ranges (16 connections), a segment reports each part: more reports than segments.
    assert len(reports) >= len(segments) if concurrency == 2 else len(reports) > len(segments)
