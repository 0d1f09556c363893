"""The OpenAPI document matches the real API: schemathesis drives the app through it."""

from __future__ import annotations

import re

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from clipqueue import defaults

TOKEN = "schema-token"
PUBLIC_ADDRESS = "93.184.216.34"


class _PublicUnderVodExample(dict):
    """Test DNS: vod.example and every name under it look public; nothing else resolves."""

    def get(self, host, default=None):
        return [PUBLIC_ADDRESS] if host == "vod.example" or host.endswith(".vod.example") else default


@pytest.fixture
def api_service(service_factory, fake_dns):
    # No worker runs, so no source is ever fetched.
    fake_dns(_PublicUnderVodExample())
    return service_factory(
        ALLOW_PRIVATE_SOURCES="false", ALLOWED_SOURCE_HOSTS="vod.example", API_TOKENS=TOKEN,
        RATE_LIMIT="0", RATE_LIMIT_READS="0",
    )


def _end_after_start_within_limits(context, case):
    """Give a valid clip request the one rule JSON Schema cannot state: ``end_time`` follows ``start_time``.

    Only the distance between the two generated times changes, to a length
    inside MIN_CLIP_SECONDS..MAX_CLIP_SECONDS, the start moving back when the
    end would pass MAX_VOD_SECONDS; every other value is as generated.
    """
    meta = case.meta
    if (case.operation.definition.raw.get("operationId") != "createClip"
            or (meta is not None and not meta.generation.mode.is_positive)
            or not isinstance(case.body, dict)):
        return case
    start, end = case.body["start_time"], case.body["end_time"]
    # Half a second inside each limit: float sums must not land a hair outside.
    span = defaults.MAX_CLIP_SECONDS - defaults.MIN_CLIP_SECONDS - 1.0
    length = defaults.MIN_CLIP_SECONDS + 0.5 + abs(end) % span
    start = min(start, defaults.MAX_VOD_SECONDS - defaults.MAX_CLIP_SECONDS)
    case.body = {**case.body, "start_time": start, "end_time": start + length}
    return case


@pytest.fixture
def api_schema(api_service):
    # The token through the document's bearerAuth scheme: schemathesis then sends it where the
    # document asks for it, and leaves it out on purpose to see those calls refused.
    # A body the document refuses may also be too large for the server: 413, which the document declares.
    # schemathesis' own list for this check, and 413.
    refused = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
    config = schemathesis.Config.from_dict({
        "auth": {"openapi": {"bearerAuth": {"bearer": TOKEN}}},
        "checks": {"negative_data_rejection": {"expected-statuses": refused}},
    })
    loaded = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", api_service.app, config=config)
    loaded.hook("map_case")(_end_after_start_within_limits)
    return loaded


# Left out of the calls, not of the document: the stream of every clip never ends (a WSGI test
# client would wait on it forever), and a WebSocket needs an upgraded connection that schemathesis
# does not open. tests/test_events.py drives both over real HTTP.
schema = schemathesis.pytest.from_fixture("api_schema").exclude(
    operation_id=["watchClips", "watchClipWebSocket"])


@schema.parametrize()
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_answers_as_its_openapi_document_says(case):
    # Every check, positive_data_acceptance included: a body the document calls valid must be accepted.
    case.call_and_validate()


def _flask_path(rule: str) -> str:
    """``/x/<uuid:clip_id>`` as OpenAPI writes it: ``/x/{clip_id}``."""
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule)


def test_document_lists_every_api_route_with_its_methods(api_service):
    document = api_service.client.get("/api/v1/openapi.json").get_json()
    documented = {(path, method.upper()) for path, item in document["paths"].items() for method in item}
    served = {
        (_flask_path(rule.rule), method)
        for rule in api_service.app.url_map.iter_rules() if rule.rule.startswith("/api/")
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert documented == served


def test_document_states_the_deployments_limits(service_factory):
    service = service_factory(MAX_CLIP_SECONDS="30", MAX_VOD_SECONDS="7200", API_TOKENS="t",
                              RATE_LIMIT="60/minute", ALLOWED_SOURCE_HOSTS="vod.example")
    document = service.client.get("/api/v1/openapi.json").get_json()
    request_schema = document["components"]["schemas"]["ClipRequest"]
    assert request_schema["properties"]["end_time"]["maximum"] == 7200
    assert "30 s" in request_schema["description"]
    url_pattern = re.compile(request_schema["properties"]["vod_url"]["pattern"])
    assert url_pattern.match("https://cdn.vod.example/v/master.m3u8")
    assert not url_pattern.match("https://vod.example.evil/v/master.m3u8")
    create = document["paths"]["/api/v1/clips"]["post"]
    assert create["security"] == [{"bearerAuth": []}]
    assert {"401", "403", "413", "429"} <= set(create["responses"])
    # Dead letters are read with the token too; the clip and its job are not.
    assert document["paths"]["/api/v1/dead-letter"]["get"]["security"] == [{"bearerAuth": []}]
    assert document["paths"]["/api/v1/dead-letter/{clip_id}"]["get"]["security"] == [{"bearerAuth": []}]
    assert "security" not in document["paths"]["/api/v1/clips/{clip_id}"]["get"]


def test_document_needs_no_token_and_states_no_limit_the_deployment_does_not_set(service_factory):
    document = service_factory().client.get("/api/v1/openapi.json").get_json()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert "security" not in operation, (path, method)
            assert not {"401", "403", "429"} & set(operation["responses"]), (path, method)
