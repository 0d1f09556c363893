"""Twitch links and live channels, resolved through a loopback fake of Twitch (GQL, usher, CDN).

The resolver is tested on its own, then through the real service: HTTP API,
Redis, a Celery worker process and ffmpeg, as a viewer's link would go.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from clipqueue.exceptions import (
    InvalidTwitchLink,
    SourceUnavailable,
    TwitchChannelOffline,
    TwitchNotRecording,
    TwitchRefused,
    TwitchSubscriberOnly,
    TwitchVodNotFound,
)
from clipqueue.media.twitch import TwitchConfig, TwitchLink, TwitchResolver, parse_twitch_link
from samplevod.frames import read_frame_ids
from samplevod.twitch import FakeChannel, FakeTwitch, FakeVod
from tests.mediacheck import fetch_stored

FPS = 30
VOD_ID, SUB_ONLY_ID, DELETED_ID, LIVE_ID = "2001", "2002", "2003", "2004"
SUBSCRIBER_TOKEN = "subscriber-oauth-token"


@pytest.fixture(scope="module")
def muted_vod(tmp_path_factory, vod_dir: Path) -> Path:
    """The 60 s test VOD with its third segment (20-30 s) muted, named as Twitch names it."""
    root = tmp_path_factory.mktemp("twitch-vod") / "hls"
    shutil.copytree(vod_dir / "hls", root)
    for variant in (p for p in root.iterdir() if p.is_dir()):
        (variant / "2.ts").rename(variant / "2-muted.ts")
        playlist = variant / "index.m3u8"
        playlist.write_text(playlist.read_text().replace("\n2.ts\n", "\n2-muted.ts\n"))
    return root


@pytest.fixture
def twitch(muted_vod: Path):
    fake = FakeTwitch()
    fake.state.vods.update({
        VOD_ID: FakeVod(muted_vod),
        SUB_ONLY_ID: FakeVod(muted_vod, sub_only=True),
        DELETED_ID: FakeVod(muted_vod, deleted=True),
    })
    fake.state.channels.update({
        "offline_streamer": FakeChannel(live=False),
        "unrecorded_streamer": FakeChannel(video_id=None),
    })
    fake.state.subscriber_tokens.add(SUBSCRIBER_TOKEN)
    yield fake
    fake.stop()


def resolver(fake: FakeTwitch, **config) -> TwitchResolver:
    return TwitchResolver(TwitchConfig(gql_url=fake.gql_url, usher_url=fake.usher_url, timeout=5, **config),
                          sleep=lambda seconds: None)


# --- recognising links -------------------------------------------------------

@pytest.mark.parametrize("url, expected", [
    ("https://www.twitch.tv/videos/2001", TwitchLink("video", "2001")),
    ("https://twitch.tv/videos/2001?t=1h2m3s", TwitchLink("video", "2001")),
    ("https://m.twitch.tv/videos/2001/", TwitchLink("video", "2001")),
    ("http://WWW.Twitch.TV/videos/2001", TwitchLink("video", "2001")),
    ("https://www.twitch.tv/Some_Streamer", TwitchLink("channel", "some_streamer")),
    ("https://vod.example/videos/2001", None),
    ("https://twitch.tv.example/videos/2001", None),
])
def test_twitch_links_are_recognised_by_host_and_path(url, expected):
    assert parse_twitch_link(url) == expected


@pytest.mark.parametrize("url", [
    "https://www.twitch.tv/directory",
    "https://www.twitch.tv/videos/abc",
    "https://www.twitch.tv/videos",
    "https://www.twitch.tv/streamer/videos",
    "https://www.twitch.tv/",
])
def test_twitch_links_that_name_no_vod_or_channel_are_refused(url):
    with pytest.raises(InvalidTwitchLink, match="not a Twitch"):
        parse_twitch_link(url)


# --- the resolver against the fake --------------------------------------------

def test_a_vod_resolves_as_twitchs_web_player_asks(twitch):
    with resolver(twitch) as r:
        resolved = r.resolve(TwitchLink("video", VOD_ID))
    assert resolved.video_id == VOD_ID and resolved.master_text.startswith("#EXTM3U")
    method, path, headers = twitch.state.requests[0]
    assert (method, path) == ("POST", "/gql") and headers["Client-ID"] == TwitchConfig().client_id
    assert headers["Content-Type"] == "application/json"  # what any JSON API, Twitch's included, reads
    assert "Authorization" not in headers
    usher = urlsplit(resolved.master_url)
    assert usher.path == f"/vod/{VOD_ID}.m3u8"
    query = parse_qs(usher.query)
    assert {name: query[name][0] for name in ("allow_source", "allow_audio_only", "playlist_include_framerate",
                                               "supported_codecs")} == {
        "allow_source": "true", "allow_audio_only": "true", "playlist_include_framerate": "true",
        "supported_codecs": "av1,h265,h264"}
    assert json.loads(query["token"][0])["vod_id"] == int(VOD_ID) and query["sig"][0] and query["p"][0].isdigit()


def test_the_token_query_is_raw_text_not_a_persisted_query_hash(twitch):
    seen = []
    twitch.state.requests.clear()
    with resolver(twitch) as r:
        r.access_token(VOD_ID)
    for method, path, _ in twitch.state.requests:
        seen.append((method, path))
    assert seen == [("POST", "/gql")]
    # The fake parses the query's text, so a token at all means the raw query text was sent.


@pytest.mark.parametrize("link, error, words", [
    (TwitchLink("video", DELETED_ID), TwitchVodNotFound, "does not exist or was deleted"),
    (TwitchLink("video", "999999"), TwitchVodNotFound, "does not exist or was deleted"),
    (TwitchLink("video", SUB_ONLY_ID), TwitchSubscriberOnly, "TWITCH_OAUTH_TOKEN"),
    (TwitchLink("channel", "offline_streamer"), TwitchChannelOffline, "is offline"),
    (TwitchLink("channel", "nobody_here"), TwitchChannelOffline, "does not exist"),
    (TwitchLink("channel", "unrecorded_streamer"), TwitchNotRecording, "not recording a VOD"),
])
def test_twitchs_refusals_are_permanent_errors_that_name_the_cause(twitch, link, error, words):
    with resolver(twitch) as r, pytest.raises(error, match=words):
        r.resolve(link)


def test_a_subscribers_oauth_token_opens_a_subscriber_only_vod(twitch):
    with resolver(twitch, oauth_token=SUBSCRIBER_TOKEN) as r:
        resolved = r.resolve(TwitchLink("video", SUB_ONLY_ID))
    assert "#EXT-X-STREAM-INF" in resolved.master_text
    assert twitch.state.requests[0][2]["Authorization"] == f"OAuth {SUBSCRIBER_TOKEN}"


def test_an_oauth_token_twitch_refuses_is_an_operators_error(twitch):
    with resolver(twitch, oauth_token="expired") as r, pytest.raises(TwitchRefused, match="TWITCH_OAUTH_TOKEN"):
        r.resolve(TwitchLink("video", VOD_ID))


def test_transient_gql_and_usher_failures_are_tried_again(twitch):
    twitch.state.fail_first.update({"gql": 2, "usher": 1})
    with resolver(twitch) as r:
        assert r.resolve(TwitchLink("video", VOD_ID)).master_text.startswith("#EXTM3U")
    assert twitch.state.fail_first == {"gql": 0, "usher": 0}


def test_a_twitch_that_stays_down_is_a_transient_error_for_the_job_to_retry(twitch):
    twitch.state.fail_first["gql"] = 100
    with resolver(twitch) as r, pytest.raises(SourceUnavailable):
        r.resolve(TwitchLink("video", VOD_ID))


def test_a_live_channel_resolves_to_the_vod_it_is_recording(twitch, muted_vod):
    twitch.live_vod(LIVE_ID, muted_vod, recorded_seconds=25)
    twitch.state.channels["live_streamer"] = FakeChannel(video_id=LIVE_ID)
    with resolver(twitch) as r:
        resolved = r.resolve(TwitchLink("channel", "live_streamer"))
    assert resolved.video_id == LIVE_ID


# --- the API --------------------------------------------------------------------

def test_the_api_accepts_twitch_links_without_looking_up_twitch_tv(service_factory):
    service = service_factory(ALLOW_PRIVATE_SOURCES="false")
    for url in ("https://www.twitch.tv/videos/2001?t=1h2m3s", "https://m.twitch.tv/some_streamer"):
        response = service.create_clip(vod_url=url, start_time=10, end_time=20)
        assert response.status_code == 201, response.get_json()
        assert response.get_json()["vod_url"] == url


@pytest.mark.parametrize("url", ["https://www.twitch.tv/directory", "https://www.twitch.tv/videos/12ab"])
def test_the_api_refuses_a_malformed_twitch_link_naming_vod_url(service_factory, url):
    service = service_factory()
    response = service.create_clip(vod_url=url, start_time=10, end_time=20)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["field"] == "vod_url" and "not a Twitch" in error["message"]


def test_twitch_links_follow_allowed_source_hosts(service_factory):
    service = service_factory(ALLOWED_SOURCE_HOSTS="vod.example")
    response = service.create_clip(vod_url="https://www.twitch.tv/videos/2001", start_time=10, end_time=20)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "forbidden_source"


# --- end to end -------------------------------------------------------------------

def twitch_service(service_factory, twitch: FakeTwitch, **env):
    service = service_factory(**twitch.settings(), **env)
    service.start_worker()
    return service


def assert_frame_exact(service, clip: dict, start: float, end: float, tmp_path: Path) -> None:
    video = fetch_stored(service, clip["video_url"], tmp_path / f"{clip['clip_id']}.mp4")
    ids = read_frame_ids(video)
    assert ids[0] == round(start * FPS) and ids[-1] == round(end * FPS) - 1, (ids[:3], ids[-3:])
    assert read_frame_ids(video, ignore_editlist=True) == ids  # no pre-roll hidden by an edit list


def test_a_twitch_vod_link_becomes_a_frame_exact_clip_with_its_muted_range(service_factory, twitch, tmp_path):
    service = twitch_service(service_factory, twitch)
    start, end = 15.0, 25.0  # across segment 1 and the muted segment 2 (20-30 s), listed as 2-unmuted.ts
    created = service.create_clip(vod_url=f"https://www.twitch.tv/videos/{VOD_ID}?t=15s", start_time=start,
                                  end_time=end, quality="source")
    assert created.status_code == 201, created.get_json()
    clip = service.wait_for_clip(created.get_json()["clip_id"])
    assert clip["status"] == "ready", clip
    assert clip["quality_used"] == "360p"
    assert clip["muted_ranges"] == [[5.0, 10.0]]
    assert_frame_exact(service, clip, start, end, tmp_path)
    cdn = [path for _, path, _ in twitch.state.requests if path.startswith("/cdn/")]
    assert any(path.endswith("2-unmuted.ts") for path in cdn) and any(path.endswith("2-muted.ts") for path in cdn)


def test_twitchs_refusals_fail_the_clip_at_once_with_a_reason(service_factory, twitch):
    service = twitch_service(service_factory, twitch)
    cases = {
        f"https://www.twitch.tv/videos/{DELETED_ID}": ("vod_not_found", "deleted"),
        f"https://www.twitch.tv/videos/{SUB_ONLY_ID}": ("subscriber_only", "TWITCH_OAUTH_TOKEN"),
        "https://www.twitch.tv/offline_streamer": ("channel_offline", "offline"),
        "https://www.twitch.tv/unrecorded_streamer": ("channel_not_recording", "not recording"),
    }
    clip_ids = {}
    for url in cases:
        response = service.create_clip(vod_url=url, start_time=10, end_time=20)
        assert response.status_code == 201, response.get_json()
        clip_ids[url] = response.get_json()["clip_id"]
    for url, (code, words) in cases.items():
        clip = service.wait_for_clip(clip_ids[url], timeout=60)
        assert clip["status"] == "failed" and clip["failure_code"] == code, clip
        assert words in clip["error"], clip
        assert service.job(clip_ids[url])["attempts"] == 1  # no retries


def test_a_subscriber_only_vod_is_clipped_with_twitch_oauth_token(service_factory, twitch, tmp_path):
    service = twitch_service(service_factory, twitch, TWITCH_OAUTH_TOKEN=SUBSCRIBER_TOKEN)
    created = service.create_clip(vod_url=f"https://www.twitch.tv/videos/{SUB_ONLY_ID}", start_time=31.5,
                                  end_time=38.0, quality="160p")
    clip = service.wait_for_clip(created.get_json()["clip_id"])
    assert clip["status"] == "ready" and clip["quality_used"] == "160p", clip
    assert clip["muted_ranges"] == []


def test_a_live_channel_clip_past_the_recordings_end_waits_then_is_ready(service_factory, twitch, muted_vod,
                                                                         tmp_path):
    service = twitch_service(service_factory, twitch, LIVE_POLL_SECONDS="0.5")
    vod = twitch.live_vod(LIVE_ID, muted_vod, recorded_seconds=32)
    twitch.state.channels["live_streamer"] = FakeChannel(video_id=LIVE_ID)
    start, end = 31.0, 38.0  # recorded when the stream reaches 40 s: 8 s from now, not before
    created = service.create_clip(vod_url="https://www.twitch.tv/live_streamer", start_time=start, end_time=end)
    clip_id = created.get_json()["clip_id"]
    time.sleep(3)
    assert service.clip(clip_id)["status"] == "processing"
    assert service.job(clip_id)["stage"] == "fetching"
    clip = service.wait_for_clip(clip_id, timeout=90)
    assert clip["status"] == "ready", clip
    assert time.monotonic() - vod.live_since >= 40  # it waited for the recording to get there
    assert_frame_exact(service, clip, start, end, tmp_path)


@pytest.fixture(scope="module")
def hevc_vod(tmp_path_factory, generated_media) -> Path:
    """An Enhanced Broadcasting-like VOD: one HEVC rendition in fMP4 behind init-0.mp4 (as tests/media's)."""
    root = tmp_path_factory.mktemp("twitch-hevc") / "hls"
    generated_media.hls_vod(root, duration=18, segment_seconds=6, variants=(("180p", 320, 180, 250_000),),
                            fmp4=True, codec="hevc", fps=FPS)
    return root


def test_an_hevc_fmp4_twitch_vod_is_clipped_frame_exact_in_hevc_and_copied_in_hevc(service_factory, twitch,
                                                                                   hevc_vod, tmp_path):
    twitch.state.vods["2005"] = FakeVod(hevc_vod)
    service = twitch_service(service_factory, twitch)
    start, end = 7.3, 11.5
    accurate = service.create_clip(vod_url="https://www.twitch.tv/videos/2005", start_time=start, end_time=end)
    copy = service.create_clip(vod_url="https://www.twitch.tv/videos/2005", start_time=start, end_time=end,
                               mode="copy")
    clip = service.wait_for_clip(accurate.get_json()["clip_id"])
    assert clip["status"] == "ready" and clip["codec"] == "hevc", clip
    assert clip["extraction_method"] == "smart_cut"
    assert_frame_exact(service, clip, start, end, tmp_path)
    copied = service.wait_for_clip(copy.get_json()["clip_id"])
    assert copied["status"] == "ready" and copied["codec"] == "hevc", copied
    assert copied["extraction_method"] == "copy" and copied["actual_start_time"] <= start
    assert any(path.endswith("/init-0.mp4") for _, path, _ in twitch.state.requests)
