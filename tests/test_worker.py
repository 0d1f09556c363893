"""The Procfile's worker: control work (finalizing, maintenance) has slots of its own beside clip jobs."""

from __future__ import annotations

import pytest
import redis

from samplevod.server import serve_directory
from tests.services import wait_until
from tests.test_scripts import procfile_process

pytestmark = pytest.mark.e2e


def test_finalizing_does_not_wait_behind_a_long_job(service_factory, vod_dir, master_url):
    slow = serve_directory(vod_dir, connection_bandwidth=60_000)
    service = service_factory(LEASE_TTL_SECONDS="3", JANITOR_INTERVAL_SECONDS="1")
    client = redis.Redis.from_url(service.env["REDIS_URL"])
    try:
        # A clip whose files are stored but whose finalizing message was lost.
        jobs_only = service.start_worker("jobs-only", queues="clip_extraction_jobs")
        stored = service.create_clip(vod_url=master_url, start_time=1, end_time=4).get_json()["clip_id"]
        wait_until(lambda: service.job(stored).get("stage") == "finalizing", 60, what="the output to be stored")
        wait_until(lambda: client.llen("clipqueue_control") == 1, 30, what="finalizing to be queued")
        client.delete("clipqueue_control")
        jobs_only.stop()

        # The Procfile's worker with one job slot, busy with a long clip.
        env = {**service.env, "WORKER_CONCURRENCY": "1"}
        with procfile_process("worker", env, service.workdir / "procfile-worker.log") as worker:
            long = service.create_clip(vod_url=f"{slow.url}/hls/master.m3u8", start_time=2,
                                       end_time=22).get_json()["clip_id"]
            wait_until(lambda: service.job(long).get("status") == "running", 60, what="the long job to start")
            service.start_beat()

            # The janitor and finalizing run beside the long job, not after it.
            assert service.wait_for_clip(stored, timeout=60)["status"] == "ready"
            assert service.clip(long)["status"] == "processing"
            assert service.wait_for_clip(long, timeout=180)["status"] == "ready"
            assert worker.poll() is None
    finally:
        slow.stop()


def test_the_procfile_worker_stops_both_its_workers_on_term(service_factory, tmp_path):
    import os
    import signal
    import subprocess

    service = service_factory()
    log = tmp_path / "worker.log"
    with procfile_process("worker", service.env, log) as worker:
        wait_until(lambda: log.read_text(errors="replace").count("ready.") == 2, 60, what="both workers to start")
        children = subprocess.run(["pgrep", "-g", str(worker.pid), "-f", "celery"], capture_output=True,
                                  text=True).stdout.split()
        assert children
        os.killpg(worker.pid, signal.SIGTERM)  # as honcho or a container runtime stops it
        wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in children), 60,
                   what="both Celery workers to stop")
    assert log.read_text().count("Warm shutdown") >= 2
