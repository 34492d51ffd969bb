"""parse_edit_fields / parse_size: every field's default, bounds and error code."""

from __future__ import annotations

import pytest

from server.protocol import EditRequest, ProtocolError, parse_edit_fields, parse_size


def parse(**fields) -> EditRequest:
    fields.setdefault("prompt", "a cat")
    return parse_edit_fields({k: str(v) for k, v in fields.items()})


def err(**fields) -> ProtocolError:
    fields.setdefault("prompt", "a cat")
    with pytest.raises(ProtocolError) as info:
        parse_edit_fields({k: str(v) for k, v in fields.items()})
    e = info.value
    assert isinstance(e, ValueError)
    assert e.message and str(e) == e.message
    return e


def test_defaults():
    r = parse()
    assert r.prompt == "a cat"
    assert r.model is None
    assert r.n == 1
    assert r.size is None
    assert r.response_format == "b64_json"
    assert r.output_format == "png"
    assert r.output_compression == 100
    assert r.background == "auto"
    assert r.quality == "auto"
    assert r.stream is False
    assert r.partial_images == 0
    assert r.user is None and r.input_fidelity is None
    assert r.negative_prompt is None and r.seed is None and r.steps is None
    assert r.guidance_scale is None and r.strength is None and r.scheduler is None


def test_empty_strings_mean_default():
    r = parse(
        n="",
        size="",
        output_format="",
        output_compression=" ",
        quality="",
        stream="",
        model="  ",
        seed="",
    )
    assert (
        r.n,
        r.size,
        r.output_format,
        r.output_compression,
        r.quality,
        r.stream,
        r.model,
        r.seed,
    ) == (1, None, "png", 100, "auto", False, None, None)


def test_all_fields_set():
    r = parse(
        model=" m1 ",
        n=10,
        size="1536x1024",
        response_format="url",
        output_format="webp",
        output_compression=0,
        background="transparent",
        quality="HIGH",
        stream="true",
        partial_images=3,
        user="u-1",
        input_fidelity="high",
        negative_prompt="blurry",
        seed=42,
        steps=150,
        guidance_scale=7.5,
        strength=0.5,
        scheduler=" DDIM ",
    )
    assert r.model == "m1"
    assert r.n == 10
    assert r.size == (1536, 1024)
    assert r.response_format == "url"
    assert r.output_format == "webp"
    assert r.output_compression == 0
    assert r.background == "transparent"
    assert r.quality == "high"
    assert r.stream is True
    assert r.partial_images == 3
    assert r.user == "u-1" and r.input_fidelity == "high"
    assert r.negative_prompt == "blurry"
    assert r.seed == 42 and r.steps == 150
    assert r.guidance_scale == pytest.approx(7.5) and r.strength == pytest.approx(0.5)
    assert r.scheduler == "ddim"


def test_unknown_fields_are_ignored():
    r = parse(frobnicate="yes", safety_identifier="x", moderation="low", **{"weird[]": "1"})
    assert r.prompt == "a cat"


# ---------------------------------------------------------------- prompt


def test_missing_prompt():
    with pytest.raises(ProtocolError) as info:
        parse_edit_fields({"n": "1"})
    assert (info.value.param, info.value.code) == ("prompt", "missing_required_parameter")


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_empty_prompt(prompt):
    e = err(prompt=prompt)
    assert (e.param, e.code) == ("prompt", "empty_string")


def test_prompt_length_bounds():
    assert len(parse(prompt="x" * 32000).prompt) == 32000
    e = err(prompt="x" * 32001)
    assert (e.param, e.code) == ("prompt", "string_above_max_length")
    assert "32000" in e.message
    # the limit is configurable
    with pytest.raises(ProtocolError) as info:
        parse_edit_fields({"prompt": "abcdef"}, max_prompt_chars=5)
    assert info.value.code == "string_above_max_length"


def test_negative_prompt_too_long():
    e = err(negative_prompt="y" * 32001)
    assert (e.param, e.code) == ("negative_prompt", "string_above_max_length")


def test_unicode_prompt_counts_characters():
    assert parse(prompt="猫" * 32000).prompt == "猫" * 32000


# ---------------------------------------------------------------- integers


@pytest.mark.parametrize(
    "field, lo, hi",
    [("n", 1, 10), ("output_compression", 0, 100), ("partial_images", 0, 3)],
)
def test_int_bounds(field, lo, hi):
    assert getattr(parse(**{field: lo}), field) == lo
    assert getattr(parse(**{field: hi}), field) == hi
    e = err(**{field: hi + 1})
    assert (e.param, e.code) == (field, "integer_above_max_value")
    e = err(**{field: lo - 1})
    assert (e.param, e.code) == (field, "integer_below_min_value")


@pytest.mark.parametrize("field", ["n", "output_compression", "partial_images", "seed", "steps"])
@pytest.mark.parametrize("raw", ["abc", "1.5", "2e3", "one", "0x10"])
def test_int_garbage(field, raw):
    e = err(**{field: raw})
    assert (e.param, e.code) == (field, "invalid_value")


def test_int_whitespace_and_sign():
    assert parse(n=" 3 ").n == 3
    assert parse(n="+2").n == 2
    e = err(n="-1")
    assert e.code == "integer_below_min_value"


def test_seed_bounds():
    assert parse(seed=0).seed == 0
    assert parse(seed=2**63 - 1).seed == 2**63 - 1
    assert err(seed=-1).code == "integer_below_min_value"
    assert err(seed=2**63).code == "integer_above_max_value"


# ---------------------------------------------------------------- floats


@pytest.mark.parametrize("field", ["guidance_scale", "strength"])
def test_numbers_are_finite(field):
    """The protocol reads sampling numbers; their ranges are the model's (test_capabilities)."""
    assert getattr(parse(**{field: "0.25"}), field) == 0.25
    for bad in ("nan", "inf", "-inf", "x"):
        e = err(**{field: bad})
        assert (e.param, e.code) == (field, "invalid_value")


def test_steps_is_an_integer_of_any_size_here():
    assert parse(steps=151).steps == 151  # the model's capabilities bound it


# ---------------------------------------------------------------- choices


@pytest.mark.parametrize(
    "field, good, bad",
    [
        ("response_format", ["url", "b64_json", "URL"], ["json", "base64", "b64"]),
        ("output_format", ["png", "jpeg", "webp", "JPEG", "jpg"], ["gif", "svg", "bmp", "tiff"]),
        ("background", ["transparent", "opaque", "auto"], ["white", "none"]),
        ("quality", ["low", "medium", "high", "auto", "standard", "hd"], ["ultra", "best"]),
    ],
)
def test_choices(field, good, bad):
    for value in good:
        got = getattr(parse(**{field: value}), field)
        assert got == ("jpeg" if value == "jpg" else value.lower())
    for value in bad:
        e = err(**{field: value})
        assert (e.param, e.code) == (field, "invalid_value")
        assert value in e.message


def test_background_transparent_needs_png_or_webp():
    assert parse(background="transparent", output_format="png").background == "transparent"
    assert parse(background="transparent", output_format="webp").background == "transparent"
    for fmt in ("jpeg", "jpg"):
        e = err(background="transparent", output_format=fmt)
        assert (e.param, e.code) == ("background", "invalid_value")
    assert parse(background="opaque", output_format="jpeg").background == "opaque"


# ---------------------------------------------------------------- booleans


@pytest.mark.parametrize(
    "raw, value",
    [
        ("true", True),
        ("True", True),
        ("1", True),
        ("yes", True),
        ("on", True),
        ("false", False),
        ("FALSE", False),
        ("0", False),
        ("no", False),
        ("off", False),
    ],
)
def test_bool(raw, value):
    assert parse(stream=raw).stream is value


def test_bool_garbage():
    e = err(stream="maybe")
    assert (e.param, e.code) == ("stream", "invalid_value")


# ---------------------------------------------------------------- size


@pytest.mark.parametrize(
    "raw, expected",
    [
        (None, None),
        ("", None),
        ("auto", None),
        (" AUTO ", None),
        ("256x256", (256, 256)),
        ("512x512", (512, 512)),
        ("1024x1024", (1024, 1024)),
        ("1536x1024", (1536, 1024)),
        ("1024x1536", (1024, 1536)),
        ("16x8", (16, 8)),
        ("1024X768", (1024, 768)),
        (" 64x64 ", (64, 64)),
    ],
)
def test_size_ok(raw, expected):
    assert parse_size(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "1000x1001",
        "250x170",
        "1024x1020",
        "1023x1024",
        "0x0",
        "0x512",
        "512x0",
        "1024",
        "x512",
        "512x",
        "axb",
        "1024*1024",
        "-512x512",
        "512x-512",
        "512.0x512",
        "1024x1024x3",
        "9999999x8",
        "big",
    ],
)
def test_size_bad(raw):
    with pytest.raises(ProtocolError) as info:
        parse_size(raw)
    assert (info.value.param, info.value.code) == ("size", "invalid_value")
    e = err(size=raw)
    assert e.param == "size"


def test_size_non_multiple_message_says_how_to_fix():
    e = err(size="1000x1001")
    assert "multiple" in e.message and "8" in e.message
