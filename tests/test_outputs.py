"""Outputs beyond the clip: thumbnails in three sizes, the animated preview, the 9:16 portrait version.

End to end through a real worker, ffmpeg and storage; the picture checks decode what was stored.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import boto3
import pytest

from clipqueue.media.renditions import portrait_size, preview_window, thumbnail_widths
from samplevod.frames import read_frame_ids
from tests.mediacheck import assert_jpeg, ffprobe, fetch_stored, stream
from tests.test_e2e import _master_with_audio_only

FPS = 30


@pytest.mark.parametrize("width, height, fill, size", [
    (1280, 720, "crop", (406, 720)),  # the clip's own pixels: 405x720, rounded to even
    (1920, 1080, "crop", (608, 1080)),
    (3840, 2160, "crop", (1080, 1920)),  # scaled down to the largest portrait
    (720, 1280, "crop", (720, 1280)),  # already 9:16
    (1280, 720, "blur", (720, 1280)),  # the whole picture 720 wide over its blurred fill
    (1920, 1080, "blur", (1080, 1920)),
    (3840, 2160, "blur", (1080, 1920)),
    (284, 160, "blur", (160, 284)),
])
def test_portrait_is_9_16_within_1080x1920_and_never_upscaled(width, height, fill, size):
    out_width, out_height = portrait_size(width, height, fill)
    assert (out_width, out_height) == size
    assert abs(out_width / out_height - 9 / 16) < 2 / out_height


def test_thumbnail_widths_are_capped_at_the_clip_width_and_the_preview_lasts_at_most_6_s():
    assert thumbnail_widths(1920) == {"small": 320, "medium": 640, "large": 1280}
    assert thumbnail_widths(854) == {"small": 320, "medium": 640, "large": 854}
    assert thumbnail_widths(284) == {"small": 284, "medium": 284, "large": 284}
    assert preview_window(30.0) == (10.0, 6.0)  # from the thumbnails' moment, a third of the way in
    assert preview_window(8.0) == (2.0, 6.0)  # moved earlier to end with the clip
    assert preview_window(4.0) == (0.0, 4.0)


def assert_preview(path: Path, clip_width: int) -> None:
    """A muted H.264 loop at most 640 px wide and 6 s long that moves (more than one frame)."""
    info = ffprobe(path)
    video = stream(info, "video")
    assert video["codec_name"] == "h264" and stream(info, "audio") is None
    assert int(video["width"]) == min(640, clip_width)
    assert 1 < int(video["nb_frames"]) <= 6 * FPS
    assert float(info["format"]["duration"]) <= 6.0 + 1e-3


def assert_thumbnails(service, thumbnails: dict[str, str], clip_width: int, tmp_path: Path) -> None:
    assert set(thumbnails) == {"small", "medium", "large"}
    for name, target in (("small", 320), ("medium", 640), ("large", 1280)):
        image = assert_jpeg(fetch_stored(service, thumbnails[name], tmp_path / f"{name}.jpg"))
        assert int(image["width"]) == min(target, clip_width), name


def frame_psnr(portrait: Path, clip: Path, crop: str, shift: int = 0) -> list[float]:
    """Per-frame PSNR (dB) of ``portrait`` against ``clip`` cropped by ``crop``, ``shift`` frames later."""
    result = subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-i", str(portrait), "-i", str(clip), "-lavfi",
         f"[1:v]{crop},trim=start_frame={shift},setpts=PTS-STARTPTS[clip];[0:v]setpts=PTS-STARTPTS[portrait];"
         "[portrait][clip]psnr=stats_file=-", "-f", "null", "-"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    return [float(value) for value in re.findall(r"psnr_avg:([\d.]+|inf)", result.stdout)]


@pytest.mark.e2e
def test_ready_clip_has_thumbnails_a_preview_and_a_frame_exact_blurred_portrait(service_factory, master_url,
                                                                                vod_dir, vod_server, tmp_path):
    service = service_factory()
    service.start_worker()
    start, end = 7.3, 14.5  # off keyframes (smart cut), and longer than a preview
    clip_id = service.create_clip(vod_url=master_url, start_time=start, end_time=end, quality="360p",
                                  outputs=["portrait"], portrait_fill="blur").get_json()["clip_id"]
    audio_id = service.create_clip(vod_url=vod_server.url + _master_with_audio_only(vod_dir), start_time=start,
                                   end_time=end, quality="audio_only", outputs=["portrait"]).get_json()["clip_id"]
    clip = service.wait_for_clip(clip_id)
    assert clip["status"] == "ready", clip
    assert (clip["width"], clip["height"], clip["portrait_fill"]) == (640, 360, "blur")
    assert clip["thumbnail_url"].endswith(f"clips/{clip_id}.jpg")
    assert clip["preview_url"].endswith(f"clips/{clip_id}-preview.mp4")
    assert clip["portrait_url"].endswith(f"clips/{clip_id}-portrait.mp4")
    assert_thumbnails(service, clip["thumbnails"], 640, tmp_path)
    assert_preview(fetch_stored(service, clip["preview_url"], tmp_path / "preview.mp4"), 640)
    assert service.job(clip_id)["preview_url"] == clip["preview_url"]

    video = fetch_stored(service, clip["video_url"], tmp_path / "clip.mp4")
    portrait = fetch_stored(service, clip["portrait_url"], tmp_path / "portrait.mp4")
    info = ffprobe(portrait)
    picture, sound = stream(info, "video"), stream(info, "audio")
    assert (int(picture["width"]), int(picture["height"])) == (360, 640)
    assert sound is not None and float(sound["start_time"]) == 0.0
    assert abs(float(info["format"]["duration"]) - clip["duration"]) < 0.05
    # The whole picture is 360x202 in the middle of the portrait: scaled back, its frame numbers read as the clip's.
    restored = tmp_path / "restored.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(portrait), "-vf", "crop=360:202:0:219,scale=640:360",
                    "-c:v", "ffv1", str(restored)], check=True, timeout=120)
    ids = read_frame_ids(video)
    assert ids[0] == round(start * FPS) and ids[-1] == round(end * FPS) - 1
    assert read_frame_ids(restored) == ids

    # An audio-only clip has no picture: no preview, thumbnails or portrait, and it is ready all the same.
    audio_only = service.wait_for_clip(audio_id)
    assert audio_only["status"] == "ready", audio_only
    assert (audio_only["preview_url"], audio_only["thumbnails"], audio_only["portrait_url"]) == (None, None, None)


@pytest.mark.e2e
def test_s3_clip_gets_a_frame_exact_centre_cropped_portrait_and_cancel_removes_every_stored_object(
        service_factory, master_url, tmp_path):
    from clipqueue.tasks import discard_output

    service = service_factory(storage="s3")
    service.start_worker()
    start, end = 22.2, 29.8
    clip_id = service.create_clip(vod_url=master_url, start_time=start, end_time=end, quality="160p",
                                  outputs=["portrait"]).get_json()["clip_id"]
    clip = service.wait_for_clip(clip_id)
    assert clip["status"] == "ready", clip
    assert (clip["width"], clip["height"], clip["portrait_fill"]) == (284, 160, "crop")
    # Narrower than every size: each is the clip's own width, one file.
    assert_thumbnails(service, clip["thumbnails"], 284, tmp_path)
    assert len(set(clip["thumbnails"].values())) == 1
    assert_preview(fetch_stored(service, clip["preview_url"], tmp_path / "preview.mp4"), 284)

    video = fetch_stored(service, clip["video_url"], tmp_path / "clip.mp4")
    portrait = fetch_stored(service, clip["portrait_url"], tmp_path / "portrait.mp4")
    picture = stream(ffprobe(portrait), "video")
    assert (int(picture["width"]), int(picture["height"])) == (90, 160)
    assert int(picture["nb_frames"]) == int(stream(ffprobe(video), "video")["nb_frames"])
    # Every portrait frame is the centre of the clip's frame at the same place; one frame off, they differ.
    aligned = frame_psnr(portrait, video, "crop=90:160")
    assert len(aligned) == int(picture["nb_frames"]) and min(aligned) > 35, aligned
    shifted = frame_psnr(portrait, video, "crop=90:160", shift=1)
    assert sum(shifted) / len(shifted) < min(aligned) - 5

    bucket, s3 = service.env["S3_BUCKET"], boto3.client("s3", endpoint_url=service.env["S3_ENDPOINT_URL"])
    stored = {item["Key"] for item in s3.list_objects_v2(Bucket=bucket, Prefix=f"clips/{clip_id}")["Contents"]}
    types = {key: s3.head_object(Bucket=bucket, Key=key)["ContentType"] for key in stored}
    assert types == {
        f"clips/{clip_id}.mp4": "video/mp4", f"clips/{clip_id}.jpg": "image/jpeg",
        f"clips/{clip_id}-small.jpg": "image/jpeg", f"clips/{clip_id}-preview.mp4": "video/mp4",
        f"clips/{clip_id}-portrait.mp4": "video/mp4",
    }
    # What a canceled clip's late finalize removes: every object the clip stored.
    with service.app.app_context():
        discard_output(clip_id, service.app.config["CLIPQUEUE"])
    assert s3.list_objects_v2(Bucket=bucket, Prefix=f"clips/{clip_id}").get("KeyCount") == 0
