"""The server's own OpenAPI document: a superset of the user's seed spec.

The edit form's properties are generated from ``protocol.EditRequest`` so that the document
cannot drift from the code (a test checks every field is described).
"""

from __future__ import annotations

from .protocol import (
    BACKGROUNDS,
    MAX_N,
    MAX_PARTIAL_IMAGES,
    OUTPUT_FORMATS,
    QUALITIES,
    RESPONSE_FORMATS,
    EditRequest,
)

DESCRIPTIONS: dict[str, dict] = {
    "prompt": {
        "type": "string",
        "minLength": 1,
        "maxLength": 32000,
        "description": "What the edited region should show.",
    },
    "model": {
        "type": "string",
        "description": "A model id from GET /v1/models; default: the server's default.",
    },
    "n": {"type": "integer", "minimum": 1, "maximum": MAX_N, "default": 1},
    "size": {
        "type": "string",
        "default": "auto",
        "description": "WIDTHxHEIGHT (multiples of 8) or auto (the input's size).",
    },
    "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS), "default": "b64_json"},
    "output_format": {"type": "string", "enum": list(OUTPUT_FORMATS), "default": "png"},
    "output_compression": {
        "type": "integer",
        "minimum": 0,
        "maximum": 100,
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
    "partial_images": {
        "type": "integer",
        "minimum": 0,
        "maximum": MAX_PARTIAL_IMAGES,
        "default": 0,
    },
    "user": {"type": "string", "description": "End-user id, logged for accounting."},
    "input_fidelity": {"type": "string", "description": "Accepted for compatibility; ignored."},
    "negative_prompt": {"type": "string", "description": "Extension: what to steer away from."},
    "seed": {"type": "integer", "minimum": 0, "description": "Extension: image i uses seed + i."},
    "steps": {"type": "integer", "minimum": 1, "maximum": 150, "description": "Extension."},
    "guidance_scale": {"type": "number", "minimum": 0, "maximum": 30, "description": "Extension."},
    "strength": {
        "type": "number",
        "minimum": 0,
        "exclusiveMinimum": True,
        "maximum": 1,
        "description": "Extension.",
    },  # OpenAPI 3.0: exclusiveMinimum is a boolean
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


def openapi_document() -> dict:
    props: dict = {
        "image": {
            "oneOf": [
                {"type": "string", "format": "binary"},
                {"type": "array", "items": {"type": "string", "format": "binary"}, "maxItems": 16},
            ],
            "description": "PNG, JPEG or WebP; also sent as repeated 'image[]' parts.",
        },
        "mask": {
            "type": "string",
            "format": "binary",
            "description": "Alpha 0 = edit; or white = edit when the mask has no transparency.",
        },
    }
    for name in EditRequest.model_fields:
        props[name] = DESCRIPTIONS[name]
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
                                                "properties": {"image_url": {"type": "string"}},
                                            },
                                        },
                                        "mask": {
                                            "type": "object",
                                            "properties": {"image_url": {"type": "string"}},
                                        },
                                        **{
                                            k: v
                                            for k, v in props.items()
                                            if k not in ("image", "mask")
                                        },
                                    },
                                }
                            },
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "Edited images (JSON), or an SSE stream when stream=true",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/ImageResponse"}
                                },
                                "text/event-stream": {"schema": {"type": "string"}},
                            },
                        },
                        **_error_responses(400, 401, 404, 413, 429, 500, 503, 504),
                    },
                    "security": [{"BearerAuth": []}],
                }
            },
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
            },
            "securitySchemes": {"BearerAuth": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"BearerAuth": []}],
    }
