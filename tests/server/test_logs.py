"""Log lines cannot be forged: control characters in logged values are escaped (text), or the
line is one JSON object (json)."""

from __future__ import annotations

import json
import logging

import pytest

from server.logs import TEXT_FORMAT, EscapingFormatter, JSONFormatter, escape, setup_logging

HOSTILE = "bob\nINFO server.auth: forged line\r\x1b[31mred\x1b[0m\u2028\x00"


def record(msg: str, *args) -> logging.LogRecord:
    return logging.LogRecord("server.service", logging.INFO, __file__, 1, msg, args, None)


def test_escape_leaves_one_inert_line():
    out = escape(HOSTILE)
    assert "\n" not in out and "\r" not in out and "\x1b" not in out and "\u2028" not in out
    assert out == "bob\\nINFO server.auth: forged line\\r\\x1b[31mred\\x1b[0m\\x2028\\x00"
    assert escape("plain text, ünïcode") == "plain text, ünïcode"


def test_text_formatter_escapes_the_arguments():
    line = EscapingFormatter(TEXT_FORMAT).format(record("edit user=%s", HOSTILE))
    assert line.count("\n") == 0 and "user=bob\\nINFO" in line


def test_json_formatter_writes_one_object_per_line():
    line = JSONFormatter().format(record("edit user=%s", HOSTILE))
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["message"] == "edit user=" + HOSTILE
    assert doc["level"] == "INFO" and doc["logger"] == "server.service"


def test_setup_refuses_unknown_formats():
    with pytest.raises(ValueError, match="text or json"):
        setup_logging("INFO", "xml")
