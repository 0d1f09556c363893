"""Thumbnails of clips: a JPEG at most 480 pixels wide, with or without the clip's duration given."""

from __future__ import annotations

import pytest

from clipqueue.exceptions import InvalidMedia
from clipqueue.media.extract import ClipRequest, extract_clip
from clipqueue.media.thumbnail import make_thumbnail
from samplevod.frames import read_frame_ids
from tests.mediacheck import assert_jpeg

from .conftest import FPS


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


@pytest.mark.parametrize("mode", ["accurate", "copy"])
def test_the_cut_makes_the_thumbnail_from_the_keyframe_a_third_of_the_way_into_the_clip(server, tmp_path, mode):
    from clipqueue.media.extract import ExtractOptions
    from clipqueue.urlpolicy import SourcePolicy

    options = ExtractOptions(policy=SourcePolicy(allow_private=True), thumbnail=True)
    # The 426x240 rendition: not scaled, so the burned-in frame number can be read back.
    result = extract_clip(ClipRequest(f"{server.url}/ts/240p/index.m3u8", 7.3, 19.5, mode=mode), tmp_path, options)
    assert result.thumbnail == tmp_path / "thumbnail.jpg"
    assert int(assert_jpeg(result.thumbnail)["width"]) == 426
    # A third of 7.3-19.5 s is 11.37 s; keyframes are every 2 s: the one at 10 s.
    assert read_frame_ids(result.thumbnail) == [10 * FPS]


@pytest.mark.parametrize("mode", ["accurate", "copy"])
def test_a_clip_shorter_than_a_gop_gets_a_thumbnail(server, tmp_path, mode):
    """22.2-23.8 s holds no source keyframe (they are every 2 s): the clip's only keyframe is its first frame."""
    from clipqueue.media.extract import ExtractOptions
    from clipqueue.urlpolicy import SourcePolicy

    options = ExtractOptions(policy=SourcePolicy(allow_private=True), thumbnail=True)
    result = extract_clip(ClipRequest(f"{server.url}/ts/240p/index.m3u8", 22.2, 23.8, mode=mode), tmp_path, options)
    first_frame = read_frame_ids(result.path)[0]
    made_by_the_cut = result.thumbnail
    if made_by_the_cut is not None:  # the copy's own first frame is a source keyframe
        assert (int(assert_jpeg(made_by_the_cut)["width"]), read_frame_ids(made_by_the_cut)) == (426, [first_frame])
    for duration in (result.duration, None):
        out = make_thumbnail(result.path, tmp_path / f"after-{duration}.jpg", duration=duration)
        image = assert_jpeg(out)
        assert (int(image["width"]), int(image["height"])) == (426, 240)
        assert read_frame_ids(out) == [first_frame]
