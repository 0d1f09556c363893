"""The OpenAPI 3 description of the API, served at ``/api/v1/openapi.json``.

Built from the deployment's settings, so the limits it states (clip length,
longest VOD, whether a token is needed, rate limits) are the ones enforced.
``tests/security/test_openapi.py`` runs schemathesis against it to keep the
two in step.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify

from clipqueue import defaults
from clipqueue.config import Settings
from clipqueue.validation import MODES, QUALITIES

openapi_bp = Blueprint("openapi", __name__, url_prefix="/api/v1")

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref("Error")}}}


def _ok(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref(schema)}}}


CLIP_ID = {
    "name": "clip_id", "in": "path", "required": True,
    "description": "The clip's UUID; anything else is answered 404.",
    "schema": {"type": "string"},
}


def _schemas(settings: Settings) -> dict[str, Any]:
    number = {"type": "number", "minimum": 0}
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message", "field"],
                    "properties": {
                        "code": {"type": "string", "description": "machine-readable, e.g. invalid_field, forbidden_source"},
                        "message": {"type": "string"},
                        "field": _nullable({"type": "string", "description": "the request field at fault"}),
                    },
                },
            },
        },
        "ClipRequest": {
            "type": "object",
            "required": ["vod_url", "start_time", "end_time"],
            "description": (
                f"end_time must be greater than start_time; the clip lasts {settings.min_clip_seconds:g} to "
                f"{settings.max_clip_seconds:g} s. Unknown fields are ignored."
            ),
            "example": {
                "vod_url": "https://vod.example/videos/1234/master.m3u8",
                "start_time": 10.0, "end_time": 25.0, "quality": "720p", "title": "nice play",
            },
            "properties": {
                "vod_url": {
                    "type": "string", "minLength": 1, "maxLength": defaults.MAX_URL_LENGTH,
                    "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://[^\\s]+$",
                    "description": (
                        "An HLS playlist (master or media) or an MP4/TS file over http(s). "
                        "Refused with code forbidden_source when the source policy forbids it."
                    ),
                },
                "start_time": {**number, "description": "seconds into the VOD"},
                "end_time": {**number, "maximum": settings.max_vod_seconds, "description": "seconds into the VOD"},
                # null means the default, as when the field is left out.
                "quality": _nullable({"type": "string", "enum": [*QUALITIES, None], "default": "auto"}),
                "mode": _nullable({"type": "string", "enum": [*MODES, None], "default": "accurate"}),
                "title": _nullable({
                    "type": "string", "minLength": 1, "maxLength": defaults.MAX_TITLE_LENGTH,
                    "description": "trimmed; must not be blank or contain control characters",
                }),
            },
        },
        "Clip": {
            "type": "object",
            "required": ["clip_id", "id", "vod_url", "start_time", "end_time", "quality", "mode", "status",
                         "created_at", "updated_at"],
            "properties": {
                "clip_id": {"type": "string", "format": "uuid"},
                "id": {"type": "string", "format": "uuid"},
                "vod_url": {"type": "string"},
                "start_time": {"type": "number"},
                "end_time": {"type": "number"},
                "quality": {"type": "string", "enum": list(QUALITIES)},
                "quality_used": _nullable({"type": "string"}),
                "mode": {"type": "string", "enum": list(MODES)},
                "title": _nullable({"type": "string"}),
                "status": {"type": "string", "enum": ["processing", "ready", "failed"]},
                "video_url": _nullable({"type": "string"}),
                "thumbnail_url": _nullable({"type": "string"}),
                "duration": _nullable({"type": "number"}),
                "actual_start_time": _nullable({"type": "number"}),
                "actual_end_time": _nullable({"type": "number"}),
                "width": _nullable({"type": "integer"}),
                "height": _nullable({"type": "integer"}),
                "size_bytes": _nullable({"type": "integer"}),
                "muted_ranges": {
                    "type": "array",
                    "items": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
                },
                "extraction_method": _nullable({"type": "string"}),
                "error": _nullable({"type": "string"}),
                "created_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
                "processed_at": _nullable({"type": "string", "format": "date-time"}),
            },
        },
        "Job": {
            "type": "object",
            "description": "The job's metadata in Redis (clip_extraction_job:{clip_id}).",
            "required": ["status", "clip_id"],
            "properties": {
                "status": {"type": "string", "enum": ["queued", "running", "retrying", "completed", "failed"]},
                "clip_id": {"type": "string"},
                "queued_at": _nullable({"type": "string"}),
                "vod_url": _nullable({"type": "string"}),
                "start_time": _nullable({"type": "number"}),
                "end_time": _nullable({"type": "number"}),
                "quality": _nullable({"type": "string"}),
                "started_at": _nullable({"type": "string"}),
                "stage": _nullable({"type": "string"}),
                "progress": _nullable({"type": "integer", "minimum": 0, "maximum": 100}),
                "attempts": _nullable({"type": "integer"}),
                "worker": _nullable({"type": "string"}),
                "completed_at": _nullable({"type": "string"}),
                "error": _nullable({"type": "string"}),
            },
        },
        "QueueCounts": {
            "type": "object",
            "required": ["pending", "dead_letter", "not_yet_queued"],
            "properties": {
                "pending": {"type": "integer", "minimum": 0, "description": "jobs waiting in clip_extraction_jobs"},
                "dead_letter": {"type": "integer", "minimum": 0},
                "not_yet_queued": {"type": "integer", "minimum": 0,
                                   "description": "clips whose job waits for Redis to come back"},
            },
        },
        "DeadLetters": {
            "type": "object",
            "required": ["count", "jobs"],
            "properties": {
                "count": {"type": "integer", "minimum": 0},
                "jobs": {"type": "array", "items": _ref("DeadLetter")},
            },
        },
        "DeadLetter": {
            "type": "object",
            "required": ["clip_id", "error", "attempts"],
            "properties": {
                "clip_id": {"type": "string"},
                "payload": {"type": "object"},
                "error": {"type": "string"},
                "traceback": {"type": "string"},
                "attempts": {"type": "integer"},
                "failed_at": {"type": "string"},
            },
        },
        "ReplayAll": {
            "type": "object",
            "required": ["replayed", "count"],
            "properties": {
                "replayed": {"type": "array", "items": {"type": "string"}},
                "count": {"type": "integer", "minimum": 0},
            },
        },
        "Purged": {
            "type": "object",
            "required": ["purged"],
            "properties": {"purged": {"type": "integer", "minimum": 0}},
        },
        "Replay": {
            "type": "object",
            "required": ["clip_id", "replayed", "status"],
            "properties": {
                "clip_id": {"type": "string"},
                "replayed": {"type": "boolean", "description": "false when the job was not dead-lettered"},
                "status": {"type": "string", "enum": ["processing", "ready", "failed"]},
            },
        },
    }


def build_document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.0 document of this deployment's API."""
    limited = {"429": _error("rate limit exceeded (RATE_LIMIT / RATE_LIMIT_READS)")}
    read_limited = limited if settings.rate_limit_reads else {}
    write_limited = limited if settings.rate_limit else {}
    write_security = [{"bearerAuth": []}] if settings.api_tokens else [{}]
    auth_errors = {
        "401": _error("no bearer token"),
        "403": _error("the bearer token is not valid"),
    } if settings.api_tokens else {}
    redis_down = {"503": _error("Redis is unavailable")}
    not_found = {"404": _error("no such clip")}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "clipqueue",
            "version": "1",
            "description": "Cut clips out of VODs: create a clip, then follow its job until it is ready.",
        },
        "servers": [{"url": "/"}],
        "paths": {
            "/api/v1/clips": {
                "post": {
                    "operationId": "createClip",
                    "summary": "Validate, record the clip as processing and queue its job",
                    "security": write_security,
                    "parameters": [{
                        "name": "Idempotency-Key", "in": "header", "required": False,
                        "description": "Retrying the same POST with the same key returns the first clip (200).",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                    }],
                    "requestBody": {"required": True, "content": {JSON: {"schema": _ref("ClipRequest")}}},
                    "responses": {
                        "201": {
                            **_ok("the clip, still processing", "Clip"),
                            "headers": {"Location": {"schema": {"type": "string"}}},
                        },
                        "200": {
                            **_ok("the clip an earlier POST with this Idempotency-Key made", "Clip"),
                            "headers": {"Location": {"schema": {"type": "string"}}},
                        },
                        "409": _error("the Idempotency-Key was used for a different clip"),
                        "400": _error("a field is missing or invalid (error.field names it), or the body is not JSON"),
                        **auth_errors,
                        "413": _error(f"the body is larger than {settings.max_request_bytes} bytes"),
                        **write_limited,
                    },
                },
            },
            "/api/v1/clips/{clip_id}": {
                "get": {
                    "operationId": "getClip",
                    "parameters": [CLIP_ID],
                    "responses": {"200": _ok("the clip", "Clip"), **not_found, **read_limited},
                },
            },
            "/api/v1/clips/{clip_id}/job": {
                "get": {
                    "operationId": "getJob",
                    "parameters": [CLIP_ID],
                    "responses": {
                        "200": _ok("the job's metadata", "Job"),
                        "404": _error("no such clip, or no job metadata (not queued yet, or expired)"),
                        **redis_down, **read_limited,
                    },
                },
            },
            "/api/v1/queue": {
                "get": {
                    "operationId": "getQueueCounts",
                    "responses": {"200": _ok("jobs waiting", "QueueCounts"), **redis_down, **read_limited},
                },
            },
            "/api/v1/dead-letter": {
                "delete": {
                    "operationId": "purgeDeadLetters",
                    "summary": "Drop every dead-lettered job (their clips stay failed)",
                    "security": write_security,
                    "responses": {
                        "200": _ok("how many were dropped", "Purged"),
                        **auth_errors,
                        "413": _error(f"the body is larger than {settings.max_request_bytes} bytes"),
                        **redis_down, **write_limited,
                    },
                },
                "get": {
                    "operationId": "listDeadLetters",
                    "parameters": [{
                        "name": "limit", "in": "query", "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                    }],
                    "responses": {
                        "200": _ok("jobs that failed for good, oldest first", "DeadLetters"),
                        "400": _error("limit is not 1 to 1000"),
                        **redis_down, **read_limited,
                    },
                },
            },
            "/api/v1/dead-letter/{clip_id}": {
                "get": {
                    "operationId": "showDeadLetter",
                    "parameters": [{**CLIP_ID, "schema": {"type": "string", "format": "uuid"}}],
                    "responses": {
                        "200": _ok("the dead-lettered job, with its traceback", "DeadLetter"),
                        "404": _error("the clip is not in the dead-letter queue"),
                        **redis_down, **read_limited,
                    },
                },
            },
            "/api/v1/dead-letter/replay": {
                "post": {
                    "operationId": "replayAllDeadLetters",
                    "summary": "Queue every dead-lettered job again",
                    "security": write_security,
                    "responses": {
                        "202": _ok("the clips queued again", "ReplayAll"),
                        "200": _ok("nothing was dead-lettered", "ReplayAll"),
                        **auth_errors,
                        "413": _error(f"the body is larger than {settings.max_request_bytes} bytes"),
                        **redis_down, **write_limited,
                    },
                },
            },
            "/api/v1/dead-letter/{clip_id}/replay": {
                "post": {
                    "operationId": "replayDeadLetter",
                    "summary": "Queue a dead-lettered job again; replaying twice does no harm",
                    "security": write_security,
                    "parameters": [CLIP_ID],
                    "responses": {
                        "202": _ok("queued again", "Replay"),
                        "200": _ok("nothing to replay (not dead-lettered)", "Replay"),
                        **not_found, **auth_errors,
                        "413": _error(f"the body is larger than {settings.max_request_bytes} bytes"),
                        **redis_down, **write_limited,
                    },
                },
            },
            "/api/v1/openapi.json": {
                "get": {
                    "operationId": "getOpenAPI",
                    "responses": {"200": {"description": "this document", "content": {JSON: {"schema": {"type": "object"}}}}},
                },
            },
        },
        "components": {
            "schemas": _schemas(settings),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "one of API_TOKENS"}},
        },
    }


@openapi_bp.get("/openapi.json")
def openapi_document():
    return jsonify(build_document(current_app.config["CLIPQUEUE"]))
