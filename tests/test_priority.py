"""Priorities through the real broker: HTTP API → Redis (kombu's priority lists) → a real Celery worker.

Jobs here fail fast (their source answers 404): what is checked is the order
in which the worker starts them, from each job's ``started_at``.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis

from clipqueue.keys import job_key
from clipqueue.queue import job_queue_keys
from tests.services import wait_until

pytestmark = pytest.mark.e2e

BACKLOG = 200
RUN = 5  # of the backlog, how many normal jobs are watched starting


def _batch(service, items) -> list[str]:
    response = service.client.post("/api/v1/clips/batch", json={"clips": items})
    assert response.status_code == 201, response.get_json()
    return [clip["clip_id"] for clip in response.get_json()["clips"]]


def _started_at(service, clip_ids: list[str]) -> dict[str, str]:
    pipe = redis.Redis.from_url(service.env["REDIS_URL"]).pipeline(transaction=False)
    for clip_id in clip_ids:
        pipe.hget(job_key(clip_id), "started_at")
    return {clip_id: stamp.decode() for clip_id, stamp in zip(clip_ids, pipe.execute()) if stamp}


def _wait_all_started(service, clip_ids: list[str], timeout: float) -> list[str]:
    """The clips in the order their jobs started, once every one has."""
    stamps = wait_until(lambda: (s := _started_at(service, clip_ids)) and len(s) == len(clip_ids) and s,
                        timeout, interval=0.5, what=f"{len(clip_ids)} jobs to start")
    return sorted(clip_ids, key=stamps.__getitem__)


def _message(raw: bytes) -> tuple[int, dict]:
    """A queued Celery message's broker priority and task kwargs (what Flower shows of the task)."""
    message = json.loads(raw)
    _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    return message["properties"]["priority"], kwargs


def test_high_starts_before_a_backlog_of_hundreds_of_normal_jobs_while_low_waits(service_factory, vod_server):
    service = service_factory()
    missing = {"vod_url": f"{vod_server.url}/hls/missing.m3u8", "start_time": 1, "end_time": 5}
    # The backlog waits while no worker runs: low first, then the normal jobs, then one high job.
    (low,) = _batch(service, [{**missing, "priority": "low"}])
    normal = []
    for _ in range(BACKLOG // 100):
        normal += _batch(service, [missing] * 100)
    (high,) = _batch(service, [{**missing, "priority": "high"}])

    # Every priority's waiting jobs are counted, each in kombu's list for its step.
    assert service.client.get("/api/v1/queue").get_json()["pending"] == BACKLOG + 2
    r = redis.Redis.from_url(service.env["REDIS_URL"])
    high_list, normal_list, low_list, _ = job_queue_keys()
    assert normal_list == "clip_extraction_jobs"  # SPEC's list holds the normal jobs, nearly all of them
    assert [r.llen(key) for key in job_queue_keys()] == [1, BACKLOG, 1, 0]
    assert _message(r.lindex(high_list, 0)) == (0, {"clip_id": high, "priority": "high"})
    assert _message(r.lindex(low_list, 0)) == (6, {"clip_id": low, "priority": "low"})
    assert service.job(high)["priority"] == "high" and service.job(low)["priority"] == "low"

    service.start_worker()  # concurrency 1
    order = _wait_all_started(service, [*normal[:RUN], high], timeout=60)
    assert order == [high, *normal[:RUN]]  # FIFO within a priority
    # Low waits behind every normal job still queued.
    assert r.llen(low_list) == 1 and low not in _started_at(service, [low])


class _SlowNotFound(BaseHTTPRequestHandler):
    """A source that answers 404 after a while (longer under ``/slow``): each job holds the worker that long."""

    def do_GET(self):  # noqa: N802 - http.server's name
        time.sleep(3.0 if self.path.startswith("/slow") else 0.3)
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args):
        pass


@pytest.fixture
def slow_source():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowNotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_high_job_waits_for_at_most_the_running_job_of_each_worker_slot(service_factory, slow_source):
    """Prefetch multiplier 1 and late acks: a worker holds no queued job beside the one it runs.

    A worker that had reserved the next normal job before the high one was
    queued would run that one first.
    """
    service = service_factory()
    job = {"vod_url": f"{slow_source}/vod.m3u8", "start_time": 1, "end_time": 5}
    # The first job runs for seconds: time enough, even on a loaded machine, to queue the high one.
    first = {**job, "vod_url": f"{slow_source}/slow/vod.m3u8"}
    (low, *normal) = _batch(service, [{**job, "priority": "low"}, first, job, job])
    service.start_worker()  # concurrency 1
    wait_until(lambda: service.job(normal[0]).get("status") == "running", 30, interval=0.05,
               what="the first job to run")
    (high,) = _batch(service, [{**job, "priority": "high"}])
    order = _wait_all_started(service, [low, *normal, high], timeout=60)
    assert order == [normal[0], high, normal[1], normal[2], low]


@pytest.mark.parametrize("priority", ["high", "low"])
def test_a_requeued_or_replayed_job_keeps_its_priority(service_factory, priority):
    from clipqueue import clips
    from clipqueue.queue import job_list, requeue_job

    service = service_factory()
    r = redis.Redis.from_url(service.env["REDIS_URL"])
    (clip_id,) = _batch(service, [{"vod_url": "http://127.0.0.1:9/v.m3u8", "start_time": 1, "end_time": 5,
                                   "priority": priority}])
    assert r.llen(job_list(priority)) == 1
    r.delete(*job_queue_keys())  # taken by a worker that then died: the janitor queues it again
    with service.app.app_context():
        requeue_job(clips.get(clip_id), "worker lost (lease expired)")
        assert _message(r.rpop(job_list(priority))) == (
            {"high": 0, "low": 6}[priority], {"clip_id": clip_id, "priority": priority})
        assert clips.mark_failed(clip_id, "storage down", code="storage_unavailable", attempts=4,
                                 traceback="Traceback ...")
    assert service.client.post(f"/api/v1/dead-letter/{clip_id}/replay").status_code == 202
    assert [r.llen(key) for key in job_queue_keys()] == [priority == "high", 0, priority == "low", 0]
    assert service.job(clip_id)["priority"] == priority
