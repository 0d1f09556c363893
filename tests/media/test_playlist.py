"""Playlist parsing, rendition choice and segment selection."""

from __future__ import annotations

import pytest

from clipqueue.exceptions import RangeNotInVod
from clipqueue.media.playlist import (
    choose_rendition,
    muted_ranges,
    parse_master,
    parse_media,
    select_segments,
)

TWITCH_MASTER = """#EXTM3U
#EXT-X-MEDIA:TYPE=VIDEO,GROUP-ID="chunked",NAME="1080p60 (source)",AUTOSELECT=YES,DEFAULT=YES
#EXT-X-STREAM-INF:BANDWIDTH=6500000,RESOLUTION=1920x1080,CODECS="avc1.64002A,mp4a.40.2",VIDEO="chunked"
https://cdn.example/abc/chunked/index-dvr.m3u8?token=xyz
#EXT-X-MEDIA:TYPE=VIDEO,GROUP-ID="720p60",NAME="720p60",AUTOSELECT=YES,DEFAULT=YES
#EXT-X-STREAM-INF:BANDWIDTH=3000000,RESOLUTION=1280x720,CODECS="avc1.4D401F,mp4a.40.2",VIDEO="720p60"
720p60/index-dvr.m3u8
#EXT-X-MEDIA:TYPE=VIDEO,GROUP-ID="480p30",NAME="480p",AUTOSELECT=YES,DEFAULT=YES
#EXT-X-STREAM-INF:BANDWIDTH=1400000,RESOLUTION=852x480,CODECS="avc1.4D401F,mp4a.40.2",VIDEO="480p30"
480p30/index-dvr.m3u8
#EXT-X-MEDIA:TYPE=VIDEO,GROUP-ID="audio_only",NAME="audio_only",AUTOSELECT=NO,DEFAULT=NO
#EXT-X-STREAM-INF:BANDWIDTH=160000,CODECS="mp4a.40.2",VIDEO="audio_only"
audio_only/index-dvr.m3u8
"""

FMP4_MEDIA = """#EXTM3U
#EXT-X-VERSION:6
#EXT-X-TARGETDURATION:10
#EXT-X-PLAYLIST-TYPE:EVENT
#EXT-X-MEDIA-SEQUENCE:0
#EXT-X-MAP:URI="init-0.mp4"
#EXTINF:10.000,
0.mp4
#EXTINF:10.000,
1-muted.mp4
#EXTINF:10.000,
2-muted.mp4?sig=abc
#EXTINF:4.500,
3.mp4
"""


@pytest.fixture
def renditions():
    return parse_master(TWITCH_MASTER, "https://usher.example/vod/123.m3u8?sig=1")


def test_master_renditions_have_twitch_names_and_absolute_urls(renditions):
    assert [r.name for r in renditions] == ["1080p60", "720p60", "480p", "audio_only"]
    assert renditions[0].url == "https://cdn.example/abc/chunked/index-dvr.m3u8?token=xyz"
    assert renditions[1].url == "https://usher.example/vod/720p60/index-dvr.m3u8"


@pytest.mark.parametrize("quality,expected", [
    ("source", "1080p60"), ("1080p", "1080p60"), ("720p", "720p60"), ("480p", "480p"),
    ("360p", "480p"), ("160p", "480p"), ("auto", "720p60"), ("audio_only", "audio_only"),
])
def test_quality_picks_the_nearest_rendition_at_or_below(renditions, quality, expected):
    assert choose_rendition(renditions, quality).name == expected


def test_fmp4_media_playlist_has_init_section_muted_flags_and_timeline():
    playlist = parse_media(FMP4_MEDIA, "https://cdn.example/vod/chunked/index-dvr.m3u8")
    assert not playlist.ended  # EVENT without ENDLIST: still live
    assert [s.start for s in playlist.segments] == [0, 10, 20, 30]
    assert playlist.duration == pytest.approx(34.5)
    assert all(s.init_url == "https://cdn.example/vod/chunked/init-0.mp4" for s in playlist.segments)
    assert [s.muted for s in playlist.segments] == [False, True, True, False]
    assert playlist.segments[2].url.endswith("2-muted.mp4?sig=abc")


def test_media_sequence_numbers_segments():
    text = FMP4_MEDIA.replace("#EXT-X-MEDIA-SEQUENCE:0", "#EXT-X-MEDIA-SEQUENCE:7")
    assert [s.sequence for s in parse_media(text, "https://x/a.m3u8").segments] == [7, 8, 9, 10]


@pytest.mark.parametrize("start,end,expected", [
    (0, 10, [0]),            # ends exactly on a boundary: the next segment is not needed
    (10, 20, [1]),           # starts exactly on a boundary: the previous one is not needed
    (9.99, 10.01, [0, 1]),
    (15, 34.5, [1, 2, 3]),
])
def test_selection_takes_only_overlapping_segments(start, end, expected):
    playlist = parse_media(FMP4_MEDIA + "#EXT-X-ENDLIST\n", "https://x/a.m3u8")
    assert [s.sequence for s in select_segments(playlist, start, end)] == expected


def test_range_past_the_end_of_an_ended_vod_is_rejected():
    playlist = parse_media(FMP4_MEDIA + "#EXT-X-ENDLIST\n", "https://x/a.m3u8")
    with pytest.raises(RangeNotInVod):
        select_segments(playlist, 30, 40)


def test_muted_ranges_are_relative_to_the_clip_and_merged():
    playlist = parse_media(FMP4_MEDIA, "https://x/a.m3u8")
    segments = select_segments(playlist, 5, 25)
    assert muted_ranges(segments, 5, 25) == [(5.0, 20.0)]
