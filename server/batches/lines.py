"""The batch's two JSONL formats: reading the input file, writing the output and error files.

Input (OpenAI's): one request per line, ``{"custom_id": str, "method": "POST", "url":
"/v1/images/edits", "body": {the JSON edit body}}``. ``check_input`` reads the whole file's
structure (pure, blocking: run it in a worker thread); any structural fault fails the batch
with OpenAI's ``errors`` list (``code``, ``message``, ``line`` 1-based, ``param``). A body the
edit route would refuse is not a structural fault: that line fails alone, in the error file.

Output lines: ``{"id": "batch_req_<hex>", "custom_id", "response": {"status_code": 200,
"request_id": "req_<hex>", "body": <the synchronous route's body, byte for byte>}, "error":
null}``; error lines have the error's status and ``{"error": {...}}`` body, or, for a line that
never ran (the batch was cancelled or expired first), ``"response": null`` and ``"error":
{"code": "batch_cancelled" | "batch_expired", "message"}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .model import ENDPOINT

#: at most this many validation errors are reported (OpenAI reports a few, not thousands)
MAX_ERRORS = 100
#: the longest custom_id accepted (OpenAI's limit)
MAX_CUSTOM_ID = 512


@dataclass(frozen=True)
class InputLine:
    line: int  # 1-based, as in the errors
    custom_id: str
    #: the edit body, re-encoded as JSON for the JSON edit parser (``http/forms.parse_json``)
    body: bytes


def _error(code: str, message: str, line: int | None, param: str | None = None) -> dict:
    return {"code": code, "message": message, "line": line, "param": param}


def check_input(data: bytes, max_requests: int) -> tuple[list[InputLine], list[dict]]:
    """``(lines, errors)`` of an input file; a batch with any error fails as a whole."""
    out: list[InputLine] = []
    errors: list[dict] = []
    seen: set[str] = set()
    raw_lines = data.split(b"\n")
    for n, raw in enumerate(raw_lines, start=1):
        if len(errors) >= MAX_ERRORS:
            break
        if not raw.strip():
            continue
        if len(out) >= max_requests:
            errors.append(
                _error(
                    "too_many_requests",
                    f"The input file has more than {max_requests} requests, this server's "
                    "limit (--max-batch-requests); split it into several batches.",
                    n,
                )
            )
            break
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            errors.append(_error("invalid_json_line", "This line is not valid JSON.", n))
            continue
        if not isinstance(doc, dict):
            errors.append(_error("invalid_json_line", "Each line must be a JSON object.", n))
            continue
        custom_id = doc.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID:
            errors.append(
                _error(
                    "missing_required_parameter",
                    f"Each line needs a 'custom_id' string of 1 to {MAX_CUSTOM_ID} characters.",
                    n,
                    "custom_id",
                )
            )
            continue
        if custom_id in seen:
            errors.append(
                _error(
                    "duplicate_custom_id",
                    f"The custom_id {custom_id[:80]!r} is used by an earlier line; give each "
                    "line its own.",
                    n,
                    "custom_id",
                )
            )
            continue
        seen.add(custom_id)
        if doc.get("method") != "POST":
            errors.append(
                _error("invalid_method", "'method' must be 'POST' on every line.", n, "method")
            )
            continue
        if doc.get("url") != ENDPOINT:
            errors.append(
                _error(
                    "invalid_url",
                    f"'url' must be the batch's endpoint, {ENDPOINT!r}, on every line.",
                    n,
                    "url",
                )
            )
            continue
        body = doc.get("body")
        if not isinstance(body, dict):
            errors.append(
                _error("invalid_body", "'body' must be the edit's JSON object.", n, "body")
            )
            continue
        out.append(InputLine(n, custom_id, json.dumps(body).encode()))
    if not out and not errors:
        errors.append(_error("empty_file", "The input file has no requests.", None))
    return out, errors


def line_ids(request_id: str) -> tuple[str, str]:
    """A line's output ``id`` and its response's ``request_id``, from the stored hex."""
    return f"batch_req_{request_id}", f"req_{request_id}"


def output_line(custom_id: str, request_id: str, body: bytes) -> bytes:
    """A succeeded line; ``body`` (the stored result) is embedded as it is, not re-encoded."""
    line_id, req = line_ids(request_id)
    head = json.dumps({"id": line_id, "custom_id": custom_id})[:-1]
    return (
        f'{head}, "response": {{"status_code": 200, "request_id": "{req}", "body": '.encode()
        + body.strip()
        + b'}, "error": null}\n'
    )


def error_line(custom_id: str, request_id: str, status: int, error: dict) -> bytes:
    line_id, req = line_ids(request_id)
    doc = {
        "id": line_id,
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": req, "body": {"error": error}},
        "error": None,
    }
    return json.dumps(doc).encode() + b"\n"


def unrun_line(custom_id: str, request_id: str, code: str) -> bytes:
    why = " was cancelled" if code == "batch_cancelled" else "'s completion window ended"
    doc = {
        "id": line_ids(request_id)[0],
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": f"This request did not run: the batch{why} first."},
    }
    return json.dumps(doc).encode() + b"\n"


def error_status(error: dict) -> int:
    """The HTTP status of a failed job's stored error (jobs keep the error object, not the
    status): as ``errors.py`` and the routes give them."""
    code, kind = error.get("code"), error.get("type")
    by_code = {
        "model_not_found": 404,
        "shutting_down": 503,
        "job_uploads_expired": 410,
        "request_timeout": 408,
    }
    if code in by_code:
        return by_code[code]
    return {
        "invalid_request_error": 400,
        "rate_limit_exceeded": 429,
        "timeout": 504,
    }.get(kind, 500)
