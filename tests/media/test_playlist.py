"""Playlist parsing, rendition choice and segment selection."""

from __future__ import annotations

import pytest

from clipqueue.exceptions import InvalidMedia, RangeNotInVod
from clipqueue.media.playlist import (
    CUT_PREFERENCE,
    choose_rendition,
    cuttable_codecs,
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


# --- Twitch masters: usher v2, several codecs at one height -----------------------------------------------

ENHANCED_VARIANTS = [  # (IVS-NAME, STABLE-VARIANT-ID, RESOLUTION, video codec, FRAME-RATE, BANDWIDTH, source)
    ("1440p60", "1440p60", "2560x1440", "hev1.1.2.L150.90.0.0.0.0.0", 60, 9000000, "source"),
    ("1080p60", "1080p60__av1", "1920x1080", "av01.0.09M.08", 60, 5000000, "transcode"),
    ("1080p60", "1080p60__hevc", "1920x1080", "hvc1.1.2.L123.90.0.0.0.0.0", 60, 6000000, "transcode"),
    ("1080p60", "1080p60", "1920x1080", "avc1.64002A", 60, 8000000, "transcode"),
    ("720p", "720p30", "1280x720", "avc1.4D0020", 30, 2000000, "transcode"),
    ("720p60", "720p60", "1280x720", "avc1.4D0020", 60, 3000000, "transcode"),
]
ENHANCED_MASTER = "#EXTM3U\n" + "".join(
    f'#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},RESOLUTION={size},CODECS="{codec},mp4a.40.2",'
    f'FRAME-RATE={rate}.000,'
    f'STABLE-VARIANT-ID="{stable}",IVS-NAME="{name}",IVS-VARIANT-SOURCE="{kind}"\n'
    f'https://cdn.example/v/{stable.replace("__", "")}/index-dvr.m3u8\n'
    for name, stable, size, codec, rate, bandwidth, kind in ENHANCED_VARIANTS
) + (
    '#EXT-X-STREAM-INF:BANDWIDTH=160000,CODECS="mp4a.40.2",'
    'STABLE-VARIANT-ID="audio_only",IVS-NAME="Audio Only"\n'
    "https://cdn.example/v/audio_only/index-dvr.m3u8\n"
)


@pytest.fixture
def enhanced():
    return parse_master(ENHANCED_MASTER, "https://usher.example/vod/1.m3u8")


def test_usher_v2_renditions_are_named_and_classified_from_their_ivs_attributes(enhanced):
    assert [(r.name, r.codec, r.is_source) for r in enhanced] == [
        ("1440p60", "h265", True), ("1080p60", "av1", False), ("1080p60", "h265", False),
        ("1080p60", "h264", False), ("720p", "h264", False), ("720p60", "h264", False),
        ("audio_only", None, False),
    ]


@pytest.mark.parametrize("codecs,quality,expected_url", [
    (("av1", "h265", "h264"), "1080p", "1080p60av1"),
    (("h265", "h264"), "1080p", "1080p60hevc"),
    (("h264", "h265"), "1080p", "1080p60/"),
    (("h264",), "1080p", "1080p60/"),
    (("h264",), "source", "1080p60/"),       # the HEVC source cannot be cut: the best H.264 instead
    (("h265", "h264"), "source", "1440p60"),
    (("av1", "h265", "h264"), "720p", "720p60"),  # 60 fps before 30 at one height
    (("av1", "h265", "h264"), "auto", "720p60"),
    (("av1",), "480p", "1080p60av1"),        # nothing at or below: the smallest in a usable codec
    (("h264",), "audio_only", "audio_only"),
])
def test_rendition_of_one_height_is_chosen_by_frame_rate_then_codec_preference(enhanced, codecs, quality,
                                                                               expected_url):
    assert f"/{expected_url}" in choose_rendition(enhanced, quality, codecs).url


def test_by_default_the_codec_cut_most_faithfully_is_chosen_among_those_offered(enhanced):
    # H.264 is smart-cut from the broadcast's own pictures; HEVC only sometimes; AV1 is re-encoded.
    assert cuttable_codecs(("av1", "h265", "h264")) == CUT_PREFERENCE == ("h264", "h265", "av1")
    assert cuttable_codecs(("av1", "h265")) == ("h265", "av1")
    assert cuttable_codecs(("vp9",)) == ()
    assert choose_rendition(enhanced, "1080p").codec == "h264"


def test_master_offering_no_codec_that_can_be_cut_is_refused_with_the_codecs_named(enhanced):
    hevc_only = [r for r in enhanced if r.codec == "h265"]
    with pytest.raises(InvalidMedia, match=r"no rendition in a codec .* \(h264\); the master offers h265"):
        choose_rendition(hevc_only, "720p", ("h264",))


def test_old_master_with_audio_only_declared_as_an_audio_group_is_audio_only():
    text = """#EXTM3U
#EXT-X-MEDIA:TYPE=VIDEO,GROUP-ID="chunked",NAME="1080p (source)",AUTOSELECT=YES,DEFAULT=YES
#EXT-X-STREAM-INF:PROGRAM-ID=1,BANDWIDTH=3982010,RESOLUTION=1920x1080,CODECS="avc1.4D4029,mp4a.40.2",VIDEO="chunked"
playlist.m3u8
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="audio_only",NAME="audio_only",AUTOSELECT=YES,DEFAULT=NO,LANGUAGE="en"
#EXT-X-STREAM-INF:PROGRAM-ID=1,BANDWIDTH=90145,CODECS="mp4a.40.2",VIDEO="audio_only"
audio_only.m3u8"""
    renditions = parse_master(text, "https://live.example/hls/channel.m3u8")
    assert [(r.name, r.is_source) for r in renditions] == [("1080p", True), ("audio_only", False)]
    assert choose_rendition(renditions, "audio_only").url == "https://live.example/hls/audio_only.m3u8"


# --- Media playlists: Twitch quirks ------------------------------------------------------------------------

LIVE_WITH_ADS = """#EXTM3U
#EXT-X-VERSION:3
#EXT-X-TARGETDURATION:5
#EXT-X-MEDIA-SEQUENCE:100
#EXT-X-DATERANGE:ID="stitched-ad-1700000004-30000000000",CLASS="twitch-stitched-ad",START-DATE="2026-01-01T00:00:04.000Z",DURATION=4.000,X-TV-TWITCH-AD-ROLL-TYPE="MIDROLL"
#EXT-X-PROGRAM-DATE-TIME:2026-01-01T00:00:00.000Z
#EXTINF:2.000,live
a.ts
#EXT-X-PROGRAM-DATE-TIME:2026-01-01T00:00:02.000Z
#EXTINF:2.000,live
b.ts
#EXT-X-DISCONTINUITY
#EXT-X-PROGRAM-DATE-TIME:2026-01-01T00:00:04.000Z
#EXTINF:2.000,live
ad1.ts
#EXT-X-PROGRAM-DATE-TIME:2026-01-01T00:00:06.000Z
#EXTINF:2.000,live
ad2.ts
#EXT-X-DISCONTINUITY
#EXT-X-PROGRAM-DATE-TIME:2026-01-01T00:00:08.000Z
#EXTINF:2.000,live
c.ts
#EXT-X-PROGRAM-DATE-TIME:2026-01-01T00:00:10.000Z
#EXTINF:2.000,Amazon|123456789
ad3.ts
#EXT-X-PROGRAM-DATE-TIME:2026-01-01T00:00:12.000Z
#EXTINF:2.000,live
d.ts
#EXT-X-TWITCH-PREFETCH:https://edge.example/v1/segment/next.ts
"""


def test_stitched_ads_are_left_out_of_the_timeline_and_the_stream_resumes_after_a_discontinuity():
    playlist = parse_media(LIVE_WITH_ADS, "https://edge.example/v1/playlist/x.m3u8")
    segments = playlist.segments
    assert [s.url.rsplit("/", 1)[1] for s in segments] == ["a.ts", "b.ts", "c.ts", "d.ts"]
    assert [s.start for s in segments] == [0.0, 2.0, 4.0, 6.0]
    assert [s.sequence for s in segments] == [100, 101, 104, 106]
    assert [s.discontinuity for s in segments] == [False, False, True, True]
    assert playlist.ad_segments == 3
    assert playlist.duration == 8.0
    assert segments[2].program_date_time.isoformat() == "2026-01-01T00:00:08+00:00"


def test_unmuted_segments_carry_their_muted_twin_and_are_not_muted_until_it_is_used():
    text = FMP4_MEDIA.replace("-muted.mp4", "-unmuted.mp4")
    segments = parse_media(text, "https://cdn.example/vod/chunked/index-dvr.m3u8").segments
    assert [s.muted for s in segments] == [False, False, False, False]
    assert [s.muted_url for s in segments] == [
        None, "https://cdn.example/vod/chunked/1-muted.mp4",
        "https://cdn.example/vod/chunked/2-muted.mp4?sig=abc", None,
    ]


def test_truncated_live_playlist_drops_its_dangling_extinf():
    playlist = parse_media(FMP4_MEDIA + "#EXTINF:10.000,\n", "https://x/a.m3u8")
    assert len(playlist.segments) == 4 and playlist.duration == pytest.approx(34.5)


def test_malformed_tag_is_refused_as_invalid_media_not_a_crash():
    with pytest.raises(InvalidMedia, match="cannot read the media playlist"):
        parse_media(FMP4_MEDIA.replace("#EXTINF:4.500,", "#EXTINF:four,"), "https://x/a.m3u8")
