"""Jobs are never lost and never done twice: real worker processes killed, Redis and S3 cut."""

from __future__ import annotations

import os
import random
import signal
import time

import boto3
import pytest
import redis

from clipqueue.keys import DEAD_LETTER_QUEUE
from clipqueue.queue import job_list
from samplevod.server import serve_directory
from tests.services import RedisServer, free_port, wait_until

# The Redis list where a normal job waits (kombu's list for its priority step, behind clip_extraction_jobs).
NORMAL_JOBS = job_list("normal")

pytestmark = pytest.mark.e2e

# Short bounds through settings, never by mocking: a lost worker is noticed
# after LEASE_TTL_SECONDS and re-queued by the janitor within a second more.
FAST_RECOVERY = {
    "LEASE_TTL_SECONDS": "3",
    "JANITOR_INTERVAL_SECONDS": "1",
    "VISIBILITY_TIMEOUT_SECONDS": "120",
    "WORKER_HEARTBEAT_SECONDS": "1",
    "WORKER_HEARTBEAT_MAX_AGE_SECONDS": "3",
}


@pytest.fixture
def slow_vod(vod_dir):
    """The test VOD behind a slow link: fetching one clip takes a few seconds."""
    server = serve_directory(vod_dir, connection_bandwidth=120_000)
    yield f"{server.url}/hls/master.m3u8"
    server.stop()


def stored_keys(service) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=service.env["S3_ENDPOINT_URL"])
    listing = s3.list_objects_v2(Bucket=service.env["S3_BUCKET"])
    return sorted(obj["Key"] for obj in listing.get("Contents", []))


def versioned(service) -> None:
    """Keep every upload to the service's bucket, so a test can count how often a clip was stored."""
    s3 = boto3.client("s3", endpoint_url=service.env["S3_ENDPOINT_URL"])
    s3.put_bucket_versioning(Bucket=service.env["S3_BUCKET"], VersioningConfiguration={"Status": "Enabled"})


def clip_objects(clip_id: str) -> list[str]:
    """The keys a 640x360 clip stores: the clip, its thumbnail, thumbnails (large is medium) and preview."""
    suffixes = (".mp4", ".jpg", "-small.jpg", "-medium.jpg", "-preview.mp4")
    return sorted(f"clips/{clip_id}{suffix}" for suffix in suffixes)


def uploads(service, clip_id: str) -> int:
    """How many times the clip's video was uploaded (the bucket must be ``versioned``)."""
    s3 = boto3.client("s3", endpoint_url=service.env["S3_ENDPOINT_URL"])
    key = f"clips/{clip_id}.mp4"
    listing = s3.list_object_versions(Bucket=service.env["S3_BUCKET"], Prefix=key)
    return sum(version["Key"] == key for version in listing.get("Versions", []))


def clip_row(service, clip_id: str):
    """The clip as the database holds it, with the columns the API does not show."""
    import uuid

    from clipqueue.models import Clip, db

    with service.app.app_context():
        clip = db.session.get(Clip, uuid.UUID(clip_id))
        db.session.expunge(clip)
        return clip


def wait_for_stage(service, clip_id: str, statuses=("running",), timeout: float = 60) -> dict:
    return wait_until(
        lambda: (job := service.job(clip_id)).get("status") in statuses and job,
        timeout, interval=0.1, what=f"job {clip_id} to reach {statuses}",
    )


def test_sigkilled_worker_job_runs_again_and_is_finalized_once(service_factory, slow_vod):
    service = service_factory(storage="s3", **FAST_RECOVERY)
    versioned(service)
    victim = service.start_worker("victim")
    clip_id = service.create_clip(vod_url=slow_vod, start_time=12.4, end_time=27.4).get_json()["clip_id"]
    assert wait_for_stage(service, clip_id)["worker"].startswith("victim@")

    # Killed at once: starting other processes first let the victim finish the clip on a busy machine.
    killed_at = time.monotonic()
    victim.signal_group(signal.SIGKILL)
    service.start_worker("survivor")
    service.start_beat()

    clip = service.wait_for_clip(clip_id, timeout=300)
    recovered_in = time.monotonic() - killed_at
    assert clip["status"] == "ready", clip
    job = service.job(clip_id)
    assert job["worker"].startswith("survivor@")
    assert job["redeliveries"] == 1 and job["status"] == "completed"
    assert stored_keys(service) == clip_objects(clip_id)
    assert uploads(service, clip_id) == 1
    # The recovery bound the issue asks for: about two minutes at most.
    assert recovered_in < 120


def test_term_lets_the_job_in_flight_finish(service_factory, slow_vod):
    service = service_factory(storage="s3")
    versioned(service)
    worker = service.start_worker("leaving")
    clip_id = service.create_clip(vod_url=slow_vod, start_time=2.0, end_time=17.0).get_json()["clip_id"]
    wait_for_stage(service, clip_id)

    os.kill(worker.process.pid, signal.SIGTERM)  # warm shutdown, as a deploy would
    assert worker.process.wait(120) == 0
    assert f"Task clipqueue.process_clip[clip-{clip_id}-extract" in worker.log()
    assert "succeeded" in worker.log()
    # The finalizing step waits for any worker; the job is not started again.
    service.start_worker("next")
    clip = service.wait_for_clip(clip_id)
    assert clip["status"] == "ready"
    job = service.job(clip_id)
    assert job["deliveries"] == 1 and job["worker"].startswith("leaving@")
    assert uploads(service, clip_id) == 1


def test_same_job_delivered_twice_at_once_runs_once(service_factory, slow_vod):
    from clipqueue.queue import send_job

    service = service_factory(storage="s3")
    versioned(service)
    clip_id = service.create_clip(vod_url=slow_vod, start_time=30.5, end_time=40.5).get_json()["clip_id"]
    with service.app.app_context():
        send_job(clip_id)  # the same job a second time, as a redelivery would
    service.start_worker("one")
    service.start_worker("two")

    clip = service.wait_for_clip(clip_id)
    assert clip["status"] == "ready"
    # Started once (the copy found the lease held or the clip done), stored once.
    assert clip_row(service, clip_id).deliveries == 1
    assert uploads(service, clip_id) == 1
    assert stored_keys(service) == clip_objects(clip_id)


def test_worker_that_lost_its_lease_stops_and_the_job_is_stored_once(service_factory, slow_vod):
    from clipqueue.keys import lease_key

    service = service_factory(storage="s3", **FAST_RECOVERY)
    versioned(service)
    service.start_worker("stalled")
    clip_id = service.create_clip(vod_url=slow_vod, start_time=12.4, end_time=27.4).get_json()["clip_id"]
    wait_for_stage(service, clip_id)
    # Another delivery takes the lease over, as after a stall longer than the lease TTL.
    client = redis.Redis.from_url(service.env["REDIS_URL"])
    client.set(lease_key(clip_id), "another-delivery", px=4000)
    service.start_beat()

    clip = service.wait_for_clip(clip_id, timeout=180)
    assert clip["status"] == "ready", clip
    assert uploads(service, clip_id) == 1
    assert clip_row(service, clip_id).deliveries == 2


def test_delivery_after_the_output_is_stored_finalizes_instead_of_redoing(service_factory, slow_vod):
    from clipqueue.queue import send_job

    service = service_factory(storage="s3")
    versioned(service)
    # Only clip jobs are taken: finalizing waits in its queue.
    service.start_worker("jobs", queues="clip_extraction_jobs")
    clip_id = service.create_clip(vod_url=slow_vod, start_time=2.0, end_time=12.0).get_json()["clip_id"]
    wait_until(lambda: clip_row(service, clip_id).output is not None, 120, what="the output to be stored")
    wait_until(lambda: not redis.Redis.from_url(service.env["REDIS_URL"]).exists(f"clip_extraction_lease:{clip_id}"),
               30, what="the lease to be released")
    with service.app.app_context():
        send_job(clip_id)  # a late duplicate, after the holder released the lease
    wait_until(lambda: redis.Redis.from_url(service.env["REDIS_URL"]).llen(NORMAL_JOBS) == 0, 30,
               what="the duplicate to be taken")
    service.start_worker("control", queues="clipqueue_control")

    clip = service.wait_for_clip(clip_id)
    assert clip["status"] == "ready"
    assert uploads(service, clip_id) == 1
    assert clip_row(service, clip_id).deliveries == 1


def test_lost_finalize_is_sent_again_by_the_janitor(service_factory, slow_vod):
    service = service_factory(storage="s3", **FAST_RECOVERY)
    versioned(service)
    service.start_worker("jobs", queues="clip_extraction_jobs")
    clip_id = service.create_clip(vod_url=slow_vod, start_time=2.0, end_time=12.0).get_json()["clip_id"]
    wait_until(lambda: clip_row(service, clip_id).output is not None, 120, what="the output to be stored")
    client = redis.Redis.from_url(service.env["REDIS_URL"])
    wait_until(lambda: client.llen("clipqueue_control") == 1, 30, what="finalizing to be queued")
    client.delete("clipqueue_control")  # the finalizing message is lost
    service.start_worker("control", queues="clipqueue_control")
    service.start_beat()

    clip = service.wait_for_clip(clip_id, timeout=60)
    assert clip["status"] == "ready", clip
    assert uploads(service, clip_id) == 1
    assert service.job(clip_id)["status"] == "completed"


@pytest.fixture
def own_s3(service_factory):
    """A private S3 API server the test may stop and start again on the same port."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    state = {"server": None}

    def start():
        state["server"] = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        state["server"].start()

    def stop():
        state["server"].stop()

    start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="outage")
    yield endpoint, start, stop
    try:
        stop()
    except Exception:
        pass


def test_storage_outage_within_retry_budget_is_retried_to_ready(service_factory, master_url, own_s3):
    endpoint, start_s3, stop_s3 = own_s3
    service = service_factory(S3_BUCKET="outage", S3_ENDPOINT_URL=endpoint, JOB_MAX_RETRIES="6",
                              JOB_RETRY_BACKOFF_SECONDS="1", JOB_RETRY_BACKOFF_MAX_SECONDS="2")
    service.start_worker()
    stop_s3()
    clip_id = service.create_clip(vod_url=master_url, start_time=5, end_time=9).get_json()["clip_id"]
    job = wait_for_stage(service, clip_id, statuses=("retrying",))
    assert "object store" in job["error"]
    start_s3()

    clip = service.wait_for_clip(clip_id)
    assert clip["status"] == "ready", clip
    job = service.job(clip_id)
    assert job["attempts"] >= 2 and job["status"] == "completed"
    assert service.client.get("/api/v1/queue").get_json()["dead_letter"] == 0


def test_storage_outage_past_retry_budget_dead_letters_then_replay_succeeds(
    service_factory, master_url, own_s3
):
    endpoint, start_s3, stop_s3 = own_s3
    service = service_factory(S3_BUCKET="outage", S3_ENDPOINT_URL=endpoint, JOB_MAX_RETRIES="2")
    service.start_worker()
    stop_s3()
    clip_id = service.create_clip(vod_url=master_url, start_time=5, end_time=9).get_json()["clip_id"]

    clip = service.wait_for_clip(clip_id)
    assert clip["status"] == "failed" and "object store" in clip["error"]
    letters = service.client.get("/api/v1/dead-letter").get_json()["jobs"]
    assert [(entry["clip_id"], entry["attempts"]) for entry in letters] == [(clip_id, 3)]
    assert letters[0]["traceback"]

    start_s3()
    first = service.client.post(f"/api/v1/dead-letter/{clip_id}/replay")
    second = service.client.post(f"/api/v1/dead-letter/{clip_id}/replay")
    assert (first.status_code, first.get_json()["replayed"]) == (202, True)
    assert (second.status_code, second.get_json()["replayed"]) == (200, False)
    clip = service.wait_for_clip(clip_id)
    assert clip["status"] == "ready" and clip["error"] is None
    assert service.client.get("/api/v1/queue").get_json() == {**service.client.get("/api/v1/queue").get_json(),
                                                             "dead_letter": 0, "pending": 0}


def _start_clips(service, url: str, count: int) -> list[str]:
    return [
        service.create_clip(vod_url=url, start_time=2.0 + 5 * i, end_time=6.0 + 5 * i).get_json()["clip_id"]
        for i in range(count)
    ]


def _lose_redis_state(private: RedisServer, how: str) -> None:
    if how == "flushall":
        redis.Redis.from_url(private.url(0)).flushall()
        return
    private.stop()
    time.sleep(1)
    private.start()


@pytest.mark.parametrize("appendonly, how", [(True, "restart"), (False, "restart"), (False, "flushall")],
                         ids=["aof-restart", "empty-restart", "flushall"])
def test_redis_losing_its_state_with_jobs_queued_and_running_loses_none(service_factory, vod_dir, tmp_path,
                                                                        appendonly, how):
    private = RedisServer(tmp_path / "redis", appendonly=appendonly)
    private.start()
    server = serve_directory(vod_dir, connection_bandwidth=400_000)
    slow_vod = f"{server.url}/hls/master.m3u8"
    try:
        service = service_factory(storage="s3", redis=private.url(0), **FAST_RECOVERY)
        versioned(service)
        service.start_worker("w1")
        service.start_beat()
        clip_ids = _start_clips(service, slow_vod, 4)
        wait_for_stage(service, clip_ids[0])

        lost_at = time.monotonic()
        _lose_redis_state(private, how)
        # Every job is accounted for again: metadata back in Redis (queued again, or written by its worker).
        wait_until(lambda: all(service.job(c).get("status") for c in clip_ids), 60, interval=0.2,
                   what="every job to be known to Redis again")
        known_again = time.monotonic() - lost_at

        clips = [service.wait_for_clip(clip_id, timeout=180) for clip_id in clip_ids]
        all_ready = time.monotonic() - lost_at
        print(f"\nredis {how} (appendonly={appendonly}): jobs known again after {known_again:.1f} s, "
              f"all {len(clip_ids)} clips ready {all_ready:.1f} s after the loss")
        assert [clip["status"] for clip in clips] == ["ready"] * 4, clips
        assert stored_keys(service) == sorted(key for c in clip_ids for key in clip_objects(c))
        assert [uploads(service, clip_id) for clip_id in clip_ids] == [1] * 4
        assert known_again < 30
    finally:
        private.stop()
        server.stop()


def test_soak_jobs_with_workers_killed_at_random(service_factory, master_url):
    """SOAK_JOBS clips (200 in a full run), two workers, a worker SIGKILLed three times."""
    total = int(os.environ.get("SOAK_JOBS", "40"))
    rng = random.Random(int(os.environ.get("SOAK_SEED", "7")))
    service = service_factory(storage="s3", **FAST_RECOVERY)
    workers = [service.start_worker("soak1"), service.start_worker("soak2")]
    service.start_beat()
    began = time.monotonic()
    clip_ids = [
        service.create_clip(vod_url=master_url, start_time=(i % 50) + 0.5, end_time=(i % 50) + 2.5,
                            mode="copy").get_json()["clip_id"]
        for i in range(total)
    ]
    kills = 0
    for fraction in (0.2, 0.45, 0.7):
        done = lambda: sum(service.clip(c)["status"] != "processing" for c in clip_ids)  # noqa: E731
        wait_until(lambda: done() >= fraction * total, 300, interval=0.5, what="soak progress")
        victim = rng.choice(workers)
        victim.signal_group(signal.SIGKILL)
        victim.stop()
        kills += 1
        victim.start()

    clips = [service.wait_for_clip(clip_id, timeout=300) for clip_id in clip_ids]
    elapsed = time.monotonic() - began
    tally = {status: sum(c["status"] == status for c in clips) for status in ("ready", "failed", "processing")}
    keys = stored_keys(service)
    dead = redis.Redis.from_url(service.env["REDIS_URL"]).llen(DEAD_LETTER_QUEUE)
    print(f"\nsoak: {total} jobs, {kills} kills, {tally}, {len(keys)} objects, "
          f"dead letters {dead}, {elapsed:.1f} s")
    assert tally["ready"] == total
    assert keys == sorted(key for clip_id in clip_ids for key in clip_objects(clip_id))
    assert dead == 0


def test_database_connection_dropped_before_finalize_is_retried_and_finalized_once(service_factory, slow_vod):
    import psycopg2

    from tests.services import POSTGRES_ADMIN_URL

    service = service_factory(db="postgres", storage="s3", JOB_MAX_RETRIES="8")
    versioned(service)
    database = service.env["DATABASE_URL"].rsplit("/", 1)[1]
    admin = psycopg2.connect(POSTGRES_ADMIN_URL)
    admin.autocommit = True

    def set_connections(allowed: bool) -> None:
        with admin.cursor() as cursor:
            cursor.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS {str(allowed).lower()}')
            if not allowed:
                cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                               (database,))

    try:
        service.start_worker()
        clip_id = service.create_clip(vod_url=slow_vod, start_time=3, end_time=13).get_json()["clip_id"]
        wait_for_stage(service, clip_id)
        # The worker's connections are cut and new ones refused while it extracts.
        set_connections(False)
        job = wait_for_stage(service, clip_id, statuses=("retrying",), timeout=90)
        assert "database unavailable" in job["error"]
        set_connections(True)

        clip = service.wait_for_clip(clip_id)
        assert clip["status"] == "ready"
        assert uploads(service, clip_id) == 1
    finally:
        set_connections(True)
        admin.close()


def _cli(service, *args: str) -> str:
    import subprocess
    import sys

    from tests.services import REPO

    result = subprocess.run([sys.executable, "-m", "clipqueue", "dead-letter", *args],
                            env={**os.environ, **service.env}, cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


# A source that keeps answering 503: retries run out and the job is dead-lettered quickly.
DOWN_SOURCE = {"JOB_MAX_RETRIES": "1", "FETCH_RETRIES": "0"}


def test_operator_inspects_replays_all_and_purges_dead_letters(service_factory, vod_dir):
    import json
    import uuid

    server = serve_directory(vod_dir, fail_first={"/hls/master.m3u8": 10**6})
    url = f"{server.url}/hls/master.m3u8"
    try:
        service = service_factory(**DOWN_SOURCE)
        service.start_worker()
        clip_ids = []
        for start in (1, 20):
            clip_ids.append(service.create_clip(vod_url=url, start_time=start, end_time=start + 3).get_json()["clip_id"])
            assert service.wait_for_clip(clip_ids[-1])["status"] == "failed"

        shown = service.client.get(f"/api/v1/dead-letter/{clip_ids[0]}").get_json()
        assert shown["clip_id"] == clip_ids[0] and "503" in shown["error"] and shown["traceback"]
        assert service.client.get(f"/api/v1/dead-letter/{uuid.uuid4()}").status_code == 404
        listed = [json.loads(line)["clip_id"] for line in _cli(service, "list").splitlines()]
        assert listed == clip_ids
        assert json.loads(_cli(service, "show", clip_ids[1]))["traceback"]

        server.behaviour.fail_first.clear()  # the source is fixed
        replayed = service.client.post("/api/v1/dead-letter/replay")
        assert replayed.status_code == 202 and sorted(replayed.get_json()["replayed"]) == sorted(clip_ids)
        assert [service.wait_for_clip(c)["status"] for c in clip_ids] == ["ready", "ready"]
        assert service.client.post("/api/v1/dead-letter/replay").get_json()["count"] == 0

        server.behaviour.fail_first["/hls/master.m3u8"] = 10**6
        doomed = service.create_clip(vod_url=url, start_time=5, end_time=8).get_json()["clip_id"]
        assert service.wait_for_clip(doomed)["status"] == "failed"
        assert _cli(service, "purge", "--yes").strip() == "purged 1 job(s)"
        assert service.client.get("/api/v1/queue").get_json()["dead_letter"] == 0
        assert service.clip(doomed)["status"] == "failed"
        assert service.client.delete("/api/v1/dead-letter").get_json() == {"purged": 0}
    finally:
        server.stop()


def test_dead_letters_survive_a_redis_that_restarts_empty(service_factory, vod_dir, tmp_path):
    private = RedisServer(tmp_path / "redis")
    private.start()
    server = serve_directory(vod_dir, fail_first={"/hls/master.m3u8": 10**6})
    try:
        service = service_factory(redis=private.url(0), **DOWN_SOURCE, **FAST_RECOVERY)
        service.start_worker()
        clip_id = service.create_clip(vod_url=f"{server.url}/hls/master.m3u8", start_time=1,
                                      end_time=4).get_json()["clip_id"]
        assert service.wait_for_clip(clip_id)["status"] == "failed"
        service.stop()

        private.stop()  # no persistence: it comes back empty
        private.start()
        letters = service.client.get("/api/v1/dead-letter").get_json()["jobs"]
        assert [(entry["clip_id"], entry["attempts"]) for entry in letters] == [(clip_id, 2)]
        assert service.client.get("/api/v1/queue").get_json()["dead_letter"] == 1
        # The janitor rebuilds the Redis list from the database.
        service.start_worker()
        service.start_beat()
        client = redis.Redis.from_url(private.url(0))
        wait_until(lambda: client.llen(DEAD_LETTER_QUEUE) == 1, 30, what="the dead-letter list to be rebuilt")

        server.behaviour.fail_first.clear()
        assert service.client.post(f"/api/v1/dead-letter/{clip_id}/replay").status_code == 202
        assert service.wait_for_clip(clip_id)["status"] == "ready"
        wait_until(lambda: client.llen(DEAD_LETTER_QUEUE) == 0, 30, what="the dead letter to leave the list")
    finally:
        private.stop()
        server.stop()


def _ffmpeg_processes_using(folder) -> list[str]:
    import subprocess

    listing = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in listing.splitlines() if "ffmpeg" in line and str(folder) in line]


def test_soft_time_limit_fails_the_job_and_leaves_no_ffmpeg_or_files(service_factory, vod_dir, tmp_path):
    server = serve_directory(vod_dir, connection_bandwidth=40_000)
    scratch = tmp_path / "scratch-limited"
    scratch.mkdir()
    try:
        service = service_factory(JOB_SOFT_TIME_LIMIT_SECONDS="2", JOB_HARD_TIME_LIMIT_SECONDS="30",
                                  SCRATCH_DIR=str(scratch))
        service.start_worker()
        clip_id = service.create_clip(vod_url=f"{server.url}/hls/master.m3u8", start_time=5,
                                      end_time=25).get_json()["clip_id"]
        clip = service.wait_for_clip(clip_id, timeout=60)
        assert clip["status"] == "failed" and "time limit" in clip["error"]
        assert service.job(clip_id)["status"] == "failed"
        wait_until(lambda: not _ffmpeg_processes_using(scratch) and not list(scratch.iterdir()), 30,
                   what="ffmpeg and scratch files to be gone")
    finally:
        server.stop()


def test_job_killed_at_its_hard_time_limit_fails_with_time_limit_not_worker_lost(service_factory, vod_dir):
    server = serve_directory(vod_dir, connection_bandwidth=40_000)
    try:
        # No soft limit: the hard limit kills the pool process (as for a job stuck where no signal reaches).
        service = service_factory(JOB_SOFT_TIME_LIMIT_SECONDS="0", JOB_HARD_TIME_LIMIT_SECONDS="4",
                                  **FAST_RECOVERY)
        service.start_worker()
        clip_id = service.create_clip(vod_url=f"{server.url}/hls/master.m3u8", start_time=5,
                                      end_time=25).get_json()["clip_id"]
        clip = service.wait_for_clip(clip_id, timeout=60)
        assert clip["status"] == "failed" and "time limit" in clip["error"], clip
        assert clip_row(service, clip_id).failure_code == "time_limit"
        assert clip_row(service, clip_id).deliveries == 1  # not run again as if its worker were lost
        assert "Hard time limit (4" in service.worker_logs()
    finally:
        server.stop()


def _pool_children(worker) -> list[int]:
    import subprocess

    out = subprocess.run(["ps", "--ppid", str(worker.process.pid), "-o", "pid="], capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split()]


def test_job_that_keeps_killing_its_worker_is_dead_lettered_after_the_cap(service_factory, slow_vod):
    # JOB_MAX_RETRIES=0 and MAX_REDELIVERIES=1: a job may start twice, the third start gives up.
    service = service_factory(JOB_MAX_RETRIES="0", MAX_REDELIVERIES="1", **FAST_RECOVERY)
    worker = service.start_worker()
    clip_id = service.create_clip(vod_url=slow_vod, start_time=12.4, end_time=27.4).get_json()["clip_id"]
    for start in (1, 2):
        wait_until(lambda: (job := service.job(clip_id)).get("status") == "running"
                   and job.get("deliveries") == start, 60, interval=0.1, what=f"start {start}")
        # The pool process dies mid-job, as it would if ffmpeg's parent crashed.
        for pid in _pool_children(worker):
            os.kill(pid, signal.SIGKILL)

    clip = service.wait_for_clip(clip_id, timeout=90)
    assert clip["status"] == "failed" and "giving up" in clip["error"], clip
    job = service.job(clip_id)
    assert job["status"] == "failed" and job["deliveries"] == 3
    assert clip_row(service, clip_id).deliveries == 3
    letters = service.client.get("/api/v1/dead-letter").get_json()["jobs"]
    assert [entry["clip_id"] for entry in letters] == [clip_id]


def test_backlog_older_than_the_processing_deadline_waits_and_is_not_failed(service_factory, master_url):
    service = service_factory(PROCESSING_DEADLINE_SECONDS="2", **FAST_RECOVERY)
    # Only maintenance runs: nobody takes clip jobs yet, as in a backlog.
    service.start_worker("maintenance", queues="clipqueue_control")
    service.start_beat()
    clip_id = service.create_clip(vod_url=master_url, start_time=1, end_time=4).get_json()["clip_id"]
    client = redis.Redis.from_url(service.env["REDIS_URL"])
    time.sleep(6)  # several janitor rounds, each past the deadline
    assert service.clip(clip_id)["status"] == "processing"
    assert service.job(clip_id)["status"] == "queued"
    assert client.llen(NORMAL_JOBS) == 1

    service.start_worker("late", queues="clip_extraction_jobs")
    clip = service.wait_for_clip(clip_id)
    assert clip["status"] == "ready", clip
    assert clip_row(service, clip_id).deliveries == 1


def test_queued_jobs_whose_messages_were_lost_are_queued_again_long_before_the_deadline(
    service_factory, master_url
):
    # The default PROCESSING_DEADLINE_SECONDS (an hour): the loss is found by looking, not by waiting.
    service = service_factory(**FAST_RECOVERY)
    clip_ids = _start_clips(service, master_url, 3)
    client = redis.Redis.from_url(service.env["REDIS_URL"])
    assert client.delete(NORMAL_JOBS) == 1  # lost, as with Redis' AOF fsync'ed every second
    lost_at = time.monotonic()
    service.start_worker("maintenance", queues="clipqueue_control")
    service.start_beat()

    wait_until(lambda: client.llen(NORMAL_JOBS) == 3, 30, interval=0.2,
               what="the jobs to be re-queued")
    print(f"\nlost queue messages re-queued {time.monotonic() - lost_at:.1f} s after the loss")
    service.start_worker("jobs", queues="clip_extraction_jobs")
    for clip_id in clip_ids:
        assert service.wait_for_clip(clip_id, timeout=60)["status"] == "ready"
        assert "message lost" in service.job(clip_id)["requeue_reason"]
        assert clip_row(service, clip_id).deliveries == 1


def test_job_message_held_by_a_killed_worker_is_queued_again_before_the_visibility_timeout(
    service_factory, master_url
):
    from clipqueue.keys import lease_key

    service = service_factory(**FAST_RECOVERY)
    client = redis.Redis.from_url(service.env["REDIS_URL"])
    clip_id = service.create_clip(vod_url=master_url, start_time=1, end_time=4).get_json()["clip_id"]
    # Another delivery holds the lease: the worker puts the job back with a countdown, again and again,
    # holding each message unacknowledged while it waits.
    client.set(lease_key(clip_id), "another-delivery", px=60_000)
    holder = service.start_worker("holder")
    wait_until(lambda: (service.job(clip_id).get("held_by") or "").startswith("holder@")
               and client.hlen("unacked"), 30, interval=0.2, what="the holder to hold the job's message")
    holder.signal_group(signal.SIGKILL)
    killed_at = time.monotonic()
    client.delete(lease_key(clip_id))
    service.start_worker("rescuer")
    service.start_beat()

    clip = service.wait_for_clip(clip_id, timeout=60)  # the visibility timeout is 120 s, or more
    print(f"\njob held by a killed worker ready {time.monotonic() - killed_at:.1f} s after the kill")
    assert clip["status"] == "ready", clip
    assert "message lost" in service.job(clip_id)["requeue_reason"]
    assert clip_row(service, clip_id).deliveries == 1


def test_replaying_a_dead_letter_older_than_the_deadline_is_not_failed_again(service_factory, vod_dir):
    server = serve_directory(vod_dir, fail_first={"/hls/master.m3u8": 10**6})
    try:
        service = service_factory(PROCESSING_DEADLINE_SECONDS="2", **DOWN_SOURCE, **FAST_RECOVERY)
        worker = service.start_worker("jobs", queues="clip_extraction_jobs")
        service.start_worker("maintenance", queues="clipqueue_control")
        clip_id = service.create_clip(vod_url=f"{server.url}/hls/master.m3u8", start_time=1,
                                      end_time=4).get_json()["clip_id"]
        assert service.wait_for_clip(clip_id)["status"] == "failed"
        worker.stop()
        time.sleep(3)  # the clip is now older than the deadline
        server.behaviour.fail_first.clear()
        assert service.client.post(f"/api/v1/dead-letter/{clip_id}/replay").status_code == 202
        service.start_beat()
        time.sleep(5)  # janitor rounds while the replayed job waits in the queue
        assert service.clip(clip_id)["status"] == "processing"

        worker.start()
        assert service.wait_for_clip(clip_id)["status"] == "ready"
    finally:
        server.stop()


def test_janitor_that_finds_another_running_does_nothing(service_factory, master_url):
    from clipqueue.keys import maintenance_lock_key

    service = service_factory(**FAST_RECOVERY)
    clip_id = service.create_clip(vod_url=master_url, start_time=1, end_time=4).get_json()["clip_id"]
    client = redis.Redis.from_url(service.env["REDIS_URL"])
    # A running job whose worker died: what a janitor would re-queue.
    client.hset(f"clip_extraction_job:{clip_id}", mapping={"status": "running", "updated_at": "2020-01-01T00:00:00Z"})
    client.delete(NORMAL_JOBS)
    celery = service.app.extensions["celery"]
    janitor = celery.tasks["clipqueue.janitor"]

    client.set(maintenance_lock_key("janitor"), "another-janitor", ex=60)
    with service.app.app_context():
        assert janitor() is None
    assert client.llen(NORMAL_JOBS) == 0 and clip_row(service, clip_id).redeliveries == 0

    client.delete(maintenance_lock_key("janitor"))
    with service.app.app_context():
        assert janitor() == {"requeued_worker_lost": 1}
    assert client.llen(NORMAL_JOBS) == 1 and clip_row(service, clip_id).redeliveries == 1


def test_janitor_tells_a_job_killed_at_its_time_limit_from_a_lost_worker(service_factory, master_url):
    from datetime import datetime, timedelta, timezone

    service = service_factory(JOB_HARD_TIME_LIMIT_SECONDS="4", JOB_SOFT_TIME_LIMIT_SECONDS="0",
                              **FAST_RECOVERY)
    killed, lost = (service.create_clip(vod_url=master_url, start_time=1, end_time=4).get_json()["clip_id"]
                    for _ in range(2))
    client = redis.Redis.from_url(service.env["REDIS_URL"])
    now = datetime.now(timezone.utc)

    def ago(seconds: float) -> str:
        return (now - timedelta(seconds=seconds)).isoformat()

    # Both ran and lost their lease; the one whose heartbeat went on until its hard limit was killed by it.
    for clip_id, last_beat in ((killed, ago(6.5)), (lost, ago(9.5))):
        client.hset(f"clip_extraction_job:{clip_id}", mapping={
            "status": "running", "started_at": ago(10), "updated_at": ago(10), "heartbeat_at": last_beat})
    janitor = service.app.extensions["celery"].tasks["clipqueue.janitor"]
    with service.app.app_context():
        assert janitor() == {"failed_time_limit": 1, "requeued_worker_lost": 1}
    assert service.clip(killed)["status"] == "failed" and "time limit" in service.clip(killed)["error"]
    assert clip_row(service, killed).failure_code == "time_limit"
    assert service.clip(lost)["status"] == "processing" and clip_row(service, lost).redeliveries == 1


def test_periodic_maintenance_expires_instead_of_piling_up(service_factory):
    service = service_factory(JANITOR_INTERVAL_SECONDS="15", OUTBOX_SWEEP_SECONDS="10")
    schedule = service.app.extensions["celery"].conf.beat_schedule
    assert schedule["janitor"]["options"]["expires"] == 15
    assert schedule["sweep-outbox"]["options"]["expires"] == 10


def test_visibility_timeout_outlasts_the_longest_job(service_factory):
    from clipqueue.celery_app import visibility_timeout

    service = service_factory(JOB_HARD_TIME_LIMIT_SECONDS="660", JOB_SOFT_TIME_LIMIT_SECONDS="600",
                              VISIBILITY_TIMEOUT_SECONDS="90")
    options = service.app.extensions["celery"].conf.broker_transport_options
    settings = service.app.config["CLIPQUEUE"]
    assert options["visibility_timeout"] == visibility_timeout(settings)
    # A job may wait for a slot behind another job, then run to its own hard limit.
    assert options["visibility_timeout"] > 2 * 660 + settings.job_retry_backoff_max_seconds


def test_transient_failures_of_ffmpeg_timeouts_and_the_broker_are_retried(service_factory):
    import subprocess

    from kombu.exceptions import OperationalError

    service = service_factory()
    task = service.app.extensions["celery"].tasks["clipqueue.process_clip"]
    assert issubclass(subprocess.TimeoutExpired, task.autoretry_for)
    assert issubclass(OperationalError, task.autoretry_for)


def test_retry_policy_comes_from_the_apps_own_settings(service_factory):
    one = service_factory(JOB_MAX_RETRIES="7", JOB_RETRY_BACKOFF_SECONDS="4")
    two = service_factory(JOB_MAX_RETRIES="1")
    first = one.app.extensions["celery"].tasks["clipqueue.process_clip"]
    second = two.app.extensions["celery"].tasks["clipqueue.process_clip"]
    assert (first.max_retries, first.retry_backoff) == (7, 4)
    assert second.max_retries == 1


def test_scratch_folders_left_by_killed_workers_are_swept(service_factory, master_url, tmp_path):
    scratch = tmp_path / "scratch-swept"
    stale = scratch / "clip-0000-left-by-a-killed-worker"
    fresh = scratch / "clip-1111-of-a-running-job"
    for folder in (stale, fresh):
        (folder / "extract-tmp").mkdir(parents=True)
        (folder / "extract-tmp" / "00000.seg").write_bytes(b"x" * 1000)
    old = time.time() - 3 * 3600
    os.utime(stale, (old, old))
    service = service_factory(SCRATCH_DIR=str(scratch), JOB_SOFT_TIME_LIMIT_SECONDS="60",
                              JOB_HARD_TIME_LIMIT_SECONDS="90")
    service.start_worker()
    clip_id = service.create_clip(vod_url=master_url, start_time=1, end_time=4).get_json()["clip_id"]
    assert service.wait_for_clip(clip_id)["status"] == "ready"
    assert not stale.exists()
    assert fresh.exists()


def test_maintenance_lock_is_renewed_while_its_run_lasts_and_never_lives_longer_than_one_interval(service_factory):
    import threading

    from clipqueue.keys import maintenance_lock_key
    from clipqueue.tasks import _exclusively

    service = service_factory()
    client = redis.Redis.from_url(service.env["REDIS_URL"])
    key = maintenance_lock_key("test-run")
    release = threading.Event()
    results = []

    def long_run():
        with service.app.app_context():
            results.append(_exclusively("test-run", 1.0, lambda: release.wait(30) and "done"))

    runner = threading.Thread(target=long_run)
    runner.start()
    try:
        time.sleep(7)  # past the lock's 5 s life: only its renewals keep it
        with service.app.app_context():
            assert _exclusively("test-run", 1.0, lambda: "second") is None
        assert 0 < client.pttl(key) <= 5000
    finally:
        release.set()
        runner.join(30)
    assert results == ["done"] and not client.exists(key)
