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
RECORD = {
    "type": "object",
    "required": ["flow_id", "record_key", "status", "direction", "synced_at"],
    "properties": {
        "flow_id": {
            "type": "string",
            "format": "uuid",
            "description": "A ProcessFlow id of the key's environment.",
        },
        "record_key": {"type": "string", "minLength": 1, "maxLength": 255},
        "status": {"type": "string", "enum": ["success", "failed"]},
        "direction": {"type": "string", "enum": ["inbound", "outbound"]},
        "synced_at": {
            "type": "string",
            "format": "date-time",
            "description": "With a UTC offset; within the last 400 days.",
        },
        "message": {"type": "string", "maxLength": 500},
        "snapshot": {
            "type": ["object", "array"],
            "description": "Optional payload, at most 64 KB.",
        },
    },
}


def _json(schema):
    return {"application/json": {"schema": schema}}


def _errors(*codes):
    texts = {
        400: "Invalid request or batch (nothing stored)",
        401: "Missing, unknown or revoked API key",
        409: "Idempotency-Key reused with a different body",
        413: "Body or batch too large",
        415: "Not JSON",
    }
    return {
        str(code): {
            "description": texts[code],
            "content": _json({"$ref": "#/components/schemas/Error"}),
        }
        for code in codes
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
            "schemas": {"Error": ERROR, "Record": RECORD},
        },
        "paths": {
            "/api/v1/sync-info": {
                "post": {
                    "summary": "Report a batch of up to 5,000 Sync Info records",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": True,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 128},
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
                        **_errors(400, 401, 409, 413, 415),
                    },
                }
            },
            "/api/v1/flows": {
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
                                        "flows": {
                                            "type": "array",
                                            "items": {
                                                "type": "object",
                                                "properties": {
                                                    "id": {"type": "string", "format": "uuid"},
                                                    "name": {"type": "string"},
                                                    "status": {"type": "string"},
                                                    "pause_reason": {"type": ["string", "null"]},
                                                    "may_run": {"type": "boolean"},
                                                },
                                            },
                                        },
                                    },
                                }
                            ),
                        },
                        **_errors(401),
                    },
                }
            },
        },
    }
