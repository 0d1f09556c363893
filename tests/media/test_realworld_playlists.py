"""Each real-world playlist in ../shared/realworld/playlists/ gives the right segments, renditions or refusal.

The files are copies of other projects' test fixtures (see their SOURCES.md); the
expectations below were read off each file by hand, so a parser change that
misplaces a segment, loses a byte range or picks another rendition fails here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from clipqueue.exceptions import ClipqueueError, InvalidMedia
from clipqueue.media.playlist import (
    choose_rendition,
    is_master_playlist,
    parse_master,
    parse_media,
    select_segments,
)

PLAYLISTS = Path(__file__).resolve().parents[2] / ".." / "shared" / "realworld" / "playlists"
BASE = "https://cdn.example/vod/abc123/chunked/index-dvr.m3u8"
DIR = BASE.rsplit("/", 1)[0] + "/"
AKAMAI_TOKEN = "?hdntl=exp=1596678764~acl=/*~data=hdntl~hmac=12345&"


@dataclass(frozen=True)
class Media:
    """What a media playlist must give: positions are indexes into the parsed segments."""

    count: int
    first: str
    last: str
    duration: float
    ended: bool
    first_sequence: int = 0
    muted: tuple[int, ...] = ()
    runs: tuple[int, ...] = ()  # segments where a join starts a new run (discontinuity or new init section)
    gaps: tuple[int, ...] = ()
    byteranges: dict[int, tuple[int, int] | None] = field(default_factory=dict)
    inits: dict[int, tuple[str | None, tuple[int, int] | None]] = field(default_factory=dict)
    dates: dict[int, str] = field(default_factory=dict)  # index -> PROGRAM-DATE-TIME (as given or carried on)


@dataclass(frozen=True)
class Master:
    """What a master playlist must give: rendition names in order, and the choice for each quality."""

    names: tuple[str, ...]
    source: str
    choices: dict[str, str]
    codecs: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class Refused:
    error: type[ClipqueueError]
    message: str


def _ts(n: int) -> str:
    return f"{DIR}{n}.ts"


EXPECTED: dict[str, Media | Master | Refused] = {
    "ad_cue_out_scte35__m3u8lib_CUE_OUT_ELEMENTAL_PLAYLIST.m3u8": Media(
        11, DIR + "master2500_47224.ts", DIR + "master2500_47234.ts", 87.96, ended=False,
        first_sequence=47224),
    "apple_bipbop_16x9_master__ytdlp_testdata.m3u8": Master(
        ("234p", "360p", "540p", "720p", "1080p", "audio_only"), source="1080p",
        choices={"720p": "720p", "480p": "360p", "160p": "234p", "auto": "720p", "audio_only": "audio_only"}),
    "apple_bipbop_adv_fmp4_master__ytdlp_testdata.m3u8": Master(
        ("540p60", "1080p60", "1080p60", "1080p60", "720p60", "432p", "360p", "270p") * 3, source="1080p60",
        choices={"720p": "720p60", "480p": "432p", "160p": "270p", "audio_only": "270p"}),
    "byterange_before_extinf__hlsjs_m3u8-parser.m3u8": Media(
        10, DIR + "lo007ts", DIR + "lo008ts", 10_000_000, ended=False, first_sequence=7478,
        byteranges={0: (803136, 140060), 3: (0, 124080), 9: (684508, 133480)}),
    "byterange_before_map__hlsjs_m3u8-parser.m3u8": Media(
        3, DIR + "lo007.m4v", DIR + "lo007.m4v", 12.0, ended=True, first_sequence=1,
        byteranges={0: (24000, 10000), 2: (64000, 40000)},
        inits={0: (DIR + "initsegment.m4v", (0, 24000)), 2: (DIR + "initsegment.m4v", (0, 24000))}),
    "byterange_same_file__m3u8lib_PLAYLIST_USING_BYTERANGES.m3u8": Media(
        3, DIR + "segment.ts", DIR + "segment.ts", 30.0, ended=True,
        byteranges={0: (0, 76242), 1: (762421, 83442), 2: (834421, 69864)}),
    "byterange_without_offset__hlsjs_m3u8-parser.m3u8": Media(
        3, DIR + "lo007ts", DIR + "lo007ts", 3_000_000, ended=False, first_sequence=7478,
        byteranges={0: (803136, 140060), 1: (943196, 96256), 2: (1039452, 143068)}),
    "clear_enc_alternating_discontinuity_keys__hlsjs_m3u8-parser.m3u8": Refused(
        InvalidMedia, "encrypted VODs are not supported (EXT-X-KEY METHOD=SAMPLE-AES)"),
    "discontinuity_double_extm3u__hlsjs_m3u8-parser.m3u8": Media(
        5, DIR + "0001.ts", DIR + "0006.ts", 45.0, ended=True, runs=(3,)),
    "discontinuity_pdt_jump__m3u8lib_DISCONTINUITY_PLAYLIST_WITH_PROGRAM_DATE_TIME.m3u8": Media(
        8, DIR + "g_50116.ts", DIR + "g_50123.ts", 24.0, ended=False, first_sequence=50116, runs=(5,),
        dates={0: "2014-08-13T13:36:33+00:00", 4: "2014-08-13T13:36:45+00:00",
               5: "2014-08-13T13:36:55+00:00"}),
    "event_pdt_query_tokens__m3u8lib_PLAYLIST_WITH_PROGRAM_DATE_TIME_WITHOUT_DISCONTINUITY.m3u8": Media(
        3, DIR + "manifest_1_50.ts?m=1559946393", DIR + "manifest_1_52.ts?m=1559946393", 18.0, ended=True,
        first_sequence=50, dates={2: "2019-06-10T00:05:12+00:00"}),
    "fmp4_discontinuities_pdt_map_change__hlsjs_m3u8-parser.m3u8": Media(
        22, DIR + "3.mp4", DIR + "media_1638278.m4s", 104.985, ended=False, first_sequence=1638262,
        runs=(3, 9, 15, 17), inits={0: (DIR + "init.mp4", None), 16: (DIR + "init.mp4", None),
                                    17: (DIR + "init_960719739.mp4", None)},
        dates={0: "2021-11-10T03:25:49.015000+00:00", 17: "2021-11-10T03:27:04+00:00"}),
    "gap_segments__m3u8lib_GAP_PLAYLIST.m3u8": Media(
        4, DIR + "fileSequence14.ts", DIR + "fileSequence17.ts", 37.57921, ended=False, first_sequence=14,
        gaps=(1, 2)),
    "key_after_extinf__hlsjs_m3u8-parser.m3u8": Refused(
        InvalidMedia, "encrypted VODs are not supported (EXT-X-KEY METHOD=AES-128)"),
    "key_midstream_relative_dotdot__m3u8lib_PLAYLIST_WITH_MULTIPLE_KEYS_UNENCRYPTED_AND_ENCRYPTED.m3u8": Refused(  # noqa: E501
        InvalidMedia, "encrypted VODs are not supported (EXT-X-KEY METHOD=AES-128)"),
    "kick_media_byterange_pdt__twitchdownloader_M3U8Tests.m3u8": Media(
        31, _ts(500), _ts(506), 62.0, ended=True,
        byteranges={0: (6470396, 1601196), 1: (0, 1588224), 30: (6462876, 1506068)},
        dates={0: "2023-11-16T05:34:07.970000+00:00", 30: "2023-11-16T05:35:07.970000+00:00"}),
    "live_sliding_window__m3u8lib_SLIDING_WINDOW_PLAYLIST.m3u8": Media(
        3, "https://priv.example.com/fileSequence2680.ts", "https://priv.example.com/fileSequence2682.ts",
        24.0,
        ended=False, first_sequence=2680),
    "malformed_master_plus_media_mixed__twitchdownloader_M3U8Tests.m3u8": Refused(
        InvalidMedia, "mixes a master playlist's variants with media segments"),
    "map_byterange_changing_map__m3u8lib_MAP_URI_PLAYLIST_WITH_BYTERANGE.m3u8": Media(
        2, DIR + "segment_link1.mp4", DIR + "segment_link2.mp4", 2.0, ended=True, first_sequence=1, runs=(1,),
        inits={0: (DIR + "main.mp4", (0, 812)), 1: (DIR + "main2.mp4", (0, 912))}),
    "map_byterange_single_file__hlsjs_m3u8-parser.m3u8": Media(
        1, DIR + "main.mp4", DIR + "main.mp4", 6.006, ended=True, first_sequence=1,
        byteranges={0: (718, 1543597)}, inits={0: (DIR + "main.mp4", (0, 718))}),
    "master_hevc_av1_supplemental_codecs__hlsjs_m3u8-parser.m3u8": Master(
        ("1080p",) * 4, source="1080p", choices={"720p": "1080p", "auto": "1080p"},
        codecs=("h265", "h265", "av1", "av1")),
    "multiple_map_with_key__m3u8lib_MULTIPLE_MAP_URI_PLAYLIST.m3u8": Refused(
        InvalidMedia, "encrypted VODs are not supported (EXT-X-KEY METHOD=AES-128)"),
    "pdt_after_extinf_subdir_uris__hlsjs_m3u8-parser.m3u8": Media(
        3, DIR + "Rollover38803/20160525T064049-01-69844067.ts",
        DIR + "Rollover38803/20160525T064049-01-69844069.ts",
        30.0, ended=False, first_sequence=69844067, dates={1: "2016-05-27T16:34:54+00:00"}),
    "query_token_slash_dangling_extinf__m3u8lib_PLAYLIST_WITH_SLASH_IN_QUERY_STRING.m3u8": Media(
        3, DIR + "testvideo-1596635509-4769390994-a0e3087c.ts" + AKAMAI_TOKEN,
        DIR + "testvideo-1596635519-4770290994-a0e5087d.ts" + AKAMAI_TOKEN,
        15.0, ended=False, first_sequence=10599,
        dates={0: "2020-08-05T13:51:49+00:00", 2: "2020-08-05T13:51:59+00:00"}),
    "relative_uris_key__m3u8lib_relative-playlist.m3u8": Refused(
        InvalidMedia, "encrypted VODs are not supported (EXT-X-KEY METHOD=AES-128)"),
    "twitch_live_master_old_audio_group__streamlink_test_master.m3u8": Master(
        ("720p", "720p", "480p", "360p", "160p", "1080p", "audio_only"), source="1080p",
        choices={"1080p": "1080p", "720p": "720p", "480p": "480p", "auto": "720p",
                 "audio_only": "audio_only"}),
    "twitch_live_media_2s_pdt_daterange_prefetch__twitchdownloader_M3U8Tests.m3u8": Media(
        15, "https://video-edge-foo.bar.abs.hls.ttvnw.net/v1/segment/abc-123DEF_456.ts",
        "https://video-edge-foo.bar.abs.hls.ttvnw.net/v1/segment/hij-567KLM_890.ts", 30.0, ended=False,
        first_sequence=4815,
        dates={0: "2023-09-17T02:31:48.242000+00:00", 14: "2023-09-17T02:32:16.242000+00:00"}),
    "twitch_master_usherv2_ivsname__streamlink_test_multivariant_twitch_usher_v2.m3u8": Master(
        ("720p60", "480p", "360p", "160p", "audio_only", "1080p60"), source="1080p60",
        choices={"1080p": "1080p60", "720p": "720p60", "480p": "480p", "360p": "360p", "160p": "160p",
                 "auto": "720p60", "audio_only": "audio_only"}),
    "twitch_vod_master_1440p_chunked_h264__twitchdlp_hlsParser_mock.m3u8": Master(
        ("1440p", "720p", "480p", "audio_only", "360p", "160p"), source="1440p",
        choices={"1080p": "720p", "720p": "720p", "auto": "720p", "audio_only": "audio_only"}),
    "twitch_vod_master_index_muted_slug__twitchdlp_hlsParser_mock.m3u8": Master(
        ("1080p60", "720p60", "480p", "360p", "160p"), source="1080p60",
        choices={"1080p": "1080p60", "480p": "480p", "audio_only": "160p"}),
    "twitch_vod_master_sessiondata_unavailable_hevc__twitchdlp_hlsParser_mock.m3u8": Master(
        ("1080p60", "720p60", "480p", "360p", "audio_only", "160p"), source="1080p60",
        choices={"720p": "720p60", "360p": "360p", "audio_only": "audio_only"}),
    "twitch_vod_master_usherv1__streamlink_test_master_twitch_vod.m3u8": Master(
        ("1080p", "720p60", "720p30", "480p30", "audio_only", "360p30", "160p30"), source="1080p",
        choices={"1080p": "1080p", "720p": "720p60", "480p": "480p30", "auto": "720p60",
                 "audio_only": "audio_only"}),
    "twitch_vod_master_usherv2_sessiondata_cloudfront__twitchdownloader_M3U8Tests.m3u8": Master(
        ("1080p60", "720p60", "480p", "audio_only", "360p", "160p"), source="1080p60",
        choices={"1080p": "1080p60", "720p": "720p60", "auto": "720p60", "audio_only": "audio_only"}),
    "twitch_vod_media_2016_transmux_discontinuity__twitchdlp_hlsParser_mock.m3u8": Media(
        4, DIR + "transmux-0000000222-1alP.ts?start_offset=0&end_offset=257935",
        DIR + "transmux-0000000000-FbCv.ts?start_offset=0&end_offset=301551", 31.941, ended=True, runs=(3,)),
    "twitch_vod_media_fmp4_init0_event_endlist__twitchdownloader_M3U8Tests.m3u8": Media(
        114, DIR + "0.mp4", DIR + "113.mp4", 1137.134, ended=True,
        inits={0: (DIR + "init-0.mp4", None), 113: (DIR + "init-0.mp4", None)}),
    "twitch_vod_media_fmp4_init0_muted_mp4__twitchdlp_hlsParser_mock.m3u8": Media(
        2, DIR + "0-muted.mp4", DIR + "1-muted.mp4", 20.0, ended=False, muted=(0, 1),
        inits={1: (DIR + "init-0.mp4", None)}),
    "twitch_vod_media_ts_endlist_trimmed__twitchdlp_hlsParser_mock.m3u8": Media(
        2, _ts(0), _ts(1), 20.0, ended=True),
    "twitch_vod_media_ts_event_endlist__twitchdownloader_M3U8Tests.m3u8": Media(
        50, _ts(0), _ts(49), 500.0, ended=True),
    "twitch_vod_media_ts_muted_segments_trimmed__twitchdlp_hlsParser_mock.m3u8": Media(
        4, _ts(0), DIR + "1946-muted.ts", 40.0, ended=False, muted=(2, 3)),
}

FILES = sorted(path.name for path in PLAYLISTS.glob("*.m3u8"))


def test_every_real_world_playlist_has_an_expectation():
    assert FILES, f"no playlists under {PLAYLISTS}"
    assert sorted(EXPECTED) == FILES


def _check_media(text: str, expected: Media) -> None:
    playlist = parse_media(text, BASE)
    segments = playlist.segments
    assert len(segments) == expected.count
    assert (segments[0].url, segments[-1].url) == (expected.first, expected.last)
    assert playlist.duration == pytest.approx(expected.duration)
    assert sum(s.duration for s in segments) == pytest.approx(expected.duration)
    assert all(b.start == pytest.approx(a.end) for a, b in zip(segments, segments[1:]))  # no hole, no overlap
    assert playlist.ended is expected.ended
    first = expected.first_sequence
    assert [s.sequence for s in segments] == list(range(first, first + len(segments)))
    assert tuple(i for i, s in enumerate(segments) if s.muted) == expected.muted
    assert tuple(i for i, s in enumerate(segments) if s.starts_run and i > 0) == expected.runs
    assert tuple(i for i, s in enumerate(segments) if s.gap) == expected.gaps
    for index, byterange in expected.byteranges.items():
        assert segments[index].byterange == byterange
    if not expected.byteranges:
        assert all(s.byterange is None for s in segments)
    for index, (init_url, init_range) in expected.inits.items():
        assert (segments[index].init_url, segments[index].init_byterange) == (init_url, init_range)
    if not expected.inits:
        assert all(s.init_url is None for s in segments)
    for index, when in expected.dates.items():
        assert segments[index].program_date_time == datetime.fromisoformat(when)
    if not expected.dates:
        assert all(s.program_date_time is None for s in segments)
    assert playlist.ad_segments == 0


def _check_master(text: str, expected: Master) -> None:
    renditions = parse_master(text, BASE)
    assert tuple(r.name for r in renditions) == expected.names
    assert all(r.url.startswith(("https://", "http://")) for r in renditions)
    assert choose_rendition(renditions, "source").name == expected.source
    for quality, name in expected.choices.items():
        assert choose_rendition(renditions, quality).name == name, quality
    if expected.codecs:
        assert tuple(r.codec for r in renditions) == expected.codecs
    else:
        assert {r.codec for r in renditions} <= {"h264", None}


@pytest.mark.parametrize("name", FILES)
def test_real_world_playlist_gives_its_segments_renditions_or_a_clear_refusal(name):
    text = (PLAYLISTS / name).read_text()
    expected = EXPECTED[name]
    if isinstance(expected, Refused):
        with pytest.raises(expected.error) as caught:
            parse_master(text, BASE) if is_master_playlist(text) else parse_media(text, BASE)
        assert expected.message in str(caught.value)
        with pytest.raises(expected.error):  # whichever parser a caller tries
            parse_media(text, BASE)
    elif isinstance(expected, Master):
        assert is_master_playlist(text)
        _check_master(text, expected)
        with pytest.raises(InvalidMedia, match="master playlist"):
            parse_media(text, BASE)
    else:
        assert not is_master_playlist(text)
        _check_media(text, expected)


def test_gap_segment_refuses_a_clip_that_needs_it_and_not_one_beside_it():
    playlist = parse_media((PLAYLISTS / "gap_segments__m3u8lib_GAP_PLAYLIST.m3u8").read_text(), BASE)
    assert [s.sequence for s in select_segments(playlist, 1.0, 9.0)] == [14]
    assert [s.sequence for s in select_segments(playlist, 29.0, 35.0)] == [17]
    with pytest.raises(InvalidMedia, match=r"needs segment 15 .*#EXT-X-GAP"):
        select_segments(playlist, 5.0, 12.0)


def test_usher_v2_typo_uri_is_kept_as_listed():
    name = "twitch_master_usherv2_ivsname__streamlink_test_multivariant_twitch_usher_v2.m3u8"
    renditions = parse_master((PLAYLISTS / name).read_text(), BASE)
    chosen = choose_rendition(renditions, "480p")
    assert (chosen.name, chosen.url, chosen.height) == ("480p", "https://mocked/480p,m3u8", 480)
    source = choose_rendition(renditions, "source")
    assert (source.is_source, source.url) == (True, "https://mocked/1080p60.m3u8")


def test_real_world_playlists_cut_at_any_line_parse_or_are_refused_as_invalid_media():
    # A live playlist can be read mid-write: every prefix must parse or be refused, never crash.
    outcomes = {"parsed": 0, "refused": 0}
    for name in FILES:
        lines = (PLAYLISTS / name).read_text().splitlines(keepends=True)
        for cut in range(1, len(lines) + 1, max(1, len(lines) // 15)):
            text = "".join(lines[:cut])
            try:
                parse_master(text, BASE) if is_master_playlist(text) else parse_media(text, BASE)
                outcomes["parsed"] += 1
            except InvalidMedia:
                outcomes["refused"] += 1
    assert outcomes["parsed"] > 300 and outcomes["refused"] > 20, outcomes
