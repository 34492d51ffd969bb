"""SDInpaintModel (ONNX, numpy) vs diffusers' StableDiffusionInpaintPipeline (PyTorch).

Fixtures (tests/conftest.py): ``tiny_pipeline_dir`` (tiny random-weight diffusers pipeline),
``tiny_model_fp32`` / ``tiny_model_fp16`` (its ONNX exports, with manifest.json).

Same noise: every random draw of our pipeline comes from the row's NoiseSource; here it is a
``torch.Generator`` seeded like the ``generator=`` passed to diffusers, so both draw the same
numbers in the same order (initial noise, VAE latent samples, ancestral step noise).
"""

from __future__ import annotations

import numpy as np
import pytest

from server.models.schedulers import scheduler_names

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from server.models.sd_inpaint import (  # noqa: E402
    SDInpaintModel,
    preview_schedule,
)
from server.protocol import ProtocolError  # noqa: E402
from tests.numerics import (  # noqa: E402
    FP32_TOL,
    REF,
    SEED,
    H,
    TorchNoise,
    W,
    inputs,
    load_pipeline,
    make_row,
    run_diffusers,
    run_ours,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

FP16_MAX_TOL = 0.1  # fp16 export vs fp32 export (random weights amplify fp16 rounding)
FP16_MEAN_TOL = 1e-2


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    return load_pipeline(tiny_pipeline_dir)


@pytest.fixture(scope="module")
def model(tiny_model_fp32):
    return SDInpaintModel.from_folder(tiny_model_fp32, name="tiny", provider="cpu", threads=1)


@pytest.fixture(scope="module")
def model16(tiny_model_fp16):
    return SDInpaintModel.from_folder(tiny_model_fp16, name="tiny16", provider="cpu", threads=1)


def test_reference_covers_every_scheduler():
    assert sorted(REF) == sorted(scheduler_names())


@pytest.mark.parametrize("strength", [1.0, 0.6])
@pytest.mark.parametrize("scheduler", sorted(REF))
def test_parity_with_diffusers(pipe, model, model16, scheduler, strength, record_property):
    img, mask = inputs()
    ref = run_diffusers(
        pipe, scheduler, img, mask, prompt="a red cat", negative_prompt="blurry",
        guidance=7.5, strength=strength,
    )  # fmt: skip
    kw = dict(scheduler=scheduler, strength=strength, guidance_scale=7.5)
    ours = run_ours(model, make_row(img, mask, meta={"noise": TorchNoise(SEED)}, **kw))
    assert ours.shape == ref.shape == (H, W, 3) and ours.dtype == np.float32
    diff = float(np.abs(ours - ref).max())
    record_property("fp32_max_abs_diff", diff)
    assert diff <= FP32_TOL, f"{scheduler} strength={strength}: max |diff| {diff:.2e}"
    assert ref.std() > 0.05  # a real image, not a constant that trivially matches

    ours16 = run_ours(model16, make_row(img, mask, meta={"noise": TorchNoise(SEED)}, **kw))
    d16 = np.abs(ours16 - ours)
    record_property("fp16_vs_fp32_max", float(d16.max()))
    assert d16.max() <= FP16_MAX_TOL and d16.mean() <= FP16_MEAN_TOL, (d16.max(), d16.mean())


@pytest.mark.parametrize(
    "guidance,negative", [(1.0, None), (4.0, None)], ids=["no-cfg", "cfg-empty-negative"]
)
def test_parity_guidance_variants(pipe, model, guidance, negative):
    """guidance <= 1: no classifier-free guidance; negative None -> "" (as diffusers)."""
    img, mask = inputs()
    ref = run_diffusers(
        pipe, "euler_a", img, mask, prompt="a red cat", negative_prompt=negative,
        guidance=guidance, strength=1.0,
    )  # fmt: skip
    row = make_row(
        img, mask, negative_prompt=negative, guidance_scale=guidance, scheduler="euler_a",
        meta={"noise": TorchNoise(SEED)},
    )  # fmt: skip
    ours = run_ours(model, row)
    assert np.abs(ours - ref).max() <= FP32_TOL
    assert row.state.cfg == (guidance > 1)


def test_default_scheduler_is_manifest_config(pipe, model):
    """row.scheduler None -> the exported scheduler_config (PNDM for SD 1.5)."""
    img, mask = inputs()
    ref = run_diffusers(
        pipe, "pndm", img, mask, prompt="a red cat", negative_prompt="blurry",
        guidance=7.5, strength=1.0,
    )  # fmt: skip
    ours = run_ours(model, make_row(img, mask, meta={"noise": TorchNoise(SEED)}))
    assert np.abs(ours - ref).max() <= FP32_TOL


def test_seed_determinism(model):
    img, mask = inputs()
    a = model.run([make_row(img, mask, seed=11, scheduler="euler_a", steps=4)])[0]
    b = model.run([make_row(img, mask, seed=11, scheduler="euler_a", steps=4)])[0]
    c = model.run([make_row(img, mask, seed=12, scheduler="euler_a", steps=4)])[0]
    assert a.dtype == np.uint8 and a.shape == (H, W, 3)
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 1.0


def test_batching_independence(model):
    """A row alone == the same row batched with rows joining later, at other timesteps,
    guidance (with and without CFG), strengths and schedulers. The batcher relies on this."""
    img, mask = inputs()
    img2, mask2 = inputs(seed=5)

    def row_a():
        return make_row(img, mask, seed=1, scheduler="euler_a", steps=6)

    alone = run_ours(model, row_a())

    a = row_a()
    b = make_row(img2, mask2, prompt="a dog", negative_prompt=None, seed=2, steps=5,
                 guidance_scale=1.0, scheduler="ddim")  # fmt: skip
    c = make_row(img, mask2, prompt="sky", seed=3, steps=9, guidance_scale=3.0,
                 strength=0.7, scheduler="dpmpp_2m_karras")  # fmt: skip
    model.prepare([b])
    model.step([b])
    model.step([b])  # b is 2 steps ahead
    model.prepare([a, c])  # a and c join between steps
    results = {}
    active = [a, b, c]
    while active:
        model.step(active)
        done = [r for r in active if model.is_done(r)]
        for r, out in zip(done, model.finish_float(done), strict=True):
            results[id(r)] = out
        active = [r for r in active if not model.is_done(r)]
    assert np.abs(results[id(a)] - alone).max() <= 1e-5
    c_alone = run_ours(
        model,
        make_row(img, mask2, prompt="sky", seed=3, steps=9, guidance_scale=3.0, strength=0.7,
                 scheduler="dpmpp_2m_karras"),
    )  # fmt: skip
    assert np.abs(results[id(c)] - c_alone).max() <= 1e-5


def test_rows_of_different_sizes_in_run(model):
    img, mask = inputs()
    small_img, small_mask = inputs(64, 64)
    outs = model.run(
        [make_row(img, mask, steps=2), make_row(small_img, small_mask, steps=2, seed=9)]
    )
    assert outs[0].shape == (H, W, 3) and outs[1].shape == (64, 64, 3)
    assert model.batch_key(make_row(img, mask)) != model.batch_key(make_row(small_img, small_mask))


@pytest.mark.parametrize("k,steps,sent", [(1, 6, 1), (2, 6, 2), (3, 6, 3), (3, 2, 1), (3, 1, 0)])
def test_previews(model, k, steps, sent):
    img, mask = inputs()
    calls = []
    row = make_row(
        img, mask, steps=steps, partial_images=k, scheduler="ddim",
        on_preview=lambda i, im: calls.append((i, im)),
    )  # fmt: skip
    final = model.run([row])[0]
    # only distinct previews: fewer than asked when there are not enough steps
    assert [i for i, _ in calls] == list(range(sent))
    for _, im in calls:
        assert im.dtype == np.uint8 and im.shape == (H, W, 3)
    pictures = [im.tobytes() for _, im in calls] + [final.tobytes()]
    assert len(set(pictures)) == len(pictures)  # no two previews alike, none the final image


def test_preview_schedule():
    assert preview_schedule(25, 3) == {6: [0], 12: [1], 19: [2]}
    assert preview_schedule(6, 3) == {2: [0], 3: [1], 4: [2]}
    # one preview per step, all before the last step (whose estimate is the final image)
    assert preview_schedule(2, 3) == {1: [0]}
    assert preview_schedule(3, 3) == {1: [0], 2: [1]}
    assert preview_schedule(1, 3) == {}
    assert preview_schedule(10, 0) == {}


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("steps", 0, "steps"),
        ("steps", 151, "steps"),
        ("steps", 2.5, "steps"),
        ("guidance_scale", -1.0, "guidance_scale"),
        ("guidance_scale", 30.5, "guidance_scale"),
        ("guidance_scale", float("nan"), "guidance_scale"),
        ("strength", 0.0, "strength"),
        ("strength", 1.5, "strength"),
        ("scheduler", "k_unknown", "scheduler"),
    ],
)
def test_bad_values_raise(model, field, value, needle):
    """Direct callers (no serving in front) get the same check serving runs on requests."""
    img, mask = inputs()
    row = make_row(img, mask, **{field: value})
    with pytest.raises(ValueError, match=needle) as err:
        model.prepare([row])
    assert isinstance(err.value, ProtocolError) and err.value.param == field
    assert row.state is None  # nothing half-prepared


def test_steps_times_strength_too_small(model):
    img, mask = inputs()
    with pytest.raises(ValueError, match="strength"):
        model.validate(make_row(img, mask, steps=2, strength=0.3))


def test_metadata(model, tiny_model_fp32):
    d = model.describe()
    assert d["kind"] == "diffusion"
    assert d["precision"] == "fp32" and d["provider"]["name"] == "cpu"
    # what each component runs on, as /v1/models shows it for every provider
    assert d["provider"]["components"] == {
        c: {"runtime": "onnxruntime", "precision": "fp32"} for c in model.sessions
    }
    caps = model.capabilities
    assert caps.reads_prompt is True and caps.streams_previews is True
    assert set(caps.sampling.schedulers) == set(scheduler_names())
    lim = caps.limits
    assert lim.native_side == 64 and lim.max_work_side == round(64 * 1.5 / 8) * 8
    assert lim.multiple == 8
    steps = {tier: caps.settings(tier=tier).steps for tier in ("low", "medium", "high")}
    assert steps == {"low": 12, "medium": 25, "high": 50}
    assert caps.settings().guidance_scale == 7.5 and caps.settings().strength == 1.0
    assert model.count_tokens("a photo of a cat") == 5
    assert model.count_tokens("") == 0


def test_non_finite_output_fails_only_its_row(model, monkeypatch):
    img, mask = inputs()
    rows = [make_row(img, mask, seed=1, steps=2), make_row(img, mask, seed=2, steps=2)]
    model.prepare(rows)
    while not all(model.is_done(r) for r in rows):
        model.step(rows)
    real_decode = model._decode

    def poisoned(latents):
        out = real_decode(latents)
        out[0][...] = np.nan  # the first row's graph output blew up
        return out

    monkeypatch.setattr(model, "_decode", poisoned)
    first, second = model.finish(rows)
    assert isinstance(first, FloatingPointError)
    assert second.dtype == np.uint8 and second.shape == img.shape
