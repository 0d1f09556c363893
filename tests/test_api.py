"""The HTTP API against real Redis and a real database, with no worker running."""

from __future__ import annotations

import json

import pytest
import redis

from clipqueue.keys import CONTROL_QUEUE, JOB_QUEUE, job_key
from clipqueue.queue import job_list, job_queue_keys

GOOD = {"vod_url": "http://127.0.0.1:9/hls/master.m3u8", "start_time": 10.0, "end_time": 25.0}


@pytest.fixture
def api(service_factory):
    return service_factory()


def _error(response) -> dict:
    body = response.get_json()
    assert body is not None, response.data
    return body["error"]


def _nothing_accepted(service) -> None:
    """Bad input queues nothing and records nothing."""
    assert service.client.get("/api/v1/queue").get_json()["pending"] == 0
    from clipqueue.models import Clip

    with service.app.app_context():
        assert Clip.query.count() == 0


@pytest.mark.parametrize(
    "change, field, code",
    [
        ({"vod_url": None}, "vod_url", "missing_field"),
        ({"vod_url": 42}, "vod_url", "invalid_field"),
        ({"vod_url": "ftp://example.com/vod.m3u8"}, "vod_url", "invalid_field"),
        ({"vod_url": "file:///etc/passwd"}, "vod_url", "invalid_field"),
        ({"vod_url": "http:///no-host"}, "vod_url", "invalid_field"),
        ({"vod_url": "http://example.com/" + "a" * 2100}, "vod_url", "invalid_field"),
        ({"vod_url": "http://example.com/a b.m3u8"}, "vod_url", "invalid_field"),
        ({"start_time": None}, "start_time", "missing_field"),
        ({"start_time": "10"}, "start_time", "invalid_field"),
        ({"start_time": True}, "start_time", "invalid_field"),
        ({"start_time": -1}, "start_time", "invalid_field"),
        ({"end_time": None}, "end_time", "missing_field"),
        ({"end_time": [25]}, "end_time", "invalid_field"),
        ({"end_time": 10.0}, "end_time", "invalid_field"),
        ({"end_time": 5.0}, "end_time", "invalid_field"),
        ({"end_time": 10.5}, "end_time", "invalid_field"),
        ({"end_time": 70.01}, "end_time", "invalid_field"),
        ({"end_time": 1e12}, "end_time", "invalid_field"),
        ({"quality": "4k"}, "quality", "invalid_field"),
        ({"quality": 720}, "quality", "invalid_field"),
        ({"mode": "fast"}, "mode", "invalid_field"),
        ({"title": ""}, "title", "invalid_field"),
        ({"title": "   "}, "title", "invalid_field"),
        ({"title": "x" * 256}, "title", "invalid_field"),
        ({"title": 7}, "title", "invalid_field"),
        ({"title": "bad\x00title"}, "title", "invalid_field"),
    ],
)
def test_create_rejects_bad_field_with_error_naming_it(api, change, field, code):
    body = {**GOOD, **change}
    body = {key: value for key, value in body.items() if value is not None}
    response = api.create_clip(**body)
    assert response.status_code == 400
    error = _error(response)
    assert error["field"] == field
    assert error["code"] == code
    assert error["message"]
    _nothing_accepted(api)


def test_create_rejects_non_finite_number(api):
    response = api.client.post(
        "/api/v1/clips", data='{"vod_url": "http://127.0.0.1:9/v.m3u8", "start_time": NaN, "end_time": 5}',
        content_type="application/json",
    )
    assert response.status_code == 400
    assert _error(response)["field"] == "start_time"
    _nothing_accepted(api)


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'"string"'])
def test_create_rejects_body_that_is_not_a_json_object(api, body):
    response = api.client.post("/api/v1/clips", data=body, content_type="application/json")
    assert response.status_code == 400
    assert _error(response)["code"] in {"invalid_json", "invalid_body"}
    _nothing_accepted(api)


def test_create_rejects_oversized_body_as_json(api):
    response = api.client.post(
        "/api/v1/clips", data=json.dumps({**GOOD, "title": "x" * 40000}), content_type="application/json"
    )
    assert response.status_code == 413
    assert _error(response)["code"]
    _nothing_accepted(api)


def test_private_source_is_refused_unless_allowed(service_factory):
    service = service_factory(ALLOW_PRIVATE_SOURCES="false")
    for url in ("http://127.0.0.1/v.m3u8", "http://localhost/v.m3u8", "http://10.1.2.3/v.m3u8",
                "http://169.254.169.254/latest", "http://[::1]/v.m3u8"):
        response = service.create_clip(**{**GOOD, "vod_url": url})
        assert response.status_code == 400, url
        assert _error(response) == {**_error(response), "field": "vod_url", "code": "forbidden_source"}
    _nothing_accepted(service)


def test_allowed_source_hosts_narrows_sources(service_factory):
    service = service_factory(ALLOWED_SOURCE_HOSTS="vod.example")
    response = service.create_clip(**GOOD)
    assert response.status_code == 400
    assert _error(response)["code"] == "forbidden_source"


def test_create_records_clip_and_queues_one_job_with_metadata(api):
    response = api.create_clip(**GOOD, quality="720p", mode="copy", title="  nice play ")
    assert response.status_code == 201
    clip = response.get_json()
    assert clip["status"] == "processing"
    assert clip["title"] == "nice play"
    assert response.headers["Location"].endswith(f"/api/v1/clips/{clip['clip_id']}")
    assert api.clip(clip["clip_id"])["status"] == "processing"

    job = api.job(clip["clip_id"])
    assert job["status"] == "queued"
    assert job["clip_id"] == clip["clip_id"]
    assert job["vod_url"] == GOOD["vod_url"]
    assert (job["start_time"], job["end_time"], job["quality"]) == (10.0, 25.0, "720p")
    assert job["queued_at"].endswith("Z")

    client = redis.Redis.from_url(api.env["REDIS_URL"])
    ttl = client.ttl(job_key(clip["clip_id"]))
    assert 7 * 24 * 3600 - 60 < ttl <= 7 * 24 * 3600
    # A normal job waits in clip_extraction_jobs itself (SPEC); high and low ones in its sub-lists.
    assert client.llen(JOB_QUEUE) == 1
    assert sum(client.llen(key) for key in job_queue_keys()) == 1
    assert client.llen(CONTROL_QUEUE) == 0  # the finalizing step is sent only when extraction ends


def test_queue_reports_pending_jobs_from_the_real_queue(api):
    for _ in range(3):
        assert api.create_clip(**GOOD).status_code == 201
    counts = api.client.get("/api/v1/queue").get_json()
    assert counts["pending"] == 3
    assert counts["dead_letter"] == 0
    redis.Redis.from_url(api.env["REDIS_URL"]).lpop(job_list("normal"))
    assert api.client.get("/api/v1/queue").get_json()["pending"] == 2


def test_defaults_are_auto_quality_and_accurate_mode(api):
    clip = api.create_clip(**GOOD).get_json()
    assert (clip["quality"], clip["mode"], clip["title"]) == ("auto", "accurate", None)


@pytest.mark.parametrize("clip_id", ["00000000-0000-0000-0000-000000000000", "not-a-uuid"])
def test_unknown_clip_is_404_json(api, clip_id):
    for path in (f"/api/v1/clips/{clip_id}", f"/api/v1/clips/{clip_id}/job"):
        response = api.client.get(path)
        assert response.status_code == 404
        assert _error(response)["code"] in {"not_found", "job_not_found"}


def test_unknown_route_is_404_json(api):
    response = api.client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert _error(response)["code"] == "not_found"


def test_tokens_guard_calls_that_change_anything(service_factory):
    service = service_factory(API_TOKENS="alpha-token, beta-token")
    assert service.create_clip(**GOOD).status_code == 401
    wrong = service.client.post("/api/v1/clips", json=GOOD, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    assert _error(wrong)["code"] == "forbidden"
    _nothing_accepted(service)
    ok = service.client.post("/api/v1/clips", json=GOOD, headers={"Authorization": "Bearer beta-token"})
    assert ok.status_code == 201
    # Reads stay open.
    assert service.client.get(f"/api/v1/clips/{ok.get_json()['clip_id']}").status_code == 200
    assert service.client.get("/api/v1/queue").status_code == 200


def test_retried_post_with_idempotency_key_returns_the_first_clip(api):
    headers = {"Idempotency-Key": "tap-7f3a"}
    first = api.client.post("/api/v1/clips", json=GOOD, headers=headers)
    again = api.client.post("/api/v1/clips", json=GOOD, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.get_json()["clip_id"] == first.get_json()["clip_id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert api.client.get("/api/v1/queue").get_json()["pending"] == 1

    other = api.client.post("/api/v1/clips", json={**GOOD, "end_time": 30.0}, headers=headers)
    assert other.status_code == 409
    assert _error(other)["field"] == "Idempotency-Key"
    assert api.client.post("/api/v1/clips", json=GOOD, headers={"Idempotency-Key": "x" * 256}).status_code == 400
    assert api.client.get("/api/v1/queue").get_json()["pending"] == 1


def test_concurrent_posts_with_one_idempotency_key_make_one_clip(service_factory):
    from concurrent.futures import ThreadPoolExecutor

    service = service_factory(db="postgres")

    def post(_):
        with service.app.test_client() as client:
            return client.post("/api/v1/clips", json=GOOD, headers={"Idempotency-Key": "race"})

    with ThreadPoolExecutor(max_workers=4) as pool:
        responses = list(pool.map(post, range(8)))
    assert sorted(r.status_code for r in responses) == [200] * 7 + [201]
    assert len({r.get_json()["clip_id"] for r in responses}) == 1
    assert service.client.get("/api/v1/queue").get_json()["pending"] == 1


@pytest.mark.parametrize("field", ["start_time", "end_time"])
def test_a_400_digit_integer_time_is_a_400_naming_the_field(api, field):
    body = json.dumps({**GOOD, field: 0}).replace(f'"{field}": 0', f'"{field}": {"9" * 400}')
    response = api.client.post("/api/v1/clips", data=body, content_type="application/json")
    assert response.status_code == 400
    assert (_error(response)["code"], _error(response)["field"]) == ("invalid_field", field)
    _nothing_accepted(api)


def test_every_spelling_of_a_clip_id_finds_its_clip_job_and_dead_letter(service_factory, vod_dir):
    from samplevod.server import serve_directory

    # A source that always answers 503: after its one attempt the job is dead-lettered.
    server = serve_directory(vod_dir, fail_first={"/hls/master.m3u8": 10**6})
    try:
        service = service_factory(JOB_MAX_RETRIES="0", FETCH_RETRIES="0")
        worker = service.start_worker()
        created = service.create_clip(vod_url=f"{server.url}/hls/master.m3u8", start_time=1, end_time=5)
        clip_id = created.get_json()["clip_id"]
        assert service.wait_for_clip(clip_id)["status"] == "failed"
        spellings = [clip_id.upper(), "{" + clip_id + "}", "urn:uuid:" + clip_id, clip_id.replace("-", "")]
        for spelling in spellings:
            for path in (f"/api/v1/clips/{spelling}", f"/api/v1/clips/{spelling}/job",
                         f"/api/v1/dead-letter/{spelling}"):
                response = service.client.get(path)
                assert response.status_code == 200, (path, response.get_json())
                assert response.get_json()["clip_id"] == clip_id, path
        worker.stop()  # else the replayed job may fail again, and be dead-lettered again, before the check
        replay = service.client.post(f"/api/v1/dead-letter/{spellings[0]}/replay")
        assert replay.status_code == 202, replay.get_json()
        assert replay.get_json()["clip_id"] == clip_id
        assert service.client.get(f"/api/v1/dead-letter/{clip_id}").status_code == 404
    finally:
        server.stop()


def test_a_database_outage_is_a_503_in_the_error_format(service_factory):
    import psycopg2
    from sqlalchemy.engine import make_url

    from tests.services import POSTGRES_ADMIN_URL

    service = service_factory(db="postgres")
    clip_id = service.create_clip(**GOOD).get_json()["clip_id"]
    name = make_url(service.env["DATABASE_URL"]).database
    admin = psycopg2.connect(POSTGRES_ADMIN_URL)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                           (name,))
            cursor.execute(f'DROP DATABASE "{name}"')
    finally:
        admin.close()
    for response in (service.client.get(f"/api/v1/clips/{clip_id}"), service.create_clip(**GOOD),
                     service.client.get("/api/v1/queue")):
        assert response.status_code == 503, response.get_json()
        assert _error(response)["code"] == "database_unavailable"


def test_clip_record_has_exactly_the_fields_its_document_lists(api):
    clip = api.create_clip(**GOOD).get_json()
    document = api.client.get("/api/v1/openapi.json").get_json()
    record = document["components"]["schemas"]["Clip"]
    assert set(clip) == set(record["properties"]) == set(record["required"])
    assert api.clip(clip["clip_id"]) == clip
