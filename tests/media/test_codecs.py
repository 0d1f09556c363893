"""Clips of HEVC renditions (fMP4 like Enhanced Broadcasting's, and open-GOP MPEG-TS) and of AV1, checked from
decoded frames: accurate mode frame-exact without edit-list pre-roll, copy mode in the source's codec."""

from __future__ import annotations

import math

import pytest

from clipqueue.exceptions import InvalidMedia
from clipqueue.media.extract import ClipRequest, extract_clip
from samplevod.frames import read_frame_ids

from tests.mediacheck import assert_playable_mp4, ffprobe

from .conftest import FPS


def _asked_frames(start: float, end: float) -> list[int]:
    return list(range(math.ceil(start * FPS - 0.5), math.ceil(end * FPS - 0.5)))


def _video_codecs(path) -> list[tuple[str, str]]:
    streams = ffprobe(path)["streams"]
    return [(s["codec_name"], s["codec_tag_string"]) for s in streams if s["codec_type"] == "video"]


def _assert_frame_exact(result, start: float, end: float) -> None:
    shown = read_frame_ids(result.path)
    assert shown == _asked_frames(start, end)  # open GOPs: not the leading pictures before a keyframe
    assert read_frame_ids(result.path, ignore_editlist=True) == shown  # no hidden pre-roll
    assert result.actual_start_time == pytest.approx(start, abs=1 / FPS)
    assert result.actual_end_time == pytest.approx(end, abs=1 / FPS)
    assert_playable_mp4(result.path, end - start, tolerance=0.1, video_codec=result.codec)


@pytest.mark.parametrize("start,end", [(7.3, 11.5), (12.3, 15.0)])
def test_accurate_hevc_fmp4_clip_is_a_frame_exact_smart_cut_in_hevc(fresh_server, options, tmp_path,
                                                                    start, end):
    result = extract_clip(ClipRequest(f"{fresh_server.url}/hevc/master.m3u8", start, end), tmp_path, options)
    _assert_frame_exact(result, start, end)
    assert (result.method, result.codec) == ("smart_cut", "hevc")  # x265 heads with the source's VPS/SPS/PPS
    assert _video_codecs(result.path) == [("hevc", "hvc1")]


def test_accurate_hevc_clip_without_a_keyframe_inside_is_re_encoded_to_h264(fresh_server, options, tmp_path):
    result = extract_clip(ClipRequest(f"{fresh_server.url}/hevc/master.m3u8", 3.1, 3.9), tmp_path, options)
    _assert_frame_exact(result, 3.1, 3.9)
    assert (result.method, result.codec) == ("reencode", "h264")
    assert _video_codecs(result.path) == [("h264", "avc1")]


@pytest.mark.parametrize("start,end", [(7.3, 11.5), (12.3, 15.0)])
def test_accurate_open_gop_hevc_clip_is_frame_exact_re_encoded_to_h264(fresh_server, options, tmp_path,
                                                                       start, end):
    request = ClipRequest(f"{fresh_server.url}/hevc-open-gop/master.m3u8", start, end)
    result = extract_clip(request, tmp_path, options)
    _assert_frame_exact(result, start, end)
    assert (result.method, result.codec) == ("reencode", "h264")  # an open GOP's keyframe is no splice point


@pytest.mark.parametrize("path", ["hevc/master.m3u8", "hevc-open-gop/master.m3u8"])
def test_copy_hevc_clip_keeps_hevc_tagged_hvc1_from_the_keyframe_at_or_before_start(fresh_server, options,
                                                                                    tmp_path, path):
    request = ClipRequest(f"{fresh_server.url}/{path}", 7.3, 11.5, mode="copy")
    result = extract_clip(request, tmp_path, options)
    shown = read_frame_ids(result.path)
    assert shown[0] == 6 * FPS  # keyframes every 2 s: the one at 6.0 s
    assert shown == list(range(shown[0], shown[-1] + 1))
    assert shown[-1] + 1 >= 11.5 * FPS
    assert read_frame_ids(result.path, ignore_editlist=True) == shown
    assert result.actual_start_time == pytest.approx(6.0)
    assert result.actual_end_time == pytest.approx((shown[-1] + 1) / FPS)
    assert (result.method, result.codec) == ("copy", "hevc")
    assert _video_codecs(result.path) == [("hevc", "hvc1")]


@pytest.mark.parametrize("start,end", [(7.3, 11.5), (12.3, 15.0)])
def test_accurate_av1_fmp4_clip_is_frame_exact_re_encoded_to_h264(fresh_server, options, tmp_path,
                                                                  start, end):
    result = extract_clip(ClipRequest(f"{fresh_server.url}/av1/master.m3u8", start, end), tmp_path, options)
    _assert_frame_exact(result, start, end)
    assert (result.method, result.codec) == ("reencode", "h264")


def test_copy_av1_fmp4_clip_keeps_av1_from_the_keyframe_at_or_before_start(fresh_server, options, tmp_path):
    request = ClipRequest(f"{fresh_server.url}/av1/master.m3u8", 7.3, 11.5, mode="copy")
    result = extract_clip(request, tmp_path, options)
    shown = read_frame_ids(result.path)
    assert shown == list(range(6 * FPS, round(11.5 * FPS)))  # no reordering in AV1: ends on the asked frame
    assert read_frame_ids(result.path, ignore_editlist=True) == shown
    assert (result.actual_start_time, result.actual_end_time) == (pytest.approx(6.0), pytest.approx(11.5))
    assert (result.method, result.codec) == ("copy", "av1")
    assert_playable_mp4(result.path, 5.5, tolerance=0.1, video_codec="av1")


def test_fmp4_rendition_in_a_codec_the_cut_cannot_handle_is_refused_with_its_name(options, tmp_path_factory,
                                                                                  tmp_path):
    import subprocess

    from samplevod.server import serve_directory

    root = tmp_path_factory.mktemp("vp9")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi",
                    "-i", "testsrc2=size=160x90:rate=30:duration=4",
                    "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-g", "60", "-f", "hls",
                    "-hls_time", "2", "-hls_playlist_type", "vod", "-hls_segment_type", "fmp4",
                    "-hls_fmp4_init_filename", "init-0.mp4", "-hls_segment_filename", str(root / "%d.m4s"),
                    str(root / "index.m3u8")], check=True, capture_output=True)
    with serve_directory(root) as server:
        # not remuxed into a data stream, which would make a clip without picture
        with pytest.raises(InvalidMedia, match="VP9"):
            extract_clip(ClipRequest(f"{server.url}/index.m3u8", 0.5, 2.5), tmp_path, options)


def test_hevc_whose_headers_x265_ultrafast_cannot_reproduce_is_re_encoded_whole(options, tmp_path_factory,
                                                                                tmp_path):
    from samplevod.server import serve_directory
    from samplevod.vod import generate_hls_vod

    root = tmp_path_factory.mktemp("hevc-other-headers")
    # x265's "fast" preset writes other parameter sets (CTU size, AMP, ...) than the cut's ultrafast encodes
    generate_hls_vod(root, duration=8, segment_seconds=4, variants=(("144p", 256, 144, 150_000),), fmp4=True,
                     codec="hevc", x265_preset="fast", fps=FPS)
    with serve_directory(root) as server:
        result = extract_clip(ClipRequest(f"{server.url}/master.m3u8", 1.3, 4.5), tmp_path, options)
    _assert_frame_exact(result, 1.3, 4.5)
    assert (result.method, result.codec) == ("reencode", "h264")
