"""Keys: constant-time check over several keys, keys files, generated keys, CLI config."""

from __future__ import annotations

import hashlib
import re

import pytest

from server import auth
from server.auth import KeyStore, generate_key, read_keys_file
from server.cli import build_parser, config_from_args


def test_check_several_keys():
    ks = KeyStore(["sk-one", "sk-two", "sk-three"])
    assert len(ks) == 3
    for k in ("sk-one", "sk-two", "sk-three"):
        assert ks.check(k)
    for k in ("sk-on", "sk-one ", "SK-ONE", "sk-four", "", "sk-one\x00", "sk-twosk-three"):
        assert not ks.check(k)


def test_empty_keys_are_dropped():
    ks = KeyStore(["", "sk-a", ""])
    assert len(ks) == 1
    assert not ks.check("")
    assert len(KeyStore([])) == 0 and not KeyStore([]).check("anything")


def test_unicode_and_odd_keys():
    ks = KeyStore(["ключ-✓", "sk-a"])
    assert ks.check("ключ-✓")
    assert not ks.check("\udcff")  # lone surrogate: no crash, just no match


def test_compare_is_constant_time_and_checks_every_key(monkeypatch):
    """Every known key is compared (no early exit), always with hmac.compare_digest over
    fixed-length digests, so timing depends on neither content nor length."""
    calls = []
    real = auth.hmac.compare_digest

    def spy(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    ks = KeyStore(["sk-a", "sk-much-longer-key", "sk-c"])
    for presented in ("sk-a", "x", "sk-c", "y" * 500, "x" * 10_000, ""):
        calls.clear()
        ks.check(presented)
        assert calls == [(32, 32)] * 3


def test_key_id_is_not_the_key():
    ks = KeyStore(["sk-secret"])
    kid = ks.key_id("sk-secret")
    assert re.fullmatch(r"[0-9a-f]{12}", kid)
    assert "secret" not in kid
    assert kid == hashlib.sha256(b"sk-secret").hexdigest()[:12]
    assert ks.key_id("sk-other") != kid


def test_keys_file(tmp_path):
    f = tmp_path / "keys.txt"
    f.write_text("# team keys\n\nsk-alpha\n   sk-beta   \n#sk-disabled\n\t\nsk-gamma\n")
    assert read_keys_file(f) == ["sk-alpha", "sk-beta", "sk-gamma"]
    ks = KeyStore(read_keys_file(f))
    assert ks.check("sk-beta") and not ks.check("sk-disabled") and not ks.check("# team keys")


def test_generated_key_shape():
    keys = {generate_key() for _ in range(50)}
    assert len(keys) == 50
    for k in keys:
        assert re.fullmatch(r"sk-local-[A-Za-z0-9_-]{32}", k), k


def _config(argv, environ=None):
    return config_from_args(build_parser(environ or {}).parse_args(argv))


def test_cli_keys_from_flags_env_and_file(tmp_path):
    f = tmp_path / "k"
    f.write_text("sk-file\n")
    cfg, generated = _config(
        ["--api-key", "sk-flag", "--api-keys-file", str(f)],
        {"INPAINT_API_KEYS": "sk-env1, sk-env2"},
    )
    assert not generated
    assert set(cfg.auth.api_keys) == {"sk-flag", "sk-env1", "sk-env2", "sk-file"}


def test_cli_generates_a_key_when_none():
    cfg, generated = _config([])
    assert generated and len(cfg.auth.api_keys) == 1
    assert cfg.auth.api_keys[0].startswith("sk-local-")


def test_cli_no_auth():
    cfg, generated = _config(["--no-auth"])
    assert cfg.auth.no_auth and not generated and cfg.auth.api_keys == ()


def test_cli_limits():
    cfg, _ = _config(
        [
            "--api-key",
            "k",
            "--max-body-mb",
            "1",
            "--max-image-pixels",
            "100",
            "--rate-limit",
            "7",
            "--request-timeout",
            "3",
        ]
    )
    assert cfg.limits.max_body_bytes == 1024 * 1024
    assert cfg.limits.max_image_pixels == 100
    assert cfg.auth.rate_limit == 7 and cfg.batching.request_timeout == 3


def test_bearer_parsing():
    assert auth.bearer_token(None) is None
    assert auth.bearer_token("Bearer abc") == "abc"
    assert auth.bearer_token("bearer   abc  ") == "abc"
    assert auth.bearer_token("Basic abc") == ""
    assert auth.bearer_token("abc") == ""


def test_authenticate_errors():
    ks = KeyStore(["sk-ok"])
    with pytest.raises(auth.APIError) as info:
        auth.authenticate(None, ks)
    assert (info.value.status, info.value.code, info.value.param) == (401, None, None)
    with pytest.raises(auth.APIError) as info:
        auth.authenticate("Bearer sk-no", ks)
    assert (info.value.status, info.value.code) == (401, "invalid_api_key")
    assert "sk-no" not in info.value.message
    assert auth.authenticate("Bearer sk-ok", ks) == ks.key_id("sk-ok")
