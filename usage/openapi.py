"""The OpenAPI 3.1 description of the machine API, served at /api/v1/openapi.json."""

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "index": {"type": "integer"},
                    "field": {"type": ["string", "null"]},
                    "message": {"type": "string"},
                },
            },
        },
    },
}
# Postgres stores no NUL character in text or jsonb, so no string may hold one.
TEXT_WITHOUT_NUL = "^[^\\u0000]*$"
# Any JSON value whose strings and keys hold no NUL.
SNAPSHOT_VALUE = {
    "anyOf": [
        {"type": "string", "pattern": TEXT_WITHOUT_NUL},
        {"type": ["number", "boolean", "null"]},
        {"type": "array", "items": {"$ref": "#/components/schemas/SnapshotValue"}},
        {
            "type": "object",
            "propertyNames": {"pattern": TEXT_WITHOUT_NUL},
            "additionalProperties": {"$ref": "#/components/schemas/SnapshotValue"},
        },
    ]
}
RECORD = {
    "type": "object",
    "required": ["flow_id", "record_key", "status", "direction", "synced_at"],
    "properties": {
        "flow_id": {
            "type": "string",
            "format": "uuid",
            "description": "A ProcessFlow id of the key's environment.",
        },
        "record_key": {
            "type": "string",
            "minLength": 1,
            "maxLength": 255,
            # Not only spaces (ASCII ones are trimmed), and no NUL.
            "pattern": "^[^\\u0000]*[^\\u0000 \\t\\n\\r\\f\\v][^\\u0000]*$",
        },
        "status": {"type": "string", "enum": ["success", "failed"]},
        "direction": {"type": "string", "enum": ["inbound", "outbound"]},
        "synced_at": {
            "type": "string",
            "format": "date-time",
            "description": "With a UTC offset; within the last 400 days.",
        },
        "message": {"type": ["string", "null"], "maxLength": 500, "pattern": TEXT_WITHOUT_NUL},
        "snapshot": {
            "description": "Optional payload, a JSON object or array of at most 64 KB.",
            "anyOf": [
                {"type": "null"},
                {"type": "array", "items": {"$ref": "#/components/schemas/SnapshotValue"}},
                {
                    "type": "object",
                    "propertyNames": {"pattern": TEXT_WITHOUT_NUL},
                    "additionalProperties": {"$ref": "#/components/schemas/SnapshotValue"},
                },
            ],
        },
    },
}


def _json(schema):
    return {"application/json": {"schema": schema}}


ERROR_TEXTS = {
    400: "Invalid request or batch (nothing stored)",
    401: "Missing, unknown or revoked API key",
    409: "Idempotency-Key reused with a different body",
    413: "Body or batch too large",
    415: "Not JSON",
    429: "Too many requests with this key; try again after Retry-After seconds",
}
ERROR_HEADERS = {
    401: {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}},
    429: {
        "Retry-After": {
            "required": True,
            "description": "Seconds until the key may send again.",
            "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"},
        }
    },
}


def _errors(*codes):
    responses = {}
    for code in codes:
        responses[str(code)] = {
            "description": ERROR_TEXTS[code],
            "content": _json({"$ref": "#/components/schemas/Error"}),
        }
        if code in ERROR_HEADERS:
            responses[str(code)]["headers"] = ERROR_HEADERS[code]
    return responses


# Idempotency-Key: no control characters inside; spaces and tabs around it are not part of it
# (RFC 9110, section 5.5).
IDEMPOTENCY_KEY_PATTERN = (
    "^[ \\t]*[^\\x00-\\x1f\\x7f]*[^\\x00-\\x20\\x7f][^\\x00-\\x1f\\x7f]*[ \\t]*$"
)


def _sync_info_path() -> dict:
    """POST /api/v1/sync-info: one batch of Sync Info records."""
    return {
        "post": {
            "summary": "Report a batch of up to 5,000 Sync Info records",
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": True,
                    "schema": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 128,
                        "pattern": IDEMPOTENCY_KEY_PATTERN,
                    },
                    "description": "A resent batch with the same key is answered "
                    "as the first time and counted once.",
                }
            ],
            "requestBody": {
                "required": True,
                "content": _json(
                    {
                        "type": "object",
                        "required": ["records"],
                        "properties": {
                            "records": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": 5000,
                                "items": {"$ref": "#/components/schemas/Record"},
                            }
                        },
                    }
                ),
            },
            "responses": {
                "201": {
                    "description": "Stored and counted",
                    "content": _json(
                        {
                            "type": "object",
                            "properties": {
                                "batch": {"type": "integer"},
                                "accepted": {"type": "integer"},
                                "usage": {"type": "object"},
                            },
                        }
                    ),
                },
                **_errors(400, 401, 409, 413, 415, 429),
            },
        }
    }


FLOW = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "name": {"type": "string"},
        "status": {"type": "string"},
        "pause_reason": {"type": ["string", "null"]},
        "may_run": {"type": "boolean"},
    },
}


def _flows_path() -> dict:
    """GET /api/v1/flows: the environment's ProcessFlows."""
    return {
        "get": {
            "summary": "The environment's ProcessFlows and whether each may run",
            "responses": {
                "200": {
                    "description": "The flows",
                    "content": _json(
                        {
                            "type": "object",
                            "properties": {
                                "environment": {"type": "string"},
                                "flows": {"type": "array", "items": FLOW},
                            },
                        }
                    ),
                },
                **_errors(401, 429),
            },
        }
    }


def openapi_document(request) -> dict:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Machine API",
            "version": "1",
            "description": "For the integration runtime: report Sync Info (one record = one "
            "transaction) and ask which ProcessFlows may run.",
        },
        "servers": [{"url": request.build_absolute_uri("/")[:-1]}],
        "security": [{"apiKey": []}],
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": ERROR, "Record": RECORD, "SnapshotValue": SNAPSHOT_VALUE},
        },
        "paths": {
            "/api/v1/sync-info": _sync_info_path(),
            "/api/v1/flows": _flows_path(),
        },
    }
