"""Model capabilities: one declaration per bound, checked once, shown everywhere.

A bound is declared once (OpenAI's in ``server.protocol``, a model's in its ``capabilities``);
these tests read the declaration and check every place that shows or enforces it, so a bound
changed in one place only fails here.
"""

from __future__ import annotations

import pytest

from server import protocol
from server.models.capabilities import Capabilities, ModelLimits, Preset, Sampling
from server.openapi import openapi_document
from server.protocol import ProtocolError, Range

SAMPLING = Sampling(
    steps=Range(1, 150, integer=True),
    guidance_scale=Range(0, 30),
    strength=Range(0, 1, lo_exclusive=True),
    schedulers=("ddim", "euler"),
    default_scheduler="ddim",
    default_guidance_scale=7.5,
    quality_presets={"low": Preset(12), "medium": Preset(25), "high": Preset(50)},
)
CAPS = Capabilities(ModelLimits(), reads_prompt=True, streams_previews=True, sampling=SAMPLING)


class _Model:
    name = "m"
    capabilities = CAPS


class _Registry:
    models = {"m": _Model()}


def _err(**kw) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        CAPS.settings(**kw)
    return info.value


def test_defaults_and_quality_tiers():
    assert CAPS.settings() == CAPS.settings(tier="medium")
    s = CAPS.settings()
    assert (s.steps, s.guidance_scale, s.strength, s.scheduler) == (25, 7.5, 1.0, None)
    assert CAPS.settings(tier="low").steps == 12 and CAPS.settings(tier="high").steps == 50
    assert CAPS.settings(tier="low", steps=3).steps == 3  # an explicit value wins


@pytest.mark.parametrize(
    "kw, param, code",
    [
        ({"steps": 0}, "steps", "integer_below_min_value"),
        ({"steps": 151}, "steps", "integer_above_max_value"),
        ({"steps": 2.5}, "steps", "invalid_value"),
        ({"guidance_scale": -0.1}, "guidance_scale", "invalid_value"),
        ({"guidance_scale": 30.5}, "guidance_scale", "invalid_value"),
        ({"guidance_scale": float("nan")}, "guidance_scale", "invalid_value"),
        ({"strength": 0.0}, "strength", "invalid_value"),
        ({"strength": 1.01}, "strength", "invalid_value"),
        ({"steps": 2, "strength": 0.3}, "strength", "invalid_value"),
        ({"scheduler": "k_unknown"}, "scheduler", "invalid_value"),
    ],
)
def test_out_of_range_values_name_their_field(kw, param, code):
    e = _err(**kw)
    assert (e.param, e.code) == (param, code)
    assert len(e.message) > 20


def test_edges_are_accepted():
    assert CAPS.settings(steps=1).steps == 1 and CAPS.settings(steps=150).steps == 150
    assert CAPS.settings(guidance_scale=0).guidance_scale == 0
    assert CAPS.settings(guidance_scale=30).guidance_scale == 30
    assert CAPS.settings(strength=1).strength == 1.0


def test_single_pass_models_read_no_sampling():
    caps = Capabilities(ModelLimits(), reads_prompt=False, streams_previews=False)
    assert caps.settings(steps=10_000, strength=-1) is None


def test_presets_need_every_tier():
    with pytest.raises(ValueError, match="tiers"):
        Sampling(**{**SAMPLING.__dict__, "quality_presets": {"low": Preset(1)}})


def test_model_card_shows_the_declared_ranges():
    card = CAPS.card()
    params = card["parameters"]
    assert params["steps"] == {**SAMPLING.steps.schema(), "default": 25}
    assert params["guidance_scale"]["maximum"] == SAMPLING.guidance_scale.hi
    assert params["strength"]["exclusiveMinimum"] is True
    assert card["schedulers"] == list(SAMPLING.schedulers)
    assert card["quality_presets"] == {
        "low": {"steps": 12, "tiny_vae": False},
        "medium": {"steps": 25, "tiny_vae": False},
        "high": {"steps": 50, "tiny_vae": False},
    }


def test_openapi_takes_every_bound_from_its_declaration():
    """The document shows what the declarations say: change a bound in one place and the
    document follows; a copy written elsewhere would disagree and fail here."""
    doc = openapi_document(_Registry())
    props = doc["paths"]["/v1/images/edits"]["post"]["requestBody"]["content"][
        "multipart/form-data"
    ]["schema"]["properties"]
    assert props["n"]["maximum"] == protocol.MAX_N
    assert props["partial_images"]["maximum"] == protocol.MAX_PARTIAL_IMAGES
    assert props["prompt"]["maxLength"] == protocol.MAX_PROMPT_CHARS
    assert props["image"]["oneOf"][1]["maxItems"] == protocol.MAX_IMAGES
    assert props["output_compression"]["maximum"] == protocol.OUTPUT_COMPRESSION.hi
    assert props["quality"]["enum"] == list(protocol.QUALITY_TIERS)
    assert props["steps"]["maximum"] == SAMPLING.steps.hi
    assert props["guidance_scale"]["maximum"] == SAMPLING.guidance_scale.hi
    assert props["strength"]["exclusiveMinimum"] is True


def test_openapi_without_diffusion_models_has_no_sampling_bounds():
    props = openapi_document(None)["paths"]["/v1/images/edits"]["post"]["requestBody"]["content"][
        "multipart/form-data"
    ]["schema"]["properties"]
    assert "maximum" not in props["steps"] and props["steps"]["type"] == "integer"


def test_protocol_errors_use_the_declared_bounds():
    with pytest.raises(ProtocolError) as info:
        protocol.parse_edit_fields({"prompt": "x", "n": str(protocol.MAX_N + 1)})
    assert str(protocol.MAX_N) in info.value.message
    assert protocol.parse_edit_fields({"prompt": "x", "n": str(protocol.MAX_N)}).n == protocol.MAX_N


def test_config_defaults_are_openai_bounds():
    from server.config import Limits

    assert Limits().max_prompt_chars == protocol.MAX_PROMPT_CHARS
    assert Limits().max_images == protocol.MAX_IMAGES


def test_a_fast_preset_brings_its_scheduler_guidance_and_decoder():
    fast = Preset(4, scheduler="ddim", guidance_scale=1.0, tiny_vae=True)
    sampling = Sampling(
        **{**SAMPLING.__dict__, "quality_presets": {**SAMPLING.quality_presets, "low": fast}}
    )
    s = sampling.resolve(tier="low")
    assert (s.steps, s.scheduler, s.guidance_scale, s.tiny_vae) == (4, "ddim", 1.0, True)
    s = sampling.resolve(tier="low", guidance_scale=3.0, scheduler="euler", steps=6)
    assert (s.steps, s.scheduler, s.guidance_scale, s.tiny_vae) == (6, "euler", 3.0, True)
    assert sampling.resolve(tier="medium").tiny_vae is False


def test_a_scheduler_step_limit_is_checked_before_queueing():
    sampling = Sampling(**{**SAMPLING.__dict__, "max_steps": {"euler": 8}})
    assert sampling.resolve(scheduler="euler", steps=8).steps == 8
    with pytest.raises(ProtocolError) as info:
        sampling.resolve(scheduler="euler", steps=9)
    assert (info.value.param, info.value.code) == ("steps", "integer_above_max_value")
    assert sampling.resolve(scheduler="ddim", steps=100).steps == 100
    fast = Preset(4, scheduler="euler")
    tiered = Sampling(
        **{**sampling.__dict__, "quality_presets": {**SAMPLING.quality_presets, "low": fast}}
    )
    with pytest.raises(ProtocolError):
        tiered.resolve(tier="low", steps=20)  # the preset's scheduler carries its limit
