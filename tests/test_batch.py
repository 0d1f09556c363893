"""Batch create and listing, against real Redis and real databases, with no worker running."""

from __future__ import annotations

import uuid

import pytest
import redis

from clipqueue.keys import JOB_QUEUE
from clipqueue.queue import job_queue_keys

GOOD = {"vod_url": "http://127.0.0.1:9/hls/master.m3u8", "start_time": 10.0, "end_time": 25.0}


@pytest.fixture
def api(service_factory):
    return service_factory()


def _batch(service, items, **headers):
    return service.client.post("/api/v1/clips/batch", json={"clips": items}, headers=headers)


def _clip_count(service) -> int:
    from clipqueue.models import Clip

    with service.app.app_context():
        return Clip.query.count()


def test_batch_creates_the_valid_items_and_refuses_the_others_each_in_its_place(api):
    items = [
        {**GOOD, "title": "first"},
        {**GOOD, "end_time": 5.0},
        {**GOOD, "priority": "high", "title": "urgent"},
        "not an object",
        {**GOOD, "quality": "4k"},
    ]
    response = _batch(api, items)
    assert response.status_code == 207, response.get_json()
    answers = response.get_json()["clips"]
    assert len(answers) == 5
    assert answers[0]["title"] == "first" and answers[0]["status"] == "processing"
    assert answers[1] == {"error": {"code": "invalid_field", "field": "end_time",
                                    "message": "end_time must be greater than start_time"}}
    assert answers[2]["priority"] == "high" and answers[2]["title"] == "urgent"
    assert answers[3]["error"]["code"] == "invalid_body"
    assert answers[4]["error"]["field"] == "quality"
    assert _clip_count(api) == 2
    # Each created clip's job is queued once, in the list of its priority.
    assert api.client.get("/api/v1/queue").get_json()["pending"] == 2
    assert api.job(answers[2]["clip_id"])["priority"] == "high"
    assert api.client.get(f"/api/v1/clips/{answers[0]['clip_id']}").get_json()["priority"] == "normal"
    r = redis.Redis.from_url(api.env["REDIS_URL"])
    assert [r.llen(key) for key in job_queue_keys()] == [1, 1, 0, 0]


def test_a_full_batch_larger_than_one_request_body_is_created_whole(api):
    # 100 items of about 500 bytes: 50 KB, beyond MAX_REQUEST_BYTES (16 KiB) for a single clip.
    items = [{**GOOD, "title": f"clip {i} " + "x" * 200,
              "vod_url": GOOD["vod_url"] + "?" + "v" * 200} for i in range(100)]
    response = _batch(api, items)
    assert response.status_code == 201, response.get_json()
    answers = response.get_json()["clips"]
    assert [a["title"].split()[1] for a in answers] == [str(i) for i in range(100)]
    assert len({a["clip_id"] for a in answers}) == 100
    assert api.client.get("/api/v1/queue").get_json()["pending"] == 100


@pytest.mark.parametrize("body, code", [
    ({"clips": []}, "invalid_field"),
    ({"clips": [GOOD] * 101}, "invalid_field"),
    ({"clips": GOOD}, "invalid_field"),
    ({"items": [GOOD]}, "missing_field"),
    ([GOOD], "invalid_field"),
])
def test_a_body_that_is_no_batch_of_1_to_max_batch_items_is_refused_naming_clips(api, body, code):
    response = api.client.post("/api/v1/clips/batch", json=body)
    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == "clips"
    assert response.get_json()["error"]["code"] == code
    assert _clip_count(api) == 0
    assert api.client.get("/api/v1/queue").get_json()["pending"] == 0


def test_max_batch_is_a_setting(service_factory):
    service = service_factory(MAX_BATCH="2")
    assert _batch(service, [GOOD] * 3).get_json()["error"]["field"] == "clips"
    assert _batch(service, [GOOD] * 2).status_code == 201


def test_a_batch_retried_with_its_idempotency_key_answers_the_first_batchs_clips(api):
    items = [GOOD, {**GOOD, "start_time": 1.0}, {**GOOD, "end_time": 1.0}]
    first = _batch(api, items, **{"Idempotency-Key": "batch-1"})
    assert first.status_code == 207
    again = _batch(api, items, **{"Idempotency-Key": "batch-1"})
    assert again.status_code == 207
    assert again.get_json() == first.get_json()
    assert _clip_count(api) == 2
    assert api.client.get("/api/v1/queue").get_json()["pending"] == 2
    # An item changed under the same key is refused in its place; the others still answer their clips.
    changed = _batch(api, [GOOD, {**GOOD, "start_time": 2.0}], **{"Idempotency-Key": "batch-1"})
    assert changed.status_code == 207
    assert changed.get_json()["clips"][0] == first.get_json()["clips"][0]
    assert changed.get_json()["clips"][1]["error"]["code"] == "idempotency_key_reused"
    # A single POST's key never names a batch item's clip.
    single = api.client.post("/api/v1/clips", json=GOOD, headers={"Idempotency-Key": "batch-1"})
    assert single.status_code == 201
    assert _clip_count(api) == 3


def test_a_forbidden_source_refuses_only_its_items(service_factory):
    service = service_factory(ALLOW_PRIVATE_SOURCES="false", ALLOWED_SOURCE_HOSTS="127.0.0.1")
    response = _batch(service, [{**GOOD, "vod_url": "http://127.0.0.1:9/a.m3u8"},
                                {**GOOD, "callback_url": "http://10.0.0.1/hook"}])
    assert response.status_code == 207
    first, second = response.get_json()["clips"]
    assert first["error"]["code"] == "forbidden_source" and first["error"]["field"] == "vod_url"
    assert second["error"]["code"] == "forbidden_source"
    assert _clip_count(service) == 0


def _create(service, count: int) -> list[str]:
    """``count`` clips one POST at a time, so their creation order is known; returns their ids."""
    ids = []
    for i in range(count):
        response = service.create_clip(**GOOD, title=f"clip {i}")
        assert response.status_code == 201
        ids.append(response.get_json()["clip_id"])
    return ids


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_clips_page_newest_first_by_cursor_and_filter_by_status(service_factory, db):
    service = service_factory(db=db)
    created = _create(service, 7)
    for clip_id in created[1:6:2]:
        assert service.client.post(f"/api/v1/clips/{clip_id}/cancel").status_code == 202

    seen, cursor, pages = [], None, 0
    while pages < 10:
        query = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        body = service.client.get("/api/v1/clips", query_string=query).get_json()
        pages += 1
        assert len(body["clips"]) <= 3 and body["missing"] == []
        seen += [clip["clip_id"] for clip in body["clips"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == created[::-1]

    canceled = service.client.get("/api/v1/clips?status=canceled&limit=2").get_json()
    assert [c["clip_id"] for c in canceled["clips"]] == [created[5], created[3]]
    rest = service.client.get(f"/api/v1/clips?status=canceled&limit=2&cursor={canceled['next_cursor']}")
    assert [c["clip_id"] for c in rest.get_json()["clips"]] == [created[1]]
    assert rest.get_json()["next_cursor"] is None
    # Clips created after a page was read do not shift the pages after it.
    cursor = service.client.get("/api/v1/clips?limit=3").get_json()["next_cursor"]
    newer = _create(service, 1)
    after = service.client.get(f"/api/v1/clips?limit=3&cursor={cursor}").get_json()["clips"]
    assert [c["clip_id"] for c in after] == created[3::-1][:3]
    assert service.client.get("/api/v1/clips?limit=1").get_json()["clips"][0]["clip_id"] == newer[0]
    assert len(service.client.get("/api/v1/clips").get_json()["clips"]) == 8


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_clips_by_ids_come_in_the_order_asked_with_the_unknown_ones_missing(service_factory, db):
    service = service_factory(db=db)
    created = _create(service, 3)
    unknown = str(uuid.uuid4())
    asked = [created[2], unknown, created[0].upper(), created[2]]
    body = service.client.get("/api/v1/clips", query_string={"ids": ",".join(asked)}).get_json()
    assert [c["clip_id"] for c in body["clips"]] == [created[2], created[0]]
    assert body["missing"] == [unknown] and body["next_cursor"] is None
    service.client.post(f"/api/v1/clips/{created[0]}/cancel")
    only = service.client.get("/api/v1/clips", query_string={"ids": ",".join(created), "status": "canceled"})
    assert [c["clip_id"] for c in only.get_json()["clips"]] == [created[0]]
    assert only.get_json()["missing"] == [created[1], created[2]]


@pytest.mark.parametrize("query, field", [
    ({"status": "done"}, "status"),
    ({"limit": "0"}, "limit"),
    ({"limit": "101"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"cursor": "not-a-cursor"}, "cursor"),
    ({"cursor": "12_zz"}, "cursor"),
    ({"ids": "not-a-uuid"}, "ids"),
    ({"ids": ""}, "ids"),
    ({"ids": ",".join(str(uuid.uuid4()) for _ in range(101))}, "ids"),
])
def test_a_bad_list_query_is_refused_naming_its_parameter(api, query, field):
    response = api.client.get("/api/v1/clips", query_string=query)
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"]["field"] == field


def test_the_job_queue_lists_are_the_queue_for_normal_jobs_and_sub_lists_for_the_other_steps():
    # In the order workers read them: high, normal (SPEC's list itself), low, then kombu's last step.
    assert job_queue_keys() == [f"{JOB_QUEUE}\x06\x160", JOB_QUEUE, f"{JOB_QUEUE}\x06\x166", f"{JOB_QUEUE}\x06\x169"]
