"""Export and serve a pipeline whose text encoder is not CLIP-L's.

The pipeline (built locally by ``export.tiny``): a ~250-token BPE vocabulary with special ids
pad 0 / bos 1 / eos 2 (CLIP: 49407 / 49406 / 49407), 32 positions (CLIP: 77), text hidden
size 48 and a 3-level VAE (vae_scale_factor 4, UNet sample_size 16). Every one of these must
reach the graphs and the manifest from the pipeline's own configs: an exporter that assumes
CLIP's ids fails on it with ``IndexError: index out of range in self``.

It goes through ``python -m export --model <folder>`` (the CLI's code path), is loaded by
``SDInpaintModel.from_folder`` and must reproduce diffusers' StableDiffusionInpaintPipeline
(same noise via a torch Generator) within the fp32 tolerance of tests/models/test_sd_pipeline.py
(``FP32_TOL``, tests/numerics.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from server.models.manifest import Manifest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from export.tiny import build_small_vocab_tokenizer, build_tiny_pipeline  # noqa: E402
from server.models.sd_inpaint import SDInpaintModel  # noqa: E402
from tests import artifacts  # noqa: E402
from tests.numerics import (  # noqa: E402
    FP32_TOL,
    SEED,
    TorchNoise,
    inputs,
    load_pipeline,
    make_row,
    run_diffusers,
    run_ours,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

TEXT_LEN, HIDDEN, VAE_LEVELS = 32, 48, 3
LONG_PROMPT = ", ".join(["a red cat sitting on a wooden bench"] * 6)  # ~48 tokens > 32
PROMPTS = [
    "",
    "a red cat",
    "A Photo of the BLUE dog, high quality!!",
    "unknown ünïcödé 🐱",
    LONG_PROMPT,
]


def _custom_text_pipeline(out, text_len: int, hidden: int, vae_levels: int):
    """The pipeline of this module (an artifact: built once per source version)."""
    tokenizer = build_small_vocab_tokenizer(max_length=text_len)
    return build_tiny_pipeline(
        out / "pipeline", seed=0, tokenizer=tokenizer, hidden=hidden, vae_levels=vae_levels
    )


@pytest.fixture(scope="module")
def source_dir():
    return artifacts.artifact(
        _custom_text_pipeline, text_len=TEXT_LEN, hidden=HIDDEN, vae_levels=VAE_LEVELS
    )


@pytest.fixture(scope="module")
def exported(source_dir):
    argv = ["--model", source_dir, "--precision", "fp32", "--target", "cpu"]
    return artifacts.export(*argv, folder="custom-text")


@pytest.fixture(scope="module")
def pipe(source_dir):
    return load_pipeline(source_dir)


@pytest.fixture(scope="module")
def model(exported):
    return SDInpaintModel.from_folder(exported, name="custom-text", provider="cpu", threads=1)


def test_pipeline_is_not_clip_shaped(pipe):
    """Guards the test itself: the source really differs from CLIP-L / SD 1.5."""
    tok, text = pipe.tokenizer, pipe.text_encoder.config
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.model_max_length == text.max_position_embeddings == TEXT_LEN
    assert 200 < text.vocab_size < 400 and text.hidden_size == HIDDEN
    assert pipe.vae_scale_factor == 4 and pipe.unet.config.sample_size == 16


def test_manifest_comes_from_the_pipeline_configs(exported):
    m = Manifest.read(exported)
    assert (m.text_max_length, m.text_hidden_size) == (TEXT_LEN, HIDDEN)
    assert (m.vae_scale_factor, m.native_resolution, m.latent_channels) == (4, 64, 4)
    text, unet = m.components["text_encoder"], m.components["unet"]
    assert text.inputs[0].shape == ["batch", TEXT_LEN]
    assert text.outputs[0].shape == ["batch", TEXT_LEN, HIDDEN]
    assert unet.inputs[2].shape == ["batch", TEXT_LEN, HIDDEN]
    assert unet.profiles["sample"]["opt"] == [2, 9, 16, 16]  # native 64 px / 4
    assert sorted(v.component for v in m.verification) == sorted(m.components)
    assert all(v.passed for v in m.verification)
    assert m.verification[0].inputs["input_ids"][1] == TEXT_LEN


def test_server_tokenizer_matches_transformers(pipe, model):
    tok = model.tokenizer
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.max_length) == (0, 1, 2, TEXT_LEN)
    want = pipe.tokenizer(
        PROMPTS, padding="max_length", max_length=TEXT_LEN, truncation=True, return_tensors="np"
    ).input_ids
    got = tok.encode(PROMPTS)
    assert got.dtype == np.int64 and got.shape == (len(PROMPTS), TEXT_LEN)
    assert got.tolist() == want.tolist()
    long = got[PROMPTS.index(LONG_PROMPT)]
    assert tok.count(LONG_PROMPT) > TEXT_LEN - 2  # longer than the window: truncated
    assert long[0] == 1 and long[-1] == 2  # truncation keeps eos
    assert (got < pipe.text_encoder.config.vocab_size).all()


@pytest.mark.parametrize(
    "scheduler,strength,prompt",
    [("pndm", 1.0, "a red cat"), ("euler_a", 0.6, LONG_PROMPT)],
    ids=["pndm-full", "euler_a-partial-long-prompt"],
)
def test_serving_matches_diffusers(pipe, model, scheduler, strength, prompt, record_property):
    img, mask = inputs()  # 64x96 px: latent 16x24 at vae_scale_factor 4
    ref = run_diffusers(
        pipe, scheduler, img, mask, prompt=prompt, negative_prompt="blurry",
        guidance=7.5, strength=strength,
    )  # fmt: skip
    row = make_row(
        img, mask, prompt=prompt, scheduler=scheduler, strength=strength, guidance_scale=7.5,
        meta={"noise": TorchNoise(SEED)},
    )  # fmt: skip
    ours = run_ours(model, row)
    assert ours.shape == ref.shape == img.shape and ours.dtype == np.float32
    diff = float(np.abs(ours - ref).max())
    record_property("fp32_max_abs_diff", diff)
    assert diff <= FP32_TOL, f"{scheduler}: max |diff| {diff:.2e}"
    assert ref.std() > 0.05  # a real image, not a constant that trivially matches
