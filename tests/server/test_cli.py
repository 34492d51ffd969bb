"""`python -m server` start-up and the configuration generated from config.py's declarations."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import onnxruntime as ort
import pytest

from server.__main__ import main
from server.cli import build_parser, config_from_args, config_table, settings
from server.config import ENV_PREFIX, ServerConfig, make_config, without_server_env

CONFIG_DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="has CUDA")
def test_unavailable_provider_fails_at_start_with_install_hint(capsys):
    assert main(["--provider", "cuda", "--no-auth"]) == 2
    err = capsys.readouterr().err
    assert "not available" in err and "pip install" in err


def test_unknown_provider_is_rejected(capsys):
    assert main(["--provider", "bogus", "--no-auth"]) == 2
    assert "unknown provider" in capsys.readouterr().err


def test_bad_environment_value_is_rejected(capsys, monkeypatch):
    monkeypatch.setenv("INPAINT_PORT", "eighty")
    assert main(["--no-auth"]) == 2
    assert "INPAINT_PORT" in capsys.readouterr().err


def test_env_and_flags():
    env = {"INPAINT_PORT": "9123", "INPAINT_API_KEYS": "sk-a, sk-b", "INPAINT_MAX_BATCH_SIZE": "2"}
    config, generated = config_from_args(build_parser(env).parse_args(["--api-key", "sk-c"]))
    assert config.http.port == 9123 and config.http.host == "127.0.0.1"
    assert set(config.auth.api_keys) == {"sk-a", "sk-b", "sk-c"} and not generated
    assert config.batching.max_batch_size == 2
    config, _ = config_from_args(build_parser(env).parse_args(["--port", "1"]))
    assert config.http.port == 1  # a flag wins over its variable


def test_unprefixed_variables_are_not_read():
    config, _ = config_from_args(build_parser({"PORT": "9123", "NO_AUTH": "1"}).parse_args([]))
    assert config.http.port == 8000 and not config.auth.no_auth


def test_limit_flags_reach_the_config():
    args = [
        "--max-images",
        "3",
        "--max-prompt-chars",
        "100",
        "--max-parts",
        "9",
        "--max-field-kb",
        "2",
        "--read-timeout",
        "5",
        "--max-request-pixels",
        "1000",
    ]
    config, _ = config_from_args(build_parser({}).parse_args(args))
    lim = config.limits
    assert (lim.max_images, lim.max_prompt_chars, lim.max_parts) == (3, 100, 9)
    assert (lim.max_field_bytes, lim.read_timeout, lim.max_request_pixels) == (2048, 5.0, 1000)


def test_every_field_is_a_setting_with_a_unique_flag_and_prefixed_env():
    """One declaration per setting: each config field has exactly one flag and one variable."""
    all_fields = [
        (section.name, f.name)
        for section in dataclasses.fields(ServerConfig)
        for f in dataclasses.fields(section.default_factory)
    ]
    found = settings()
    assert [(s.section, s.name) for s in found] == all_fields
    assert len({s.name for s in found}) == len(found)  # make_config routes flat names
    assert len({s.flag for s in found}) == len({s.env for s in found}) == len(found)
    assert all(s.env.startswith(ENV_PREFIX) for s in found)


def test_defaults_come_from_the_dataclasses():
    args = build_parser({}).parse_args(["--no-auth"])
    config, _ = config_from_args(args)
    assert config == make_config(no_auth=True)


def test_help_lists_every_flag_and_variable():
    text = build_parser({}).format_help()
    for s in settings():
        assert s.flag in text and s.env in text


def test_configuration_table_is_the_generated_one():
    """docs/configuration.md's table is ``python -m server.cli``'s output, verbatim."""
    doc = CONFIG_DOC.read_text()
    block = re.search(r"<!-- config-table -->\n(.*?)<!-- /config-table -->", doc, re.S)
    assert block, "docs/configuration.md lacks the <!-- config-table --> block"
    assert block.group(1) == config_table(), (
        "regenerate it: python -m server.cli docs/configuration.md"
    )


def test_harness_environment_drops_every_setting():
    env = {s.env: "x" for s in settings()} | {"PATH": "/bin", "HOME": "/root"}
    assert without_server_env(env) == {"PATH": "/bin", "HOME": "/root"}


def test_binds_to_loopback_by_default(monkeypatch):
    monkeypatch.delenv("HOST", raising=False)
    assert ServerConfig().http.host == "127.0.0.1"
    assert build_parser({}).parse_args([]).__dict__["http.host"] == "127.0.0.1"


def test_unknown_prefixed_variables_are_reported(capsys, monkeypatch):
    from server.cli import unknown_variables

    env = {"INPAINT_PORT": "1", "INPAINT_MAX_QUEU": "3", "PORT": "2"}
    assert unknown_variables(env) == ["INPAINT_MAX_QUEU"]
    monkeypatch.setenv("INPAINT_MAX_QUEU", "3")
    monkeypatch.setenv("INPAINT_PROVIDER", "bogus")
    assert main([]) == 2  # (stops at the bogus provider, after the warning)
    assert "INPAINT_MAX_QUEU is not a setting" in capsys.readouterr().err
