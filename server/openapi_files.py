"""The OpenAPI paths and schemas of ``/v1/files`` and ``/v1/batches`` (merged into the
server's document by ``openapi.py``): OpenAI's shapes, as the SDKs parse them."""

from __future__ import annotations

from .jobs.database import BATCH_EVENTS


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _errors(*statuses: int) -> dict:
    return {
        str(s): {"description": "OpenAI-shaped error", "content": _json(_ref("Error"))}
        for s in statuses
    }


def _list_of(name: str) -> dict:
    return {
        "type": "object",
        "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": _ref(name)},
            "first_id": {"type": "string", "nullable": True},
            "last_id": {"type": "string", "nullable": True},
            "has_more": {"type": "boolean"},
        },
    }


_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_AUTH = [{"BearerAuth": []}]
_STAMP = {"type": "integer", "nullable": True}

FILE = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string", "enum": ["file"]},
        "bytes": {"type": "integer"},
        "created_at": {"type": "integer"},
        "expires_at": {"type": "integer"},
        "filename": {"type": "string"},
        "purpose": {"type": "string", "enum": ["batch", "vision", "batch_output"]},
        "status": {"type": "string", "enum": ["processed"]},
        "status_details": {"type": "string", "nullable": True},
    },
    "required": ["id", "object", "bytes", "created_at", "filename", "purpose", "status"],
}

BATCH = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string", "enum": ["batch"]},
        "endpoint": {"type": "string", "enum": ["/v1/images/edits"]},
        "model": {"type": "string", "nullable": True},
        "errors": {
            "type": "object",
            "nullable": True,
            "properties": {
                "object": {"type": "string", "enum": ["list"]},
                "data": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "code": {"type": "string"},
                            "message": {"type": "string"},
                            "line": {"type": "integer", "nullable": True},
                            "param": {"type": "string", "nullable": True},
                        },
                    },
                },
            },
        },
        "input_file_id": {"type": "string"},
        "completion_window": {"type": "string", "enum": ["24h"]},
        "status": {
            "type": "string",
            "enum": [
                "validating",
                "failed",
                "in_progress",
                "finalizing",
                "completed",
                "expired",
                "cancelling",
                "cancelled",
            ],
        },
        "output_file_id": {"type": "string", "nullable": True},
        "error_file_id": {"type": "string", "nullable": True},
        "created_at": {"type": "integer"},
        **{f"{event}_at": _STAMP for event in BATCH_EVENTS if event != "created"},
        "request_counts": {
            "type": "object",
            "properties": {
                "total": {"type": "integer"},
                "completed": {"type": "integer"},
                "failed": {"type": "integer"},
            },
        },
        "metadata": {
            "type": "object",
            "nullable": True,
            "additionalProperties": {"type": "string", "maxLength": 512},
        },
    },
    "required": ["id", "object", "endpoint", "input_file_id", "completion_window", "status"],
}

PATHS = {
    "/v1/files": {
        "post": {
            "summary": "Upload a file (purpose batch: a batch's JSONL input; vision: an image "
            "for file_id references); per API key",
            "security": _AUTH,
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file", "purpose"],
                            "properties": {
                                "file": {"type": "string", "format": "binary"},
                                "purpose": {"type": "string", "enum": ["batch", "vision"]},
                                "expires_after[anchor]": {
                                    "type": "string",
                                    "enum": ["created_at"],
                                },
                                "expires_after[seconds]": {"type": "integer", "minimum": 1},
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": {"description": "The file", "content": _json(_ref("File"))},
                **_errors(400, 401, 408, 413, 429),
            },
        },
        "get": {
            "summary": "This API key's files, newest first",
            "security": _AUTH,
            "parameters": [
                {"name": n, "in": "query", "required": False, "schema": s}
                for n, s in (
                    ("purpose", {"type": "string"}),
                    ("limit", {"type": "integer", "minimum": 1, "maximum": 10000}),
                    ("after", {"type": "string"}),
                    ("order", {"type": "string", "enum": ["asc", "desc"]}),
                )
            ],
            "responses": {
                "200": {"description": "A page of files", "content": _json(_list_of("File"))},
                **_errors(400, 401),
            },
        },
    },
    "/v1/files/{id}": {
        "get": {
            "summary": "A file",
            "security": _AUTH,
            "parameters": [_ID],
            "responses": {
                "200": {"description": "The file", "content": _json(_ref("File"))},
                **_errors(401, 404),
            },
        },
        "delete": {
            "summary": "Delete a file",
            "security": _AUTH,
            "parameters": [_ID],
            "responses": {
                "200": {
                    "description": "Deleted",
                    "content": _json(
                        {
                            "type": "object",
                            "properties": {
                                "id": {"type": "string"},
                                "object": {"type": "string", "enum": ["file"]},
                                "deleted": {"type": "boolean"},
                            },
                        }
                    ),
                },
                **_errors(401, 404),
            },
        },
    },
    "/v1/files/{id}/content": {
        "get": {
            "summary": "A file's bytes",
            "security": _AUTH,
            "parameters": [_ID],
            "responses": {
                "200": {
                    "description": "The bytes",
                    "content": {"application/octet-stream": {"schema": {"type": "string"}}},
                },
                **_errors(401, 404, 429),
            },
        }
    },
    "/v1/batches": {
        "post": {
            "summary": "Run a JSONL file of JSON edit bodies as a batch (lower priority than "
            "interactive requests)",
            "security": _AUTH,
            "requestBody": {
                "required": True,
                "content": _json(
                    {
                        "type": "object",
                        "required": ["input_file_id", "endpoint", "completion_window"],
                        "properties": {
                            "input_file_id": {"type": "string"},
                            "endpoint": {"type": "string", "enum": ["/v1/images/edits"]},
                            "completion_window": {"type": "string", "enum": ["24h"]},
                            "metadata": BATCH["properties"]["metadata"],
                        },
                    }
                ),
            },
            "responses": {
                "200": {"description": "The batch", "content": _json(_ref("Batch"))},
                **_errors(400, 401, 404),
            },
        },
        "get": {
            "summary": "This API key's batches, newest first",
            "security": _AUTH,
            "parameters": [
                {"name": n, "in": "query", "required": False, "schema": s}
                for n, s in (
                    ("limit", {"type": "integer", "minimum": 1, "maximum": 100}),
                    ("after", {"type": "string"}),
                )
            ],
            "responses": {
                "200": {"description": "A page of batches", "content": _json(_list_of("Batch"))},
                **_errors(400, 401),
            },
        },
    },
    "/v1/batches/{id}": {
        "get": {
            "summary": "A batch",
            "security": _AUTH,
            "parameters": [_ID],
            "responses": {
                "200": {"description": "The batch", "content": _json(_ref("Batch"))},
                **_errors(401, 404),
            },
        }
    },
    "/v1/batches/{id}/cancel": {
        "post": {
            "summary": "Cancel a validating or in-progress batch",
            "security": _AUTH,
            "parameters": [_ID],
            "responses": {
                "200": {"description": "The batch, cancelling", "content": _json(_ref("Batch"))},
                **_errors(401, 404, 409),
            },
        }
    },
}

SCHEMAS = {"File": FILE, "Batch": BATCH}
