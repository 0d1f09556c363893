"""A clip storm end to end: many overlapping clips of one moment through the API, Redis and a worker of 2
processes; the VOD server counts what it sends."""

from __future__ import annotations

import math
from pathlib import Path

import boto3
import pytest
import redis

from clipqueue.keys import metric_key
from samplevod.frames import read_frame_ids
from samplevod.server import serve_directory
from tests.mediacheck import clip_object_keys, fetch_stored
from tests.services import WorkerProcess

FPS = 30  # the test VOD's


def _frame_exact(path, start: float, end: float) -> bool:
    return read_frame_ids(path) == list(range(math.ceil(start * FPS - 0.5), math.ceil(end * FPS - 0.5)))


@pytest.mark.e2e
def test_overlapping_clips_fetch_each_segment_about_once_and_identical_ones_are_cut_once(
        service_factory, vod_dir, tmp_path):
    service = service_factory(storage="s3")
    worker = WorkerProcess(service.env, "storm", service.workdir, concurrency=2)
    service.workers.append(worker)
    worker.start()
    ranges = [(12.3 + 1.1 * n, 18.3 + 1.1 * n) for n in range(5)]
    asked = ranges[:2] + [ranges[0]] + ranges[2:] + [ranges[0], ranges[0]]  # three twins of the first
    with serve_directory(vod_dir) as cdn:
        url = f"{cdn.url}/hls/master.m3u8"
        clip_ids = []
        for start, end in asked:
            response = service.create_clip(vod_url=url, start_time=start, end_time=end, quality="360p")
            assert response.status_code == 201, response.get_json()
            clip_ids.append(response.get_json()["clip_id"])
        clips = [service.wait_for_clip(clip_id, timeout=240) for clip_id in clip_ids]
        sent, requested = cdn.stats.bytes_sent, dict(cdn.stats.by_path)
    assert [clip["status"] for clip in clips] == ["ready"] * len(asked), [clip["error"] for clip in clips]

    # Each byte of the VOD the storm needed crossed the network about once, not once per clip.
    unique = sum((vod_dir / path.lstrip("/")).stat().st_size for path in requested)
    assert sent <= 1.5 * unique, (sent, unique, requested)

    # Every clip has its own files, which show exactly the asked frames.
    s3 = boto3.client("s3", endpoint_url=service.env["S3_ENDPOINT_URL"])
    keys = {obj["Key"] for obj in s3.list_objects_v2(Bucket=service.env["S3_BUCKET"])["Contents"]}
    assert keys == set().union(*(clip_object_keys(clip) for clip in clips))
    assert all(clip["preview_url"] and clip["thumbnails"] for clip in clips)
    videos = {}
    for clip, (start, end) in zip(clips, asked):
        assert clip["video_url"].endswith(f"clips/{clip['clip_id']}.mp4")
        video = fetch_stored(service, clip["video_url"], tmp_path / f"{clip['clip_id']}.mp4")
        videos[clip["clip_id"]] = video
        assert _frame_exact(video, start, end), (clip["clip_id"], start, end)

    # The first range was cut once: its three twins copied its files.
    twins = [clip for clip, span in zip(clips, asked) if span == ranges[0]]
    assert len({videos[clip["clip_id"]].read_bytes() for clip in twins}) == 1
    assert len({(c["actual_start_time"], c["actual_end_time"], c["size_bytes"]) for c in twins}) == 1
    counters = redis.Redis.from_url(service.env["REDIS_URL"], decode_responses=True)
    assert float(counters.hget(metric_key("clipqueue_identical_clips_total"), "")) == 3
    cache = counters.hgetall(metric_key("clipqueue_segment_cache_total"))
    assert float(cache["result=hit"]) + float(cache["result=coalesced"]) >= 4, cache
    assert worker.log().count("copied the files of identical clip") == 3


# --- identical requests, step by step (real Redis, SQLite and local storage; no worker) -------------

def _twins(service, count: int, **body) -> list[str]:
    asked = {"vod_url": "http://127.0.0.1:9/hls/master.m3u8", "start_time": 3, "end_time": 9, **body}
    return [service.create_clip(**asked).get_json()["clip_id"] for _ in range(count)]


def _store(service, clip_id: str) -> dict:
    """Give ``clip_id`` stored files and an output, as its job would."""
    from clipqueue import clips
    from clipqueue.models import db
    from clipqueue.storage import object_key, storage_from_settings

    storage = storage_from_settings(service.app.config["CLIPQUEUE"])
    output = {"video_url": None, "thumbnail_url": None, "quality_used": "360p", "duration": 6.0,
              "actual_start_time": 3.0, "actual_end_time": 9.0, "width": 640, "height": 360,
              "size_bytes": 5, "muted_ranges": [], "method": "smart_cut", "codec": "h264"}
    for suffix, name in ((".mp4", "video_url"), (".jpg", "thumbnail_url")):
        source = service.workdir / f"made{suffix}"
        source.write_bytes(f"{clip_id}{suffix}".encode())
        output[name] = storage.put_file(source, object_key(clip_id, suffix))
    assert clips.record_output(clip_id, output)
    db.session.remove()
    return output


def _reuse(service, clip_id: str):
    from clipqueue import clips, tasks

    return tasks._copy_of_identical(clip_id, tasks.clip_fingerprint(clips.get(clip_id)),
                                    service.app.config["CLIPQUEUE"], lambda: None)


def test_a_twin_copies_the_stored_files_of_the_clip_cut_first_under_its_own_keys(service_factory):
    service = service_factory(IDENTICAL_CLIP_WAIT_SECONDS="1")
    first, second = _twins(service, 2)
    with service.app.app_context():
        assert _reuse(service, first) is None  # nobody cut it yet: this job cuts, and is named for it
        output = _store(service, first)
        copied = _reuse(service, second)
    media = Path(service.env["STORAGE_LOCAL_DIR"]) / "clips"
    assert copied["video_url"].endswith(f"clips/{second}.mp4") and copied["thumbnail_url"].endswith(f"{second}.jpg")
    assert {k: v for k, v in copied.items() if not k.endswith("_url")} == \
        {k: v for k, v in output.items() if not k.endswith("_url")}
    # Its own files: the first clip's going (a cancel) leaves them.
    (media / f"{first}.mp4").unlink()
    assert (media / f"{second}.mp4").read_bytes() == f"{first}.mp4".encode()


def test_a_twin_cuts_itself_when_the_clip_cut_first_failed_or_lost_its_files(service_factory):
    from clipqueue import clips

    service = service_factory(IDENTICAL_CLIP_WAIT_SECONDS="1")
    first, second, third = _twins(service, 3)
    with service.app.app_context():
        assert _reuse(service, first) is None
        clips.mark_failed(first, "source answered 404", code="source_not_found", attempts=1)
        assert _reuse(service, second) is None  # the cut is handed over...
        _store(service, second)
        (Path(service.env["STORAGE_LOCAL_DIR"]) / "clips" / f"{second}.mp4").unlink()
        assert _reuse(service, third) is None  # ...and again when the files are gone
    named = redis.Redis.from_url(service.env["REDIS_URL"], decode_responses=True)
    keys = list(named.scan_iter("clipqueue:identical-clip:*"))
    assert len(keys) == 1 and named.get(keys[0]) == third


def test_a_twin_waits_for_a_running_cut_only_so_long_and_other_requests_are_not_twins(service_factory):
    import time

    from clipqueue.keys import lease_key

    service = service_factory(IDENTICAL_CLIP_WAIT_SECONDS="1")
    first, second = _twins(service, 2)
    [other_mode] = _twins(service, 1, mode="copy")
    [other_range] = _twins(service, 1, end_time=9.5)
    with service.app.app_context():
        assert _reuse(service, first) is None
        redis.Redis.from_url(service.env["REDIS_URL"]).set(lease_key(first), "worker", px=10_000)  # running
        began = time.monotonic()
        assert _reuse(service, second) is None  # still being cut after the wait: cut it here too
        assert 1 <= time.monotonic() - began < 5
        _store(service, first)
        assert _reuse(service, other_mode) is None and _reuse(service, other_range) is None
        from clipqueue import clips, tasks

        channel = clips.get(first)
        channel.vod_url = "https://www.twitch.tv/somestreamer"
        assert tasks.clip_fingerprint(channel) is None  # a live channel's times move with its broadcasts
