"""Parity of server/models/schedulers/ (numpy) with diffusers' schedulers (torch).

Every test runs the same denoising loop on both sides with a deterministic fake "UNet"
(a smooth function of sample and timestep), the same initial noise and, for ancestral
schedulers, the same torch.Generator stream, and compares timesteps exactly and
samples / x0 estimates to float32 rounding.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from diffusers import (  # noqa: E402
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)

from server.models.schedulers import (  # noqa: E402
    NumpyNoise,
    Scheduler,
    StepOutput,
    make_scheduler,
    scheduler_names,
    strength_timesteps,
)
from tests.numerics import NOISY, REF, TorchNoise, ref_scheduler, rel_err  # noqa: E402
from tests.numerics import SCHEDULER_TOL as TOL  # noqa: E402
from tests.numerics import SD15_SCHEDULER as SD15  # noqa: E402

# diffusers' own numpy/torch interplay warns on numpy 2; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SD2V = {  # SD 2.x 768-v style (v_prediction), trailing spacing
    "_class_name": "DDIMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "clip_sample": False,
    "prediction_type": "v_prediction",
    "timestep_spacing": "trailing",
}
LINEAR = {  # linear betas, clipping on, alpha_to_one; spacing left to each class's default
    "_class_name": "DDIMScheduler",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "num_train_timesteps": 1000,
    "clip_sample": True,
    "set_alpha_to_one": True,
    "skip_prk_steps": True,
    "timestep_spacing": "leading",
    "_use_default_values": ["timestep_spacing"],
}
CONFIGS = {"sd15": SD15, "sd2v": SD2V, "linear": LINEAR}

SHAPE = (1, 4, 8, 8)


def fake_unet(x: np.ndarray, t) -> np.ndarray:
    """Deterministic smooth stand-in for the UNet; float32 in, float32 out."""
    t = np.float32(float(t))
    return (
        np.float32(0.6) * np.tanh(x * np.float32(0.3)) * np.cos(t / np.float32(317.0))
        + np.float32(0.05) * x
        + np.float32(0.1) * np.sin(t / np.float32(97.0) + x)
    ).astype(np.float32)


def run_pair(name, config, steps, strength=1.0, seed=0, shape=SHAPE, check_add_noise=True):
    """Run the inpaint pipeline's loop on diffusers and ours; return the max relative error."""
    ref = ref_scheduler(name, config)
    ours = make_scheduler(config, name)
    rng = np.random.default_rng(seed)
    init_noise = rng.standard_normal(shape).astype(np.float32)
    image_latents = rng.standard_normal(shape).astype(np.float32)

    ref.set_timesteps(steps)
    if strength < 1.0:
        # StableDiffusionInpaintPipeline.get_timesteps
        init_t = min(int(steps * strength), steps)
        t_start = max(steps - init_t, 0)
        ref_ts = ref.timesteps[t_start * ref.order :]
        if hasattr(ref, "set_begin_index"):
            ref.set_begin_index(t_start * ref.order)
        ts = strength_timesteps(ours, steps, strength)
    else:
        ref_ts = ref.timesteps
        ours.set_timesteps(steps)
        ts = ours.timesteps
    assert ts.dtype == ref_ts.numpy().dtype, (ts.dtype, ref_ts.dtype)
    if ts.dtype.kind == "f" and config.get("use_karras_sigmas"):
        # Float Karras timesteps come from sigmas that torch computes with a float32 sqrt that
        # is not always correctly rounded (1 ulp off numpy's): equal to ~1e-7 only.
        np.testing.assert_allclose(ts, ref_ts.numpy(), rtol=2e-6, atol=1e-5)
    else:
        np.testing.assert_array_equal(ts, ref_ts.numpy())
        np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())

    if strength < 1.0:
        lat_t = ref_ts[:1].repeat(shape[0])
        ref_lat = ref.add_noise(
            torch.from_numpy(image_latents), torch.from_numpy(init_noise), lat_t
        )
        lat = ours.add_noise(image_latents, init_noise, ts[:1].repeat(shape[0]))
    else:
        assert abs(ours.init_noise_sigma - float(ref.init_noise_sigma)) <= 1e-6 * max(
            1.0, float(ref.init_noise_sigma)
        )
        ref_lat = torch.from_numpy(init_noise) * ref.init_noise_sigma
        lat = init_noise * np.float32(ours.init_noise_sigma)
    err = rel_err(lat, ref_lat)

    ref_gen = torch.Generator().manual_seed(seed + 1000)
    noise = TorchNoise(seed + 1000)
    for i, t in enumerate(ts):
        rt = ref_ts[i]
        ref_in = ref.scale_model_input(ref_lat, rt)
        inp = type(ours).scale_model_input_batch([ours], lat, [t])
        err = max(err, rel_err(inp, ref_in))
        eps = fake_unet(inp, t)
        kw = {"generator": ref_gen} if name in NOISY else {}
        ref_out = ref.step(torch.from_numpy(eps), rt, ref_lat, **kw)
        out = ours.step(eps, t, lat, noise if name in NOISY else None)
        assert isinstance(out, StepOutput)
        err = max(err, rel_err(out.prev_sample, ref_out.prev_sample))
        ref_x0 = getattr(ref_out, "pred_original_sample", getattr(ref_out, "denoised", None))
        if ref_x0 is None and hasattr(ref, "model_outputs"):
            ref_x0 = ref.model_outputs[-1]  # DPM-Solver++ keeps its x0 estimates there
        if ref_x0 is not None:
            err = max(err, rel_err(out.pred_original_sample, ref_x0))
        else:  # PNDM: no x0 in diffusers; check against the textbook formula
            a = float(ref.alphas_cumprod[int(t)])
            v = config.get("prediction_type", "epsilon") == "v_prediction"
            x0 = a**0.5 * lat - (1 - a) ** 0.5 * eps if v else (lat - (1 - a) ** 0.5 * eps) / a**0.5
            err = max(err, rel_err(out.pred_original_sample, x0.astype(np.float32)))
        ref_lat, lat = ref_out.prev_sample, out.prev_sample
        if check_add_noise and i < len(ts) - 1:  # 4-channel-UNet inpaint re-noising
            nxt = ref_ts[i + 1 : i + 2]
            r = ref.add_noise(torch.from_numpy(image_latents), torch.from_numpy(init_noise), nxt)
            o = ours.add_noise(image_latents, init_noise, ts[i + 1 : i + 2])
            err = max(err, rel_err(o, r))
    assert np.all(np.isfinite(lat))
    return err


@pytest.mark.parametrize("cfg", list(CONFIGS))
@pytest.mark.parametrize("name", list(REF))
def test_full_loop_parity(name, cfg):
    worst = {steps: run_pair(name, CONFIGS[cfg], steps) for steps in (1, 4, 20, 50)}
    assert max(worst.values()) < TOL, worst


@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
@pytest.mark.parametrize("name", list(REF))
def test_strength_parity(name, strength):
    for cfg, steps in (("sd15", 20), ("sd2v", 8), ("linear", 50)):
        err = run_pair(name, CONFIGS[cfg], steps, strength=strength, seed=3)
        assert err < TOL, (cfg, steps, err)


@pytest.mark.parametrize("steps", [4, 20, 50])
def test_pndm_prk_parity(steps):
    cfg = {**SD15, "skip_prk_steps": False}
    assert run_pair("pndm", cfg, steps) < TOL


def test_pndm_prk_too_few_steps():
    s = make_scheduler({**SD15, "skip_prk_steps": False}, "pndm")
    with pytest.raises(ValueError, match="at least 4"):
        s.set_timesteps(3)


@pytest.mark.parametrize(
    "name,extra",
    [
        ("dpmpp_2m", {"final_sigmas_type": "sigma_min"}),
        ("dpmpp_2m", {"lower_order_final": False, "final_sigmas_type": "sigma_min"}),
        ("dpmpp_2m", {"euler_at_final": True, "solver_type": "heun"}),
        ("dpmpp_2m", {"timestep_spacing": "leading"}),
        ("dpmpp_2m_karras", {"final_sigmas_type": "sigma_min"}),
        ("euler", {"use_karras_sigmas": True}),
        ("euler", {"final_sigmas_type": "sigma_min", "timestep_spacing": "trailing"}),
        ("ddim", {"thresholding": True, "prediction_type": "sample"}),
        (
            "ddim",
            {
                "rescale_betas_zero_snr": True,
                "timestep_spacing": "trailing",
                "prediction_type": "v_prediction",
            },
        ),
        ("euler", {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction"}),
        ("dpmpp_2m", {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction"}),
    ],
)
def test_option_parity(name, extra):
    cfg = {**SD15, **extra}
    worst = max(run_pair(name, cfg, steps) for steps in (3, 16, 25))
    tol = TOL
    if name == "euler" and extra.get("rescale_betas_zero_snr"):
        # Zero-SNR Euler starts at sigma = sqrt(2**24 - 1) ~ 4096, which torch's float32 sqrt
        # rounds one ulp up (4096.0) where numpy rounds correctly (4095.9998); the first
        # Euler step cancels ~4096 down to ~1, so that ulp shows as ~2e-4 relative.
        tol = 5e-4
    assert worst < tol


def test_dpm_third_order_via_class_name():
    cfg = {**SD15, "_class_name": "DPMSolverMultistepScheduler", "solver_order": 3}
    ours = make_scheduler(cfg)
    assert type(ours).__name__ == "DPMSolverMultistep"
    ref = DPMSolverMultistepScheduler.from_config(cfg)
    ours.set_timesteps(25)
    ref.set_timesteps(25)
    lat = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    ref_lat = torch.from_numpy(lat)
    err = 0.0
    for t in ours.timesteps:
        eps = fake_unet(lat, t)
        r = ref.step(torch.from_numpy(eps), torch.tensor(t), ref_lat).prev_sample
        lat = ours.step(eps, t, lat).prev_sample
        ref_lat = r
        err = max(err, rel_err(lat, r))
    assert err < TOL


def test_make_scheduler_by_class_name_matches_diffusers():
    classes = {
        "DDIMScheduler": DDIMScheduler,
        "PNDMScheduler": PNDMScheduler,
        "EulerDiscreteScheduler": EulerDiscreteScheduler,
        "EulerAncestralDiscreteScheduler": EulerAncestralDiscreteScheduler,
        "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler,
    }
    for cls_name, cls in classes.items():
        cfg = {**SD15, "_class_name": cls_name}
        ours, ref = make_scheduler(cfg), cls.from_config(cfg)
        ours.set_timesteps(30)
        ref.set_timesteps(30)
        np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
        assert ours.timesteps.dtype == ref.timesteps.numpy().dtype


def test_schedule_tables_match_torch():
    for cfg in CONFIGS.values():
        ours = make_scheduler(cfg, "euler")
        ref = EulerDiscreteScheduler.from_config(cfg)
        np.testing.assert_array_equal(ours.betas, ref.betas.numpy())
        np.testing.assert_array_equal(ours.alphas_cumprod, ref.alphas_cumprod.numpy())


def test_scale_model_input_and_add_noise_batch():
    """CFG doubles the batch for scale_model_input; add_noise takes one timestep per row."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    n = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    for name in REF:
        ours, ref = make_scheduler(SD15, name), ref_scheduler(name, SD15)
        ours.set_timesteps(10)
        ref.set_timesteps(10)
        t = ours.timesteps[3]
        rt = ref.timesteps[3]
        got = type(ours).scale_model_input_batch([ours], x, [t])
        assert rel_err(got, ref.scale_model_input(torch.from_numpy(x), rt)) < TOL
        ts = ours.timesteps[[2, 2]]
        r = ref.add_noise(torch.from_numpy(x), torch.from_numpy(n), ref.timesteps[[2, 2]])
        assert rel_err(ours.add_noise(x, n, ts), r) < TOL


def _advance(s: Scheduler, lat: np.ndarray, t, noise) -> np.ndarray:
    scaled = type(s).scale_model_input_batch([s], lat, [t])
    return s.step(fake_unet(scaled, t), t, lat, noise).prev_sample


@pytest.mark.parametrize("name", scheduler_names())
def test_instances_are_independent(name):
    """Two rows stepped interleaved (as the batcher does) equal two separate runs."""
    rng = np.random.default_rng(11)
    lat0 = [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(2)]
    plans = [(12, 1.0), (20, 0.75)]  # (steps, strength) per row

    expect = []
    for k, (n_steps, strength) in enumerate(plans):
        s = make_scheduler(SD15, name)
        lat, noise = lat0[k] * np.float32(s.init_noise_sigma), NumpyNoise(k)
        for t in strength_timesteps(s, n_steps, strength):
            lat = _advance(s, lat, t, noise)
        expect.append(lat)

    scheds = [make_scheduler(SD15, name) for _ in plans]
    tss = [strength_timesteps(s, n, st) for s, (n, st) in zip(scheds, plans, strict=True)]
    lats = [lat0[k] * np.float32(scheds[k].init_noise_sigma) for k in range(2)]
    noises = [NumpyNoise(0), NumpyNoise(1)]
    pos = [0, 0]
    order = [0, 1, 1, 0, 1, 0, 0, 0, 1, 1, 1] * 4 + [0] * 12 + [1] * 20
    for k in order:
        if pos[k] < len(tss[k]):
            lats[k] = _advance(scheds[k], lats[k], tss[k][pos[k]], noises[k])
            pos[k] += 1
    for k in range(2):
        assert pos[k] == len(tss[k])
        np.testing.assert_array_equal(lats[k], expect[k])


def test_strength_timesteps_matches_get_timesteps():
    for name in scheduler_names():
        for steps in (1, 7, 20, 50):
            for strength in (0.3, 0.75, 1.0):
                s = make_scheduler(SD15, name)
                ref = ref_scheduler(name, SD15)
                ref.set_timesteps(steps)
                init_t = min(int(steps * strength), steps)
                t_start = max(steps - init_t, 0)
                if init_t < 1:
                    with pytest.raises(ValueError):
                        strength_timesteps(s, steps, strength)
                    continue
                ts = strength_timesteps(s, steps, strength)
                np.testing.assert_array_equal(ts, ref.timesteps[t_start * ref.order :].numpy())
                assert s._begin_index == t_start * s.order


@pytest.mark.parametrize("strength", [0.0, -0.1, 1.01, float("nan")])
def test_strength_out_of_range(strength):
    with pytest.raises(ValueError):
        strength_timesteps(make_scheduler(SD15, "ddim"), 10, strength)


def test_names_and_errors():
    names = scheduler_names()
    for required in ("ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "pndm"):
        assert required in names
    with pytest.raises(ValueError) as exc:
        make_scheduler(SD15, "heun_fancy")
    for n in names:
        assert n in str(exc.value)
    with pytest.raises(ValueError):
        make_scheduler({**SD15, "_class_name": "UnknownScheduler"})
    with pytest.raises(ValueError):
        make_scheduler(
            {
                **SD15,
                "_class_name": "DPMSolverMultistepScheduler",
                "algorithm_type": "sde-dpmsolver++",
            }
        )
    for n in names:
        s = make_scheduler(SD15, n)
        assert isinstance(s, Scheduler)
        assert s.order == 1
    s = make_scheduler(SD15, "euler_a")
    s.set_timesteps(5)
    with pytest.raises(ValueError):
        s.step(np.zeros(SHAPE, np.float32), s.timesteps[0], np.zeros(SHAPE, np.float32))


def test_numpy_noise_is_deterministic_float32():
    a, b = NumpyNoise(7).randn((2, 3)), NumpyNoise(7).randn((2, 3))
    assert a.dtype == np.float32 and a.shape == (2, 3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, NumpyNoise(8).randn((2, 3)))
