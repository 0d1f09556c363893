"""Cancel: a queued job never starts, a running one stops within seconds, nothing of it is kept."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from clipqueue.storage import OBJECT_SUFFIXES
from samplevod.server import serve_directory
from tests.services import wait_until
from tests.test_webhooks import metric_samples

pytestmark = pytest.mark.e2e


def ffmpeg_processes(session_id: int) -> list[int]:
    """FFmpeg and ffprobe processes of the worker started in session ``session_id`` (its own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            if os.getsid(int(entry.name)) == session_id and any(
                    Path(part.decode(errors="replace")).name in ("ffmpeg", "ffprobe") for part in command):
                found.append(int(entry.name))
        except (OSError, ProcessLookupError):
            continue
    return found


def stored_files(service) -> list[Path]:
    root = Path(service.env["STORAGE_LOCAL_DIR"])
    return sorted(path for path in root.rglob("*") if path.is_file()) if root.exists() else []


def scratch_entries(service) -> list[Path]:
    return list(Path(service.env["SCRATCH_DIR"]).iterdir())


@pytest.fixture
def slow_progressive(tmp_path_factory):
    """A progressive MP4 behind a slow link: FFmpeg reads it through the worker's relay for many seconds."""
    from samplevod.vod import generate_progressive_mp4

    root = tmp_path_factory.mktemp("progressive")
    generate_progressive_mp4(root / "source.mp4", duration=12, width=320, height=180)
    server = serve_directory(root, connection_bandwidth=40_000)
    yield f"{server.url}/source.mp4"
    server.stop()


def test_canceled_queued_job_never_starts_and_a_second_cancel_is_a_harmless_409(service_factory, master_url):
    service = service_factory()
    clip_id = service.create_clip(vod_url=master_url, start_time=10, end_time=12).get_json()["clip_id"]
    response = service.client.post(f"/api/v1/clips/{clip_id}/cancel")
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["status"] == "canceled"
    assert service.job(clip_id)["status"] == "canceled"

    worker = service.start_worker()
    wait_until(lambda: "already canceled; nothing to do" in worker.log(), 30, what="the job dropped")
    assert service.clip(clip_id)["status"] == "canceled"
    job = service.job(clip_id)
    assert job["status"] == "canceled" and job.get("started_at") is None
    assert stored_files(service) == []

    again = service.client.post(f"/api/v1/clips/{clip_id}/cancel")
    assert again.status_code == 409
    assert again.get_json()["error"]["code"] == "not_cancelable"
    assert service.client.post(f"/api/v1/clips/{'0' * 32}/cancel").status_code == 404
    assert metric_samples(service, "clipqueue_jobs_total")[("outcome", "canceled")] == 1


def test_finished_clip_cannot_be_canceled(service_factory, master_url):
    service = service_factory()
    service.start_worker()
    created = service.create_clip(vod_url=master_url, start_time=10, end_time=12, mode="copy")
    clip_id = created.get_json()["clip_id"]
    assert service.wait_for_clip(clip_id)["status"] == "ready"
    response = service.client.post(f"/api/v1/clips/{clip_id}/cancel")
    assert response.status_code == 409
    assert "ready" in response.get_json()["error"]["message"]
    assert service.clip(clip_id)["status"] == "ready"


def test_canceled_running_job_stops_within_seconds_its_ffmpeg_killed_scratch_removed_nothing_stored(
        service_factory, slow_progressive):
    service = service_factory(FETCH_TIMEOUT_SECONDS="5")
    worker = service.start_worker()
    clip_id = service.create_clip(vod_url=slow_progressive, start_time=2, end_time=8).get_json()["clip_id"]
    session = worker.process.pid  # started in a session of its own
    wait_until(lambda: ffmpeg_processes(session), 60, interval=0.2, what="the job's FFmpeg to run")
    assert scratch_entries(service), "the job works in a scratch folder"

    canceled_at = time.monotonic()
    response = service.client.post(f"/api/v1/clips/{clip_id}/cancel")
    assert response.status_code == 202 and response.get_json()["status"] == "canceled"
    wait_until(lambda: not ffmpeg_processes(session) and not scratch_entries(service), 10, interval=0.1,
               what="the job's FFmpeg and scratch folder to go")
    stopped_in = time.monotonic() - canceled_at
    wait_until(lambda: "job stopped: the clip was canceled" in worker.log(), 10, what="the job to stop")

    print(f"\ncancel: the job's FFmpeg and scratch folder gone {stopped_in:.2f} s after the cancel")
    assert stopped_in < 5, f"the job took {stopped_in:.1f} s to stop"
    assert service.clip(clip_id)["status"] == "canceled"
    assert service.job(clip_id)["status"] == "canceled"
    assert stored_files(service) == []
    time.sleep(1)  # a late finalize would come now: it must not make the clip ready
    assert service.clip(clip_id)["status"] == "canceled" and service.clip(clip_id)["video_url"] is None


def test_late_finalize_never_turns_a_canceled_clip_ready(service_factory, master_url):
    from clipqueue import clips

    service = service_factory()
    clip_id = service.create_clip(vod_url=master_url, start_time=10, end_time=12).get_json()["clip_id"]
    assert service.client.post(f"/api/v1/clips/{clip_id}/cancel").status_code == 202
    with service.app.app_context():
        output = {"video_url": "http://clips.test/media/x.mp4", "thumbnail_url": None}
        assert clips.record_output(clip_id, output) is False
        assert clips.mark_ready(clip_id, output) is False
    assert service.clip(clip_id)["status"] == "canceled"


def test_files_stored_before_a_cancel_are_deleted_by_the_late_finalize(service_factory, master_url):
    import boto3

    from clipqueue import clips
    from clipqueue.queue import send_finalize

    service = service_factory(storage="s3")
    s3 = boto3.client("s3", endpoint_url=service.env["S3_ENDPOINT_URL"])
    bucket = service.env["S3_BUCKET"]
    clip_id = service.create_clip(vod_url=master_url, start_time=10, end_time=12).get_json()["clip_id"]
    # What a job that stored its files and kept its output, just before the cancel, leaves behind.
    for suffix in OBJECT_SUFFIXES.values():  # the clip, its pictures and its portrait version
        s3.put_object(Bucket=bucket, Key=f"clips/{clip_id}{suffix}", Body=b"stored")
    with service.app.app_context():
        output = {"video_url": f"http://s3/clips/{clip_id}.mp4", "thumbnail_url": None}
        assert clips.record_output(clip_id, output)
    assert service.client.post(f"/api/v1/clips/{clip_id}/cancel").status_code == 202

    service.start_worker(queues="clipqueue_control")
    with service.app.app_context():
        send_finalize(clip_id)
    wait_until(lambda: not s3.list_objects_v2(Bucket=bucket).get("KeyCount"), 30, what="stored files gone")
    clip = service.clip(clip_id)
    assert clip["status"] == "canceled" and clip["video_url"] is None
