"""extract_clip end to end against the local server, checked from decoded frames."""

from __future__ import annotations

import math

import pytest

from clipqueue.exceptions import ForbiddenSource, InvalidMedia, SourceNotFound
from clipqueue.media.extract import ClipRequest, ExtractOptions, extract_clip
from samplevod.frames import read_frame_ids

from tests.mediacheck import assert_playable_mp4, ffprobe

from .conftest import FPS


@pytest.mark.parametrize("path", ["ts/master.m3u8", "fmp4/master.m3u8", "source.mp4"])
def test_copy_mode_starts_on_the_keyframe_at_or_before_start_and_covers_the_range(fresh_server, options, tmp_path, path):
    result = extract_clip(ClipRequest(f"{fresh_server.url}/{path}", 7.3, 13.5, mode="copy"), tmp_path, options)
    shown = read_frame_ids(result.path)
    assert shown[0] == 6 * FPS  # keyframes every 2 s: the one at 6.0 s
    assert shown[-1] + 1 >= 13.5 * FPS
    assert shown == list(range(shown[0], shown[-1] + 1))
    assert read_frame_ids(result.path, ignore_editlist=True) == shown  # nothing hidden by an edit list
    assert result.actual_start_time == pytest.approx(shown[0] / FPS)
    assert result.actual_end_time == pytest.approx((shown[-1] + 1) / FPS)
    assert result.method == "copy"
    assert result.codec == "h264"


def test_missing_playlist_raises_source_not_found(fresh_server, options, tmp_path):
    with pytest.raises(SourceNotFound):
        extract_clip(ClipRequest(f"{fresh_server.url}/missing/master.m3u8", 1, 3), tmp_path, options)


def test_missing_progressive_file_raises_source_not_found(fresh_server, options, tmp_path):
    with pytest.raises(SourceNotFound):
        extract_clip(ClipRequest(f"{fresh_server.url}/missing.mp4", 1, 3), tmp_path, options)


def test_loopback_source_is_forbidden_by_default_policy(fresh_server, tmp_path):
    with pytest.raises(ForbiddenSource):
        extract_clip(ClipRequest(f"{fresh_server.url}/ts/master.m3u8", 1, 3), tmp_path, ExtractOptions())
    assert fresh_server.stats.requests == 0


@pytest.mark.parametrize("path", ["ts/master.m3u8", "fmp4/master.m3u8", "source.mp4"])
@pytest.mark.parametrize("start,end", [(7.3, 13.5), (8.0, 14.0), (9.95, 20.0), (3.1, 3.9)])
def test_accurate_mode_shows_exactly_the_asked_frames_from_a_keyframe(fresh_server, options, tmp_path, path, start, end):
    if path == "source.mp4" and end > 18:
        end = 18.0
    result = extract_clip(ClipRequest(f"{fresh_server.url}/{path}", start, end), tmp_path, options)
    shown = read_frame_ids(result.path)
    assert shown == list(range(math.ceil(start * FPS - 0.5), math.ceil(end * FPS - 0.5)))  # frames starting in the range, to the nearest frame
    assert read_frame_ids(result.path, ignore_editlist=True) == shown  # no hidden pre-roll
    assert result.actual_start_time == pytest.approx(start, abs=1 / FPS)
    assert result.actual_end_time == pytest.approx(end, abs=1 / FPS)
    assert result.method in ("smart_cut", "reencode")
    assert result.codec == "h264"


def test_audio_only_quality_gives_an_audio_clip_of_the_range(tmp_path_factory, options, tmp_path):
    from samplevod.server import serve_directory
    from samplevod.vod import generate_hls_vod

    root = tmp_path_factory.mktemp("audio-only")
    generate_hls_vod(root, duration=20, variants=(("240p", 426, 240, 400_000), ("audio_only", 0, 0, 160_000)))
    with serve_directory(root) as server:
        result = extract_clip(ClipRequest(f"{server.url}/master.m3u8", 4.5, 12.0, quality="audio_only"), tmp_path, options)
    assert result.quality_used == "audio_only"
    assert result.width is None
    assert result.codec is None
    assert result.actual_start_time == pytest.approx(4.5, abs=0.03)
    assert result.actual_end_time == pytest.approx(12.0, abs=0.03)


def test_audio_only_from_a_master_without_an_audio_rendition_drops_the_video(fresh_server, options, tmp_path):
    result = extract_clip(ClipRequest(f"{fresh_server.url}/ts/master.m3u8", 4.5, 12.0, quality="audio_only"),
                          tmp_path, options)
    assert result.quality_used == "audio_only"
    assert (result.width, result.height) == (None, None)
    info = ffprobe(result.path)
    assert [s["codec_type"] for s in info["streams"]] == ["audio"]
    assert float(info["format"]["duration"]) == pytest.approx(7.5, abs=0.05)


@pytest.fixture(scope="module")
def discontinuous_vods(tmp_path_factory):
    """Two 20 s VODs stitched with #EXT-X-DISCONTINUITY (timestamps and frame numbers restart at 20 s):
    ``same.m3u8`` with the same encoding on both sides, ``resized.m3u8`` with a smaller picture after it."""
    from samplevod.server import serve_directory
    from samplevod.vod import generate_hls_vod

    root = tmp_path_factory.mktemp("discontinuity")
    generate_hls_vod(root / "a", duration=20, variants=(("360p", 640, 360, 800_000),), fps=FPS)
    generate_hls_vod(root / "b", duration=20, variants=(("360p", 640, 360, 800_000),), fps=FPS)
    generate_hls_vod(root / "c", duration=20, variants=(("360p", 480, 270, 600_000),), fps=FPS)
    for name, second in (("same", "b"), ("resized", "c")):
        lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:10", "#EXT-X-PLAYLIST-TYPE:VOD"]
        lines += ["#EXTINF:10.000000,", "a/360p/0.ts", "#EXTINF:10.000000,", "a/360p/1.ts", "#EXT-X-DISCONTINUITY"]
        lines += ["#EXTINF:10.000000,", f"{second}/360p/0.ts", "#EXTINF:10.000000,", f"{second}/360p/1.ts",
                  "#EXT-X-ENDLIST"]
        (root / f"{name}.m3u8").write_text("\n".join(lines) + "\n")
    with serve_directory(root) as server:
        yield server


def test_accurate_clip_across_a_discontinuity_shows_both_sides_in_order(discontinuous_vods, options, tmp_path):
    result = extract_clip(ClipRequest(f"{discontinuous_vods.url}/same.m3u8", 17.5, 23.0), tmp_path, options)
    shown = read_frame_ids(result.path)
    expected = list(range(round(17.5 * FPS), 20 * FPS)) + list(range(0, 3 * FPS))
    assert shown == expected
    assert read_frame_ids(result.path, ignore_editlist=True) == shown
    assert result.actual_start_time == pytest.approx(17.5, abs=1 / FPS)
    assert result.duration == pytest.approx(5.5, abs=1 / FPS)
    assert_playable_mp4(result.path, 5.5, tolerance=0.1)


def test_copy_clip_across_a_discontinuity_keeps_the_frames_on_each_side(discontinuous_vods, options, tmp_path):
    result = extract_clip(ClipRequest(f"{discontinuous_vods.url}/same.m3u8", 17.5, 23.0, mode="copy"), tmp_path, options)
    shown = read_frame_ids(result.path)
    boundary = shown.index(0)
    assert shown[:boundary] == list(range(16 * FPS, 20 * FPS))  # from the keyframe at 16 s
    assert shown[boundary:] == list(range(0, len(shown) - boundary))
    assert len(shown) - boundary >= 3 * FPS
    assert result.actual_start_time == pytest.approx(16.0)


def test_clip_across_a_discontinuity_where_the_encoding_changes(discontinuous_vods, options, tmp_path):
    url = f"{discontinuous_vods.url}/resized.m3u8"
    with pytest.raises(InvalidMedia, match="discontinuity"):
        extract_clip(ClipRequest(url, 17.5, 23.0, mode="copy"), tmp_path, options)
    result = extract_clip(ClipRequest(url, 17.5, 23.0), tmp_path, options)
    assert result.method == "reencode"
    assert (result.width, result.height) == (640, 360)  # one picture size: the clip's first
    shown = read_frame_ids(result.path)
    assert len(shown) == round(5.5 * FPS)
    assert shown[:75] == list(range(round(17.5 * FPS), 20 * FPS))  # the rescaled rest cannot be read back
    assert_playable_mp4(result.path, 5.5, tolerance=0.1)


@pytest.fixture(scope="module")
def changed_encoding(media_root, tmp_path_factory):
    """The 240p rendition with its second segment re-encoded with CAVLC instead of CABAC, timestamps kept and
    no discontinuity tag: the picture parameter sets change mid-stream, as when an encoder is reconfigured."""
    import subprocess

    from samplevod.server import serve_directory

    root = tmp_path_factory.mktemp("changed-encoding")
    source = media_root / "ts" / "240p"
    for name in ("0.ts", "2-muted.ts", "3.ts"):
        (root / name).write_bytes((source / name).read_bytes())
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-copyts", "-i", str(source / "1.ts"), "-map", "0",
                    "-c:v", "libx264", "-preset", "veryfast", "-b:v", "400k",
                    "-x264-params", "cabac=0:bframes=3:keyint=60:min-keyint=60:scenecut=0",
                    "-c:a", "copy", "-muxdelay", "0", "-muxpreload", "0", "-f", "mpegts", str(root / "1.ts")],
                   check=True)
    (root / "index.m3u8").write_text((source / "index.m3u8").read_text())
    with serve_directory(root) as server:
        yield server


def test_headers_changing_inside_the_copied_part_make_the_accurate_cut_re_encode(changed_encoding, options, tmp_path):
    result = extract_clip(ClipRequest(f"{changed_encoding.url}/index.m3u8", 7.3, 13.5), tmp_path, options)
    assert result.method == "reencode"  # a splice would hand the decoder other headers mid-file
    shown = read_frame_ids(result.path)
    assert shown == list(range(round(7.3 * FPS), round(13.5 * FPS)))
    assert_playable_mp4(result.path, 6.2, tolerance=0.1)
    before = extract_clip(ClipRequest(f"{changed_encoding.url}/index.m3u8", 1.3, 7.5), tmp_path / "before", options)
    assert before.method == "smart_cut"  # the same source splices where its headers stay the same
