"""Prometheus metrics: real Redis and database state, closed to the world by default."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import CLIP_TIMEOUT
from tests.services import free_port, wait_until
from tests.test_scripts import _answers, procfile_process

GOOD = {"vod_url": "http://127.0.0.1:9/hls/master.m3u8", "start_time": 10.0, "end_time": 25.0}


def samples(response) -> dict[tuple[str, tuple], float]:
    text = response.get_data(as_text=True)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_report_queue_depth_and_clips_by_status(service_factory):
    service = service_factory()
    for _ in range(2):
        assert service.create_clip(**GOOD).status_code == 201
    response = service.client.get("/metrics")
    assert response.status_code == 200
    values = samples(response)
    assert values[("clipqueue_queue_length", (("queue", "clip_extraction_jobs"),))] == 2
    assert values[("clipqueue_queue_length", (("queue", "clip_extraction_jobs_failed"),))] == 0
    assert values[("clipqueue_clips", (("status", "processing"),))] == 2
    assert values[("clipqueue_clips", (("status", "ready"),))] == 0
    assert values[("clipqueue_redis_up", ())] == 1


def test_queue_length_and_pending_count_the_messages_kombu_keeps_in_priority_sub_lists(service_factory):
    import redis

    from clipqueue.keys import JOB_QUEUE
    from clipqueue.queue import job_queue_keys

    service = service_factory()
    assert service.create_clip(**GOOD).status_code == 201
    client = redis.Redis.from_url(service.env["REDIS_URL"])
    sub_lists = [key for key in job_queue_keys() if key != JOB_QUEUE]  # the lists of high and low jobs
    for key in sub_lists:
        client.lpush(key, "{}")
    values = samples(service.client.get("/metrics"))
    assert values[("clipqueue_queue_length", (("queue", "clip_extraction_jobs"),))] == 1 + len(sub_lists)
    assert service.client.get("/api/v1/queue").get_json()["pending"] == 1 + len(sub_lists)


def test_metrics_are_refused_to_remote_clients_without_a_token(service_factory):
    service = service_factory()
    remote = {"REMOTE_ADDR": "203.0.113.9"}
    assert service.client.get("/metrics", environ_base=remote).status_code == 403


def test_metrics_token_is_required_when_set(service_factory):
    service = service_factory(METRICS_TOKEN="scrape-me")
    assert service.client.get("/metrics").status_code == 403
    wrong = service.client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    ok = service.client.get("/metrics", headers={"Authorization": "Bearer scrape-me"},
                            environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert ok.status_code == 200
    assert ("clipqueue_redis_up", ()) in samples(ok)


# --- counters and histograms kept in Redis ----------------------------------

def scrape_over_http(url: str) -> dict[tuple[str, tuple], float]:
    response = requests.get(url, timeout=10)
    assert response.status_code == 200, response.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def jobs(values, outcome: str) -> float:
    return values[("clipqueue_jobs_total", (("outcome", outcome),))]


def histogram_count(values, name: str, **labels) -> float:
    return values[(f"{name}_count", tuple(sorted(labels.items())))]


def test_jobs_in_worker_processes_on_two_hosts_are_counted_once_by_every_web_process(
        service_factory, master_url, vod_server, tmp_path):
    service = service_factory(JOB_MAX_RETRIES="1", FETCH_RETRIES="0")
    for host in ("hostA", "hostB"):
        scratch = tmp_path / f"scratch-{host}"
        scratch.mkdir()
        service.start_worker(host, SCRATCH_DIR=str(scratch))
    # Nothing listens there: retried once, then dead-lettered.
    refused = f"http://127.0.0.1:{free_port()}/hls/master.m3u8"
    bodies = [
        {"vod_url": master_url, "start_time": 2.0, "end_time": 6.0, "mode": "copy"},
        {"vod_url": master_url, "start_time": 31.0, "end_time": 35.0, "mode": "copy"},
        {"vod_url": f"{vod_server.url}/hls/missing.m3u8", "start_time": 1.0, "end_time": 5.0},
        {"vod_url": refused, "start_time": 1.0, "end_time": 5.0},
    ]
    clip_ids = [service.create_clip(**body).get_json()["clip_id"] for body in bodies]
    statuses = [service.wait_for_clip(clip_id)["status"] for clip_id in clip_ids]
    assert statuses == ["ready", "ready", "failed", "failed"]

    port = free_port()
    env = {**service.env, "PORT": str(port), "WEB_ADDRESS": "127.0.0.1", "WEB_CONCURRENCY": "2"}
    with procfile_process("web", env, tmp_path / "web.log") as web:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_until(lambda: _answers(url) or web.poll() is not None, 60, what="web to answer")
        assert web.poll() is None, (tmp_path / "web.log").read_text()
        # Several scrapes land on both gunicorn processes; each reads the same totals.
        scrapes = [scrape_over_http(url) for _ in range(4)]
    values = scrapes[0]
    prefixes = ("clipqueue_jobs", "clipqueue_time_to_ready", "clipqueue_queue_wait", "clipqueue_stage",
                "clipqueue_source", "clipqueue_webhook")
    recorded = {key: value for key, value in values.items() if key[0].startswith(prefixes)}
    for other in scrapes[1:] + [samples(service.client.get("/metrics"))]:
        assert {key: other[key] for key in recorded} == recorded

    outcomes = ("ready", "failed", "dead_lettered", "canceled", "retried")
    assert {outcome: jobs(values, outcome) for outcome in outcomes} == {
        "ready": 2, "failed": 1, "dead_lettered": 1, "canceled": 0, "retried": 1}
    assert histogram_count(values, "clipqueue_time_to_ready_seconds") == 2
    assert 0 < values[("clipqueue_time_to_ready_seconds_sum", ())] < 2 * CLIP_TIMEOUT
    # Every job's first start waited in the queue once; its retry's wait is backoff, not counted.
    assert histogram_count(values, "clipqueue_queue_wait_seconds") == 4
    # Only completed stages are timed: the failed jobs never finished fetching.
    # Each ready clip's thumbnails and preview are made in the thumbnail stage.
    for stage in ("fetching", "cutting", "thumbnail", "uploading"):
        assert histogram_count(values, "clipqueue_stage_seconds", stage=stage) == 2, stage
    assert values[("clipqueue_source_bytes_total", ())] > 10_000
    # Webhooks do not exist yet: declared, reading 0.
    for outcome in ("delivered", "failed", "expired"):
        assert values[("clipqueue_webhook_deliveries_total", (("outcome", outcome),))] == 0
    assert values[("clipqueue_active_worker_count", (("queue", "clip_extraction_jobs"),))] == 2
    assert values[("clipqueue_database_up", ())] == 1 and values[("clipqueue_redis_up", ())] == 1


def test_histogram_buckets_are_cumulative_and_every_observation_lands_in_one(service_factory):
    from clipqueue import metrics

    service = service_factory()
    with service.app.app_context():
        for seconds in (0.3, 0.3, 7.0, 5000.0):
            metrics.observe(metrics.QUEUE_WAIT, seconds)
        metrics.observe(metrics.STAGE_SECONDS, 1.0, "cutting")  # on a bound: that bucket (le means <=)
    values = samples(service.client.get("/metrics"))
    bucket = {dict(labels)["le"]: value for (name, labels), value in values.items()
              if name == "clipqueue_queue_wait_seconds_bucket"}
    assert bucket["0.1"] == 0 and bucket["0.5"] == 2 and bucket["5.0"] == 2 and bucket["10.0"] == 3
    assert bucket["3600.0"] == 3 and bucket["+Inf"] == 4
    assert values[("clipqueue_queue_wait_seconds_count", ())] == 4
    assert values[("clipqueue_queue_wait_seconds_sum", ())] == pytest.approx(5007.6)
    cutting = (("le", "1.0"), ("stage", "cutting"))
    assert values[("clipqueue_stage_seconds_bucket", cutting)] == 1
    assert values[("clipqueue_stage_seconds_bucket", (("le", "0.5"), ("stage", "cutting")))] == 0


def test_an_undeclared_label_value_is_refused_rather_than_made_a_new_series():
    from clipqueue import metrics

    with pytest.raises(ValueError, match="outcome"):
        metrics.count_job("exploded")
    with pytest.raises(ValueError, match="stage"):
        metrics.observe(metrics.STAGE_SECONDS, 1.0, "dancing")
    # A job's stage the media code adds later is not timed, and does not fail the job.
    timer = metrics.StageTimer()
    timer.enter("resolving")
    timer.finish()


def test_counters_start_again_from_zero_when_redis_loses_them(service_factory):
    from clipqueue import metrics

    service = service_factory()
    with service.app.app_context():
        metrics.count_job("ready")
        metrics.count_job("ready")
    assert jobs(samples(service.client.get("/metrics")), "ready") == 2
    redis.Redis.from_url(service.env["REDIS_URL"]).flushdb()  # a Redis restarted without persistence
    values = samples(service.client.get("/metrics"))
    # A reset to zero, as a restarted process's counter: rate() and increase() take it as such.
    assert jobs(values, "ready") == 0
    assert values[("clipqueue_time_to_ready_seconds_count", ())] == 0


def test_metrics_still_answer_with_redis_or_the_database_down_and_say_which(service_factory):
    service = service_factory()
    assert service.create_clip(**GOOD).status_code == 201
    from clipqueue import create_app

    no_redis = create_app({**service.env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    values = samples(no_redis.test_client().get("/metrics"))
    assert values[("clipqueue_redis_up", ())] == 0
    assert values[("clipqueue_database_up", ())] == 1
    assert values[("clipqueue_clips", (("status", "processing"),))] == 1

    no_database = create_app({**service.env, "DATABASE_URL": "sqlite:////nonexistent-folder/clipqueue.db"})
    values = samples(no_database.test_client().get("/metrics"))
    assert values[("clipqueue_database_up", ())] == 0
    assert values[("clipqueue_redis_up", ())] == 1
    assert values[("clipqueue_queue_length", (("queue", "clip_extraction_jobs"),))] == 1


def test_oldest_waiting_job_age_is_counted_from_its_enqueue(service_factory):
    service = service_factory()
    values = samples(service.client.get("/metrics"))
    assert values[("clipqueue_queue_oldest_age_seconds", (("queue", "clip_extraction_jobs"),))] == 0
    first = service.create_clip(**GOOD).get_json()["clip_id"]
    service.create_clip(**GOOD)
    with service.app.app_context():
        from clipqueue.models import Clip, db, utcnow

        db.session.get(Clip, uuid.UUID(first)).enqueued_at = utcnow() - timedelta(seconds=300)
        db.session.commit()
    age = samples(service.client.get("/metrics"))[
        ("clipqueue_queue_oldest_age_seconds", (("queue", "clip_extraction_jobs"),))]
    assert 300 <= age < 330


def test_live_workers_are_counted_by_queue_from_their_heartbeats(service_factory):
    from clipqueue.keys import worker_heartbeats_key

    service = service_factory()
    worker = service.start_worker("only-jobs", queues="clip_extraction_jobs")

    def live(queue: str) -> float:
        return samples(service.client.get("/metrics"))[("clipqueue_active_worker_count", (("queue", queue),))]

    assert (live("clip_extraction_jobs"), live("clipqueue_control")) == (1, 0)
    # A worker killed without a word stops counting once its heartbeat is old.
    client = redis.Redis.from_url(service.env["REDIS_URL"])
    client.zadd(worker_heartbeats_key("clip_extraction_jobs"), {"killed@host": time.time() - 120})
    assert live("clip_extraction_jobs") == 1
    worker.stop()  # a worker that stops says so
    assert live("clip_extraction_jobs") == 0
