"""`python -m server` start-up checks that need no running server."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from server.__main__ import build_parser, config_from_args, main


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="has CUDA")
def test_unavailable_provider_fails_at_start_with_install_hint(capsys):
    assert main(["--provider", "cuda", "--no-auth"]) == 2
    err = capsys.readouterr().err
    assert "not available" in err and "pip install" in err


def test_unknown_provider_is_rejected(capsys):
    assert main(["--provider", "bogus", "--no-auth"]) == 2
    assert "unknown provider" in capsys.readouterr().err


def test_env_and_flags(monkeypatch):
    monkeypatch.setenv("PORT", "9123")
    monkeypatch.setenv("API_KEYS", "sk-a, sk-b")
    monkeypatch.setenv("MAX_BATCH_SIZE", "2")
    config, generated = config_from_args(build_parser().parse_args(["--api-key", "sk-c"]))
    assert config.port == 9123 and config.host == "127.0.0.1"
    assert set(config.api_keys) == {"sk-a", "sk-b", "sk-c"} and not generated
    assert config.max_batch_size == 2
    config, _ = config_from_args(build_parser().parse_args(["--port", "1"]))
    assert config.port == 1  # a flag wins over its variable


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
    config, _ = config_from_args(build_parser().parse_args(args))
    lim = config.limits
    assert (lim.max_images, lim.max_prompt_chars, lim.max_parts) == (3, 100, 9)
    assert (lim.max_field_bytes, lim.read_timeout_s, lim.max_request_pixels) == (2048, 5.0, 1000)
