"""The OpenAPI 3.1 description of the API, served at ``/api/v1/openapi.json``.

Generated, not written: the paths and methods come from the app's URL map,
each view's answers from its :func:`operation` declaration, and every schema
from the pydantic models of :mod:`clipqueue.schemas` (``model_json_schema``,
which is JSON Schema 2020-12, the dialect of OpenAPI 3.1). The deployment's
settings shape it as they shape what is enforced: clip length and longest
VOD (from :func:`clipqueue.schemas.clip_request_model`), allowed source
hosts, which calls need a token, and which are rate limited.

Why pydantic's own generator rather than spectree or flask-openapi3: both
bind a model to a route once, at import time, so limits that are settings
could not be in the document (or in the validation) of each deployment;
both answer validation errors in their own format (a list of pydantic
errors), where the API keeps ``{"error": {"code", "message", "field"}}``; and
flask-openapi3 replaces the Flask app and blueprint classes. What they would
add is the path table, which is this module's :func:`build_document`, about
as long as their decorators' arguments.

``tests/security/test_openapi.py`` drives the API with schemathesis through
this document, checking that data it calls valid is accepted, to keep the
two in step.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify
from pydantic import BaseModel

from clipqueue.config import Settings
from clipqueue.schemas import ErrorBody, clip_request_model

openapi_bp = Blueprint("openapi", __name__, url_prefix="/api/v1")

JSON = "application/json"
COMPONENTS = "#/components/schemas/{model}"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


@dataclass(frozen=True)
class Operation:
    """What the document says about one view: its answers and what it reads.

    ``responses`` maps a status to ``(description, model)``; ``model`` None
    means the error format, ``dict`` any JSON object, a string a stream's
    media type (``""``: no body, a WebSocket's 101). ``body``: the request
    body is the clip request (its model built per deployment). ``private``
    reads need the bearer token when ``API_TOKENS`` is set, as every write does.
    ``body`` may instead be a function of the settings that returns the body's model.
    """

    operation_id: str
    responses: dict[int, tuple[str, type | str | None]]
    summary: str = ""
    body: bool | Callable[[Settings], type[BaseModel]] = False
    query: type[BaseModel] | None = None
    headers: tuple[dict[str, Any], ...] = ()
    private: bool = False
    backend: bool = True  # reads Redis or the database: may answer 503
    rate_limited: bool = True

    def needs_token(self, method: str) -> bool:
        return self.private or method not in SAFE_METHODS


def operation(operation_id: str, responses: dict[int, tuple[str, type | None]], **options) -> Callable:
    """Declare a view's part of the document (see :class:`Operation`)."""

    def attach(view: Callable) -> Callable:
        summary = view.__doc__.strip().splitlines()[0] if view.__doc__ else ""
        view.openapi = Operation(operation_id, responses, summary=summary, **options)
        return view

    return attach


def view_operation(app: Flask, endpoint: str | None) -> Operation | None:
    """The :class:`Operation` of the view serving ``endpoint``, if it declared one."""
    view = app.view_functions.get(endpoint) if endpoint else None
    return getattr(view, "openapi", None)


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    return {JSON: {"schema": schema}}


def _ref(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    """A reference to ``model``, adding it (and the models it uses) to ``schemas``."""
    schema = model.model_json_schema(ref_template=COMPONENTS)
    schemas.update(schema.pop("$defs", {}))
    name = schema.get("title", model.__name__)
    schemas[name] = schema
    return {"$ref": COMPONENTS.format(model=name)}


def _path(rule: str) -> tuple[str, list[str]]:
    """``/x/<uuid:clip_id>`` as OpenAPI writes it, ``/x/{clip_id}``, and its variables."""
    variables = re.findall(r"<(?:\w+:)?(\w+)>", rule)
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule), variables


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=COMPONENTS)
    required = set(schema.get("required", ()))
    return [{"name": name, "in": "query", "required": name in required, "schema": prop}
            for name, prop in schema["properties"].items()]


def _operation_document(op: Operation, method: str, variables: list[str], settings: Settings,
                        schemas: dict[str, Any]) -> dict[str, Any]:
    error = _ref(ErrorBody, schemas)
    responses: dict[str, Any] = {}
    for status, (description, model) in op.responses.items():
        if isinstance(model, str):
            # A stream: its media type (text/event-stream), or none for a WebSocket's 101.
            content = {model: {"schema": {"type": "string"}}} if model else {}
            responses[str(status)] = {"description": description, **({"content": content} if content else {})}
            continue
        schema = error if model is None else {"type": "object"} if model is dict else _ref(model, schemas)
        responses[str(status)] = {"description": description, "content": _content(schema)}
    needs_token = bool(settings.api_tokens) and op.needs_token(method)
    if needs_token:
        responses["401"] = {"description": "no bearer token", "content": _content(error)}
        responses["403"] = {"description": "the bearer token is not valid", "content": _content(error)}
    write = method not in SAFE_METHODS
    if write:
        responses["413"] = {"description": f"the body is larger than {settings.max_request_bytes} bytes",
                            "content": _content(error)}
    limit = settings.rate_limit if write else settings.rate_limit_reads
    if op.rate_limited and limit:
        responses["429"] = {"description": f"rate limit exceeded ({limit})", "content": _content(error)}
    if op.backend:
        responses["503"] = {"description": "Redis or the database is unavailable (code redis_unavailable "
                                           "or database_unavailable); try again", "content": _content(error)}
    document: dict[str, Any] = {"operationId": op.operation_id}
    if op.summary:
        document["summary"] = op.summary
    if needs_token:
        document["security"] = [{"bearerAuth": []}]
    parameters = [{"name": name, "in": "path", "required": True,
                   "description": f"The {'clip' if name == 'clip_id' else name.removesuffix('_id')}'s UUID, "
                                  "in any spelling Python's uuid.UUID reads; anything else is answered 404.",
                   "schema": {"type": "string"}} for name in variables]
    parameters += list(op.headers)
    if op.query is not None:
        parameters += _query_parameters(op.query)
    if parameters:
        document["parameters"] = parameters
    if op.body:
        body = clip_request_model(settings) if op.body is True else op.body(settings)
        document["requestBody"] = {"required": True, "content": _content(_ref(body, schemas))}
    document["responses"] = responses
    return document


def build_document(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app``'s API, with its deployment's limits."""
    settings: Settings = app.config["CLIPQUEUE"]
    schemas: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        op = view_operation(app, rule.endpoint)
        if not rule.rule.startswith("/api/") or op is None:
            continue
        path, variables = _path(rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation_document(
                op, method, variables, settings, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "clipqueue",
            "version": "1",
            "description": "Cut clips out of VODs: create a clip, then follow its job until it is ready.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "one of API_TOKENS"}},
        },
    }


@openapi_bp.get("/openapi.json")
@operation("getOpenAPI", {200: ("this document", dict)}, backend=False, rate_limited=False)
def openapi_document():
    """This document."""
    return jsonify(build_document(current_app))
