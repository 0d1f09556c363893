"""The OpenAPI document matches the real API: schemathesis drives the app through it."""

from __future__ import annotations

import re

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

TOKEN = "schema-token"


@pytest.fixture
def api_service(service_factory, fake_dns):
    # The only source host accepted "resolves" to a public address; no worker runs, so nothing is fetched.
    fake_dns({"vod.example": ["93.184.216.34"]})
    return service_factory(
        ALLOW_PRIVATE_SOURCES="false", ALLOWED_SOURCE_HOSTS="vod.example", API_TOKENS=TOKEN,
        RATE_LIMIT="0", RATE_LIMIT_READS="0",
    )


@pytest.fixture
def api_schema(api_service):
    return schemathesis.openapi.from_wsgi("/api/v1/openapi.json", api_service.app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_answers_as_its_openapi_document_says(case):
    excluded = []
    if case.operation.definition.raw.get("operationId") == "createClip":
        # A body can match the schema and still be refused: end_time <= start_time, a clip
        # length outside the limits, or a source the policy forbids. Those are 400s the
        # document lists; the schema cannot express them.
        excluded.append(schemathesis.checks.positive_data_acceptance)
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, excluded_checks=excluded)


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
    service = service_factory(MAX_CLIP_SECONDS="30", MAX_VOD_SECONDS="7200", API_TOKENS="t", RATE_LIMIT="60/minute")
    document = service.client.get("/api/v1/openapi.json").get_json()
    request_schema = document["components"]["schemas"]["ClipRequest"]
    assert request_schema["properties"]["end_time"]["maximum"] == 7200
    assert "30 s" in request_schema["description"]
    create = document["paths"]["/api/v1/clips"]["post"]
    assert create["security"] == [{"bearerAuth": []}]
    assert {"401", "403", "413", "429"} <= set(create["responses"])
