"""Thumbnails of clips: a JPEG at most 480 pixels wide, with or without the clip's duration given."""

from __future__ import annotations

import pytest

from clipqueue.exceptions import InvalidMedia
from clipqueue.media.extract import ClipRequest, extract_clip
from clipqueue.media.thumbnail import make_thumbnail
from tests.mediacheck import assert_jpeg


@pytest.fixture(scope="module")
def clip(server, tmp_path_factory):
    from clipqueue.media.extract import ExtractOptions
    from clipqueue.urlpolicy import SourcePolicy

    options = ExtractOptions(policy=SourcePolicy(allow_private=True))
    return extract_clip(ClipRequest(f"{server.url}/ts/master.m3u8", 7.3, 13.5), tmp_path_factory.mktemp("clip"), options)


@pytest.mark.parametrize("give_duration", [False, True])
def test_thumbnail_is_a_jpeg_at_most_480_wide(clip, tmp_path, give_duration):
    out = make_thumbnail(clip.path, tmp_path / "thumb.jpg", duration=clip.duration if give_duration else None)
    image = assert_jpeg(out)
    assert int(image["width"]) == min(480, clip.width)


def test_thumbnail_of_a_file_that_is_not_media_fails_as_invalid_media(tmp_path):
    fake = tmp_path / "clip.mp4"
    fake.write_text("#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n")
    with pytest.raises(InvalidMedia):
        make_thumbnail(fake, tmp_path / "thumb.jpg", duration=3.0)
    with pytest.raises(InvalidMedia):
        make_thumbnail(fake, tmp_path / "thumb.jpg")
