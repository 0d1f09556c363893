"""End to end: HTTP API → real Redis → real Celery worker processes → ffmpeg → storage → database."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
import redis

from clipqueue.keys import DEAD_LETTER_QUEUE
from tests.mediacheck import assert_jpeg, assert_playable_mp4, ffprobe, fetch_stored
from tests.services import RedisServer

pytestmark = pytest.mark.e2e

START, END = 12.4, 27.4  # 15 s, off segment boundaries, across two segments


@pytest.mark.parametrize(
    "db, storage",
    [("sqlite", "local"), ("postgres", "local"), ("sqlite", "s3"), ("postgres", "s3")],
)
def test_clip_becomes_ready_with_playable_video_and_thumbnail(service_factory, master_url, tmp_path, db, storage):
    service = service_factory(db=db, storage=storage)
    service.start_worker()
    response = service.create_clip(vod_url=master_url, start_time=START, end_time=END, quality="480p",
                                   title="e2e")
    assert response.status_code == 201, response.get_json()
    clip_id = response.get_json()["clip_id"]

    clip = service.wait_for_clip(clip_id)
    assert clip["status"] == "ready", clip
    assert clip["error"] is None
    # The nearest variant at or below the asked quality is used, and reported.
    assert clip["quality"] == "480p" and clip["quality_used"] == "360p"
    assert clip["video_url"].endswith(f"clips/{clip_id}.mp4")
    assert clip["thumbnail_url"].endswith(f"clips/{clip_id}.jpg")
    assert (clip["width"], clip["height"]) == (640, 360)
    assert clip["processed_at"] and clip["size_bytes"] > 0
    assert abs(clip["duration"] - (END - START)) < 0.1

    video = fetch_stored(service, clip["video_url"], tmp_path / "clip.mp4")
    assert video.stat().st_size == clip["size_bytes"]
    assert_playable_mp4(video, END - START, tolerance=0.1)
    assert_jpeg(fetch_stored(service, clip["thumbnail_url"], tmp_path / "thumb.jpg"))

    job = service.job(clip_id)
    assert job["status"] == "completed"
    assert job["progress"] == 100 and job["attempts"] == 1
    assert job["worker"].startswith("worker1@")
    for stamp in ("queued_at", "started_at", "completed_at"):
        assert job[stamp].endswith("Z"), job
    assert service.client.get("/api/v1/queue").get_json()["pending"] == 0
    # Every line the job wrote in the worker log names its clip (Celery's own lines by task id).
    job_lines = [line for line in service.workers[0].log().splitlines() if "ForkPoolWorker" in line]
    assert job_lines
    assert all(clip_id in line for line in job_lines), job_lines


def test_source_404_fails_the_clip_without_a_dead_letter_or_traceback(service_factory, vod_server):
    from prometheus_client.parser import text_string_to_metric_families

    service = service_factory()
    service.start_worker()
    url = f"{vod_server.url}/hls/missing.m3u8"
    clip_id = service.create_clip(vod_url=url, start_time=1, end_time=5).get_json()["clip_id"]

    clip = service.wait_for_clip(clip_id)
    assert clip["status"] == "failed"
    assert "404" in clip["error"]
    assert clip["video_url"] is None
    job = service.job(clip_id)
    assert job["status"] == "failed" and "404" in job["error"]
    # A 404 is permanent: one attempt, no retries.
    assert job["attempts"] == 1
    # The user's mistake is no operator's to replay: no dead letter, counted by its reason instead.
    assert service.client.get("/api/v1/dead-letter").get_json()["jobs"] == []
    assert redis.Redis.from_url(service.env["REDIS_URL"]).llen(DEAD_LETTER_QUEUE) == 0
    metrics = service.client.get("/metrics").get_data(as_text=True)
    failed = {sample.labels["reason"]: sample.value for family in text_string_to_metric_families(metrics)
              for sample in family.samples if sample.name == "clipqueue_clips_failed"}
    assert failed == {"source_not_found": 1}
    # One line about it, not a traceback at ERROR.
    log = service.worker_logs()
    assert "Traceback" not in log and " ERROR" not in log, log[-3000:]


def test_two_workers_with_separate_scratch_folders_share_the_work(service_factory, master_url, tmp_path):
    service = service_factory(storage="s3")
    scratch = {name: tmp_path / f"scratch-{name}" for name in ("hostA", "hostB")}
    for name, folder in scratch.items():
        folder.mkdir()
        service.start_worker(name, SCRATCH_DIR=str(folder), STORAGE_LOCAL_DIR=str(tmp_path / f"none-{name}"))
    clip_ids = [
        service.create_clip(vod_url=master_url, start_time=start, end_time=start + 8).get_json()["clip_id"]
        for start in (1.5, 11.5, 21.5, 31.5, 41.5, 3.0)
    ]
    clips = [service.wait_for_clip(clip_id) for clip_id in clip_ids]
    assert [clip["status"] for clip in clips] == ["ready"] * len(clip_ids), clips
    workers = {service.job(clip_id)["worker"].split("@")[0] for clip_id in clip_ids}
    assert workers == {"hostA", "hostB"}
    s3 = boto3.client("s3", endpoint_url=service.env["S3_ENDPOINT_URL"])
    keys = {obj["Key"] for obj in s3.list_objects_v2(Bucket=service.env["S3_BUCKET"])["Contents"]}
    # The clip, its thumbnail, thumbnails and preview (a 640 px clip's large thumbnail is its medium one).
    suffixes = (".mp4", ".jpg", "-small.jpg", "-medium.jpg", "-preview.mp4")
    assert keys == {f"clips/{c}{suffix}" for c in clip_ids for suffix in suffixes}
    # Scratch files do not outlive their job.
    for folder in scratch.values():
        assert list(folder.iterdir()) == []


def test_clip_created_while_redis_is_down_is_queued_when_it_returns(service_factory, master_url, tmp_path):
    private = RedisServer(tmp_path / "redis-outage")
    private.start()
    service = service_factory(redis=private.url(0))
    private.stop()

    response = service.create_clip(vod_url=master_url, start_time=5, end_time=12)
    assert response.status_code == 201, response.get_json()
    clip_id = response.get_json()["clip_id"]
    assert service.clip(clip_id)["status"] == "processing"
    assert service.client.get(f"/api/v1/clips/{clip_id}/job").status_code == 503

    private.start()
    try:
        # Nobody touches the clip: beat's outbox sweep queues it, a worker finishes it.
        service.start_worker(beat=True)
        clip = service.wait_for_clip(clip_id)
        assert clip["status"] == "ready", clip
        assert service.job(clip_id)["status"] == "completed"
    finally:
        service.stop()
        private.stop()


def _master_with_audio_only(vod_dir: Path) -> str:
    """Add a Twitch-style audio_only rendition to the test VOD; return the new master's path."""
    import subprocess

    hls = vod_dir / "hls"
    if not (hls / "master-audio.m3u8").exists():
        (hls / "audio_only").mkdir(exist_ok=True)
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-i", str(hls / "160p" / "index.m3u8"), "-vn", "-c:a", "copy",
             "-f", "hls", "-hls_time", "10", "-hls_playlist_type", "vod",
             "-hls_segment_filename", str(hls / "audio_only" / "%d.ts"), str(hls / "audio_only" / "index.m3u8")],
            check=True, timeout=120,
        )
        master = (hls / "master.m3u8").read_text().rstrip("\n")
        (hls / "master-audio.m3u8").write_text(
            master + '\n#EXT-X-STREAM-INF:BANDWIDTH=160000,CODECS="mp4a.40.2",VIDEO="audio_only"\n'
            "audio_only/index.m3u8\n"
        )
    return "/hls/master-audio.m3u8"


def test_audio_only_clip_becomes_ready_without_a_thumbnail(service_factory, vod_dir, vod_server, tmp_path):
    service = service_factory()
    service.start_worker()
    url = vod_server.url + _master_with_audio_only(vod_dir)
    clip_id = service.create_clip(vod_url=url, start_time=START, end_time=END,
                                  quality="audio_only").get_json()["clip_id"]
    clip = service.wait_for_clip(clip_id)
    assert clip["status"] == "ready", clip
    assert clip["quality_used"] == "audio_only"
    assert clip["thumbnail_url"] is None and clip["width"] is None
    info = ffprobe(fetch_stored(service, clip["video_url"], tmp_path / "audio.mp4"))
    assert [s["codec_type"] for s in info["streams"]] == ["audio"]
    assert abs(float(info["format"]["duration"]) - (END - START)) < 0.1


def test_clips_shorter_than_a_gop_get_a_thumbnail_in_both_modes(service_factory, master_url, tmp_path):
    # The test VOD has a keyframe every 2 s: 42.2-43.8 holds none of its own.
    service = service_factory()
    service.start_worker()
    clip_ids = [service.create_clip(vod_url=master_url, start_time=42.2, end_time=43.8, mode=mode)
                .get_json()["clip_id"] for mode in ("accurate", "copy")]
    for clip_id in clip_ids:
        clip = service.wait_for_clip(clip_id)
        assert clip["status"] == "ready", clip
        thumbnail = fetch_stored(service, clip["thumbnail_url"], tmp_path / f"{clip_id}.jpg")
        assert_jpeg(thumbnail)
        # No error text anywhere names a worker's scratch folder.
        assert service.env["SCRATCH_DIR"] not in str(service.job(clip_id))
