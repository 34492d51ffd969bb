"""The server's own OpenAPI document: a superset of the user's seed spec.

Generated from the declarations, so that it cannot drift from the code: the edit form's fields
from ``protocol.EditRequest`` and OpenAI's bounds in ``protocol``; the sampling extension fields'
ranges from the loaded models' ``capabilities`` (the widest range any model accepts, since a
request names its model).
"""

from __future__ import annotations

from typing import Any

from . import openapi_files as files_and_batches
from .protocol import (
    BACKGROUNDS,
    COMPLEXITIES,
    INPUT_FIDELITIES,
    MAX_ECHO_CHARS,
    MAX_IMAGES,
    MAX_PROMPT_CHARS,
    MODERATIONS,
    OUTPUT_COMPRESSION,
    OUTPUT_FORMATS,
    PARTIAL_IMAGES,
    QUALITIES,
    RESPONSE_FORMATS,
    SEED,
    EditRequest,
    N,
    Range,
)

#: the sampling extension fields a model's capabilities bound
SAMPLING_FIELDS = ("steps", "guidance_scale", "strength")


def _widest(ranges: list[Range]) -> Range:
    lo = min(ranges, key=lambda r: r.lo)
    return Range(
        lo.lo,
        max(r.hi for r in ranges),
        integer=all(r.integer for r in ranges),
        lo_exclusive=lo.lo_exclusive,
    )


def _sampling_schemas(models: list[Any]) -> dict[str, dict]:
    """steps / guidance_scale / strength: the widest declared range over the loaded models."""
    samplings = [m.capabilities.sampling for m in models if m.capabilities.sampling is not None]
    kinds = {"steps": "integer", "guidance_scale": "number", "strength": "number"}
    out = {}
    for name in SAMPLING_FIELDS:
        ranges = [getattr(s, name) for s in samplings]
        schema = _widest(ranges).schema() if ranges else {"type": kinds[name]}
        out[name] = {
            **schema,
            "description": "Extension; read by diffusion models (see GET /v1/models).",
        }
    return out


def field_schemas(models: list[Any]) -> dict[str, dict]:
    """JSON schema of every EditRequest field."""
    return {
        "prompt": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_PROMPT_CHARS,
            "description": "What the edited region should show.",
        },
        "model": {
            "type": "string",
            "description": "A model id from GET /v1/models; default: the server's default.",
        },
        "n": {**N.schema(), "default": 1},
        "size": {
            "type": "string",
            "default": "auto",
            "description": "WIDTHxHEIGHT (multiples of 8) or auto (the input's size).",
        },
        "response_format": {
            "type": "string",
            "enum": list(RESPONSE_FORMATS),
            "default": "b64_json",
        },
        "output_format": {"type": "string", "enum": list(OUTPUT_FORMATS), "default": "png"},
        "output_compression": {
            **OUTPUT_COMPRESSION.schema(),
            "default": 100,
            "description": "JPEG/WebP quality; 100 = best quality.",
        },
        "background": {"type": "string", "enum": list(BACKGROUNDS), "default": "auto"},
        "quality": {
            "type": "string",
            "enum": list(QUALITIES),
            "default": "auto",
            "description": "Step-count preset of the model.",
        },
        "stream": {"type": "boolean", "default": False},
        "partial_images": {**PARTIAL_IMAGES.schema(), "default": 0},
        "stream_progress": {
            "type": "boolean",
            "default": False,
            "description": "Extension: with stream=true, also send image_edit.progress events "
            "(steps_done, steps_total over all the images) as the work advances.",
        },
        "user": {
            "type": "string",
            "description": "End-user id for accounting and logs when safety_identifier is empty.",
        },
        "safety_identifier": {
            "type": "string",
            "description": "End-user id (replaces user) for accounting and logs; echoed back "
            f"(first {MAX_ECHO_CHARS} characters).",
        },
        "input_fidelity": {
            "type": "string",
            "enum": list(INPUT_FIDELITIES),
            "description": "Accepted for compatibility; ignored.",
        },
        "complexity": {
            "type": "string",
            "enum": list(COMPLEXITIES),
            "description": "Accepted for compatibility; ignored.",
        },
        "moderation": {
            "type": "string",
            "enum": list(MODERATIONS),
            "description": "Accepted and validated for compatibility; this server runs no "
            "moderation model.",
        },
        "negative_prompt": {
            "type": "string",
            "description": "Extension: what to steer away from.",
        },
        "seed": {**SEED.schema(), "description": "Extension: image i uses seed + i."},
        **_sampling_schemas(models),
        "scheduler": {"type": "string", "description": "Extension: see GET /v1/models for names."},
    }


ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": "string", "nullable": True},
                "code": {"type": "string", "nullable": True},
            },
            "required": ["message", "type", "param", "code"],
        }
    },
    "required": ["error"],
}


def _error_responses(*statuses: int) -> dict:
    return {
        str(s): {
            "description": "OpenAI-shaped error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for s in statuses
    }


# ---------------------------------------------------------------- async jobs (server/jobs)

WEBHOOK_URL = {
    "type": "string",
    "format": "uri",
    "maxLength": 2048,
    "description": "Extension, with Prefer: respond-async: an http(s) URL called (Standard "
    "Webhooks signature) when the job succeeds, fails or is cancelled; public addresses only "
    "unless the server allows others.",
}
ASYNC_HEADERS = [
    {
        "name": "Prefer",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "respond-async (RFC 7240): answer 202 with a job instead of waiting "
        "(ignored with stream=true).",
    },
    {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "maxLength": 255},
        "description": "With Prefer: respond-async: the same key and request give the same "
        "job again; the same key with another request is a 422.",
    },
]
JOB = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string", "enum": ["image.edit.job"]},
        "status": {
            "type": "string",
            "enum": ["queued", "running", "succeeded", "failed", "cancelled"],
        },
        "model": {"type": "string"},
        "created_at": {"type": "integer"},
        "started_at": {"type": "integer", "nullable": True},
        "completed_at": {"type": "integer", "nullable": True},
        "expires_at": {"type": "integer", "nullable": True},
        "progress": {
            "type": "object",
            "properties": {"steps_done": {"type": "integer"}, "steps_total": {"type": "integer"}},
        },
        "attempts": {"type": "integer"},
        "cancel_requested": {"type": "boolean"},
        "webhook": {"type": "object"},
        "result": {"$ref": "#/components/schemas/ImageResponse"},
        "error": ERROR["properties"]["error"],
    },
    "required": ["id", "object", "status", "model", "created_at", "progress"],
}
#: one image of a JSON edit: a data URL, an http(s) URL (where the operator allows them) or a
#: file of /v1/files
_IMAGE_REFERENCE = {"image_url": {"type": "string"}, "file_id": {"type": "string"}}
_JOB_ANSWER = {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}}
_JOB_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
JOB_PATH = {
    "get": {
        "summary": "An async edit job (result once succeeded); per API key",
        "security": [{"BearerAuth": []}],
        "parameters": [_JOB_ID],
        "responses": {
            "200": {"description": "The job", "content": _JOB_ANSWER},
            **_error_responses(401, 404),
        },
    },
    "delete": {
        "summary": "Cancel a queued or running job (a running one stops at its next step)",
        "security": [{"BearerAuth": []}],
        "parameters": [_JOB_ID],
        "responses": {
            "200": {"description": "The cancelled job", "content": _JOB_ANSWER},
            "202": {"description": "Cancel requested, not settled yet", "content": _JOB_ANSWER},
            **_error_responses(401, 404, 409),
        },
    },
}


def openapi_document(registry: Any = None) -> dict:
    """The document for the models in ``registry`` (a ModelRegistry; None = no models)."""
    models = list(registry.models.values()) if registry is not None else []
    descriptions = field_schemas(models)
    props: dict = {
        "image": {
            "oneOf": [
                {"type": "string", "format": "binary"},
                {
                    "type": "array",
                    "items": {"type": "string", "format": "binary"},
                    "maxItems": MAX_IMAGES,
                },
            ],
            "description": "PNG, JPEG or WebP; also sent as repeated 'image[]' parts.",
        },
        "mask": {
            "type": "string",
            "format": "binary",
            "description": "Alpha 0 = edit; or white = edit when the mask has no transparency.",
        },
        "markup": {
            "type": "string",
            "format": "binary",
            "description": "A transparent PNG of the image's size: its strokes, grown by a "
            "margin, are the edit region. Not with mask.",
        },
    }
    for name in EditRequest.model_fields:
        props[name] = descriptions[name]
    props["webhook_url"] = WEBHOOK_URL
    image_item = {
        "type": "object",
        "properties": {
            "url": {"type": "string"},
            "b64_json": {"type": "string"},
            "revised_prompt": {"type": "string", "nullable": True},
        },
    }
    return {
        "openapi": "3.0.1",
        "info": {"title": "Inpainting server (OpenAI-compatible image edits)", "version": "0.1.0"},
        "paths": {
            "/v1/images/edits": {
                "post": {
                    "summary": "Edit an image according to a prompt",
                    "operationId": "createImageEdit",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "properties": props,
                                    "required": ["image", "prompt"],
                                }
                            },
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["images", "prompt"],
                                    "properties": {
                                        "images": {
                                            "type": "array",
                                            "items": {
                                                "type": "object",
                                                "properties": _IMAGE_REFERENCE,
                                            },
                                        },
                                        "mask": {
                                            "type": "object",
                                            "properties": _IMAGE_REFERENCE,
                                        },
                                        "markup": {
                                            "type": "object",
                                            "properties": _IMAGE_REFERENCE,
                                        },
                                        **{
                                            k: v
                                            for k, v in props.items()
                                            if k not in ("image", "mask", "markup")
                                        },
                                    },
                                }
                            },
                        },
                    },
                    "parameters": ASYNC_HEADERS,
                    "responses": {
                        "202": {
                            "description": "With Prefer: respond-async: the queued job "
                            "(Location: /v1/images/jobs/{id}, Preference-Applied: respond-async)",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Job"}}
                            },
                        },
                        "200": {
                            "description": "Edited images (JSON), or an SSE stream when stream=true",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/ImageResponse"}
                                },
                                "text/event-stream": {"schema": {"type": "string"}},
                            },
                        },
                        **_error_responses(400, 401, 404, 413, 422, 429, 500, 503, 504),
                    },
                    "security": [{"BearerAuth": []}],
                }
            },
            "/v1/images/jobs/{id}": JOB_PATH,
            **files_and_batches.PATHS,
            "/v1/models": {
                "get": {
                    "summary": "List models",
                    "security": [{"BearerAuth": []}],
                    "responses": {
                        "200": {"description": "OpenAI model list"},
                        **_error_responses(401),
                    },
                }
            },
            "/v1/images/files/{name}": {
                "get": {
                    "summary": "An image returned as url (expires after 60 minutes)",
                    "parameters": [
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {"200": {"description": "The image"}, **_error_responses(404)},
                }
            },
            "/health": {
                "get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}
            },
            "/ready": {
                "get": {
                    "summary": "Readiness (models loaded)",
                    "responses": {
                        "200": {"description": "ready"},
                        "503": {"description": "not ready"},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text format"}},
                }
            },
        },
        "components": {
            "schemas": {
                "ImageResponse": {
                    "type": "object",
                    "properties": {
                        "created": {"type": "integer"},
                        "data": {"type": "array", "items": image_item},
                        "background": {"type": "string"},
                        "output_format": {"type": "string"},
                        "quality": {"type": "string"},
                        "size": {"type": "string"},
                        "usage": {"type": "object"},
                    },
                },
                "Error": ERROR,
                "Job": JOB,
                **files_and_batches.SCHEMAS,
            },
            "securitySchemes": {"BearerAuth": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"BearerAuth": []}],
    }
