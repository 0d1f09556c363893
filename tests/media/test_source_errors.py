"""A source that is not what extract_clip expects fails with what is wrong in the user's terms.

Error texts become the clip's ``error``: they name neither the loopback relay
FFmpeg reads through nor the worker's scratch folder.
"""

from __future__ import annotations

import os
import re

import pytest

from clipqueue.exceptions import InvalidMedia
from clipqueue.media.extract import ClipRequest, ExtractOptions, extract_clip
from clipqueue.urlpolicy import SourcePolicy
from samplevod.server import serve_directory

OPTIONS = ExtractOptions(policy=SourcePolicy(allow_private=True), fetch_timeout=5.0, fetch_retries=0)
PAGE = b"<!DOCTYPE html>\n<html><head><title>My stream - Twitch</title></head><body>watch me</body></html>\n"


@pytest.fixture(scope="module")
def wrong_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("wrong-sources")
    (root / "videos").mkdir()
    (root / "videos" / "123456").write_bytes(PAGE)  # a page's URL, pasted instead of the VOD's
    (root / "page.m3u8").write_bytes(PAGE)
    (root / "noise.mp4").write_bytes(bytes(range(256)) * 64 + os.urandom(64 * 1024))
    with serve_directory(root) as server:
        yield server


def _error_of(server, path: str, tmp_path) -> str:
    with pytest.raises(InvalidMedia) as caught:
        extract_clip(ClipRequest(f"{server.url}/{path}", 1.0, 3.0), tmp_path / "work", OPTIONS)
    text = str(caught.value)
    assert str(tmp_path) not in text and "extract-tmp" not in text
    # The only loopback address in the text may be the user's own URL (this test's server), never the relay's.
    assert set(re.findall(r"127\.0\.0\.1:(\d+)", text)) <= {server.url.rsplit(":", 1)[1]}, text
    assert "/source" not in text, text
    return text


@pytest.mark.parametrize("path", ["videos/123456", "page.m3u8"])
def test_an_html_page_is_named_as_such(wrong_sources, tmp_path, path):
    text = _error_of(wrong_sources, path, tmp_path)
    assert "got an HTML page" in text and "expected an HLS playlist or an MP4/TS file" in text, text


def test_bytes_ffmpeg_cannot_read_are_the_source_not_a_relay_address(wrong_sources, tmp_path):
    text = _error_of(wrong_sources, "noise.mp4", tmp_path)
    assert "the source is not media FFmpeg can read" in text, text
