"""Prometheus metrics: real Redis and database state, closed to the world by default."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

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
