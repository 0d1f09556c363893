"""The API under hostile callers: forbidden sources, rate limits, tokens on every write, malformed input."""

from __future__ import annotations

import pytest
import redis

from clipqueue.ratelimit import KEY_PREFIX
from tests.security.servers import CountingServer
from tests.security.test_urlpolicy import LOOPBACK_SPELLINGS
from tests.services import RedisServer

GOOD = {"vod_url": "http://vod.example/hls/master.m3u8", "start_time": 10.0, "end_time": 25.0}


@pytest.fixture
def public_dns(fake_dns):
    """vod.example looks public; no worker runs in these tests, so it is never fetched."""
    return fake_dns({"vod.example": ["93.184.216.34"]})


def _error(response) -> dict:
    body = response.get_json()
    assert body is not None, response.data
    return body["error"]


def _pending(service) -> int:
    return service.client.get("/api/v1/queue").get_json()["pending"]


def test_create_refuses_every_loopback_spelling_and_the_source_sees_nothing(service_factory, public_dns):
    service = service_factory(ALLOW_PRIVATE_SOURCES="false", RATE_LIMIT="0")
    with CountingServer() as source:
        for template in LOOPBACK_SPELLINGS:
            url = template.format(port=source.port)
            if not url.lower().startswith("http"):
                continue  # other schemes are invalid_field, covered in tests/test_api.py
            response = service.create_clip(**{**GOOD, "vod_url": url})
            assert response.status_code == 400, url
            error = _error(response)
            assert (error["field"], error["code"]) in {("vod_url", "forbidden_source"), ("vod_url", "invalid_field")}, url
        assert source.connections == 0
    assert _pending(service) == 0


def test_create_refuses_a_public_looking_name_that_resolves_to_loopback(service_factory, fake_dns):
    fake_dns({"vod.example": ["127.0.0.1"]})
    service = service_factory(ALLOW_PRIVATE_SOURCES="false")
    response = service.create_clip(**GOOD)
    assert response.status_code == 400
    assert _error(response)["code"] == "forbidden_source"
    assert _pending(service) == 0


@pytest.mark.parametrize("vod_url", ["http://[", "http://[::1/x", "https://[vod.example]/v.m3u8", "http://]x/"])
def test_malformed_vod_url_is_a_400_naming_the_field(service_factory, vod_url):
    service = service_factory()
    response = service.create_clip(**{**GOOD, "vod_url": vod_url})
    assert response.status_code == 400
    assert _error(response)["field"] == "vod_url"


def test_writes_over_the_rate_limit_get_429_in_the_error_format_and_queue_nothing(service_factory, public_dns):
    service = service_factory(RATE_LIMIT="3/minute")
    for _ in range(3):
        assert service.create_clip(**GOOD).status_code == 201
    refused = service.create_clip(**GOOD)
    assert refused.status_code == 429
    assert _error(refused)["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) > 0
    assert _pending(service) == 3


def test_each_token_has_its_own_budget(service_factory, public_dns):
    service = service_factory(RATE_LIMIT="2/minute", API_TOKENS="alpha,beta")
    alpha = {"Authorization": "Bearer alpha"}
    beta = {"Authorization": "Bearer beta"}
    for _ in range(2):
        assert service.client.post("/api/v1/clips", json=GOOD, headers=alpha).status_code == 201
    assert service.client.post("/api/v1/clips", json=GOOD, headers=alpha).status_code == 429
    assert service.client.post("/api/v1/clips", json=GOOD, headers=beta).status_code == 201


def test_invented_tokens_do_not_buy_fresh_limits(service_factory, public_dns):
    service = service_factory(RATE_LIMIT="2/minute", API_TOKENS="alpha")
    statuses = [
        service.client.post("/api/v1/clips", json=GOOD, headers={"Authorization": f"Bearer guess-{n}"}).status_code
        for n in range(4)
    ]
    assert statuses == [403, 403, 429, 429]


def test_limits_are_counted_in_redis_and_shared_by_every_web_process(service_factory, public_dns):
    first = service_factory(RATE_LIMIT="3/minute")
    second = service_factory(RATE_LIMIT="3/minute")
    assert first.env["REDIS_URL"] == second.env["REDIS_URL"]
    for _ in range(2):
        assert first.create_clip(**GOOD).status_code == 201
    assert second.create_clip(**GOOD).status_code == 201
    assert second.create_clip(**GOOD).status_code == 429
    keys = redis.Redis.from_url(first.env["REDIS_URL"]).keys(f"*{KEY_PREFIX}*")
    assert keys


def test_reads_have_their_own_limit_and_a_write_limit_of_zero_is_off(service_factory, public_dns):
    service = service_factory(RATE_LIMIT="0", RATE_LIMIT_READS="2/minute")
    assert [service.client.get("/api/v1/queue").status_code for _ in range(3)] == [200, 200, 429]
    assert all(service.create_clip(**GOOD).status_code == 201 for _ in range(5))
    assert service.client.get("/healthz").status_code == 200


def test_creating_a_clip_still_works_when_redis_is_down(service_factory, public_dns, tmp_path):
    private = RedisServer(tmp_path / "redis-outage")
    private.start()
    service = service_factory(redis=private.url(0), RATE_LIMIT="2/minute")
    private.stop()
    try:
        first = service.create_clip(**GOOD)
        assert first.status_code == 201, first.get_json()
        assert service.create_clip(**GOOD).status_code == 201
        # The limit still holds, counted in this process until Redis is back.
        assert service.create_clip(**GOOD).status_code == 429
    finally:
        private.stop()


def test_replay_needs_a_token_like_every_write(service_factory):
    service = service_factory(API_TOKENS="alpha")
    path = "/api/v1/dead-letter/00000000-0000-0000-0000-000000000000/replay"
    assert service.client.post(path).status_code == 401
    assert service.client.post(path, headers={"Authorization": "Bearer nope"}).status_code == 403
    assert service.client.post(path, headers={"Authorization": "Bearer alpha"}).status_code == 404


def test_wrong_method_answers_405_with_allow_header(service_factory):
    service = service_factory()
    response = service.client.delete("/api/v1/clips")
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]
    assert _error(response)["code"] == "method_not_allowed"


def test_dead_letter_reads_need_a_token_when_tokens_are_set(service_factory):
    # Dead letters hold every failed job's source URL (signed query strings) and traceback.
    service = service_factory(API_TOKENS="alpha")
    for path in ("/api/v1/dead-letter", "/api/v1/dead-letter/00000000-0000-0000-0000-000000000000"):
        assert service.client.get(path).status_code == 401, path
        wrong = service.client.get(path, headers={"Authorization": "Bearer nope"})
        assert (wrong.status_code, _error(wrong)["code"]) == (403, "forbidden"), path
    right = service.client.get("/api/v1/dead-letter", headers={"Authorization": "Bearer alpha"})
    assert right.get_json() == {"count": 0, "jobs": []}
    # The other reads stay open.
    assert service.client.get("/api/v1/queue").status_code == 200


def test_a_slow_dns_answer_does_not_hold_the_request(service_factory, fake_dns):
    import threading
    import time

    from clipqueue import defaults

    release = threading.Event()

    def slow_answer():
        release.wait(30)
        return ["93.184.216.34"]

    fake_dns({"vod.example": slow_answer})
    service = service_factory(ALLOW_PRIVATE_SOURCES="false")
    try:
        started = time.monotonic()
        response = service.create_clip(**GOOD)
        elapsed = time.monotonic() - started
    finally:
        release.set()
    # DNS failing for now is no reason to refuse: the worker checks the host again before fetching.
    assert response.status_code == 201, response.get_json()
    assert elapsed < defaults.API_DNS_TIMEOUT_SECONDS + 2
