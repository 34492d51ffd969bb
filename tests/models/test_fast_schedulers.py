"""LCM / TCD (numpy) against diffusers' LCMScheduler / TCDScheduler, and the batched step path
(``Scheduler.step_batch``) of every scheduler against each row stepped alone.

The full denoising-loop parity of lcm and tcd over the SD 1.5, SD 2 v-prediction and linear
configs, 1-50 steps and strengths 0.3-1 runs in tests/models/test_schedulers.py (they are in
``tests.numerics.REF``); here: the schedule itself for every step count, what the inpainting
pipeline passes them, the remaining prediction types and options, TCD's gamma, noise order,
and the limits.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from diffusers import TCDScheduler  # noqa: E402

from server.models.schedulers import (  # noqa: E402
    TCD,
    NumpyNoise,
    batch_groups,
    make_scheduler,
    scheduler_names,
    strength_timesteps,
)
from tests.numerics import PIPE_KWARGS, TorchNoise, ref_scheduler, rel_err  # noqa: E402
from tests.numerics import SCHEDULER_TOL as TOL  # noqa: E402
from tests.numerics import SD15_SCHEDULER as SD15  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

FAST = ("lcm", "tcd")
SHAPE = (1, 4, 8, 8)


def fake_model(x: np.ndarray, t) -> np.ndarray:
    """A smooth deterministic stand-in for the UNet (float32)."""
    t = np.float32(float(t))
    return (np.float32(0.7) * np.tanh(x * np.float32(0.4)) * np.sin(t / np.float32(211.0))
            + np.float32(0.08) * x).astype(np.float32)  # fmt: skip


def loop(name: str, config: dict, steps: int, strength: float = 1.0, seed: int = 0) -> float:
    """The inpainting pipeline's loop on both sides (set_timesteps(steps) then the last
    int(steps * strength) timesteps, ``step(...)`` with the generator / our noise source);
    returns the worst relative difference of samples and x0 (LCM: ``denoised``)."""
    ref = ref_scheduler(name, config)
    ours = make_scheduler(config, name)
    ref.set_timesteps(steps)
    t_start = steps - min(int(steps * strength), steps)
    ref_ts = ref.timesteps[t_start:]
    ref.set_begin_index(t_start)
    ts = strength_timesteps(ours, steps, strength)
    np.testing.assert_array_equal(ts, ref_ts.numpy())
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    ref_x = torch.from_numpy(x.copy())
    gen, noise = torch.Generator().manual_seed(seed), TorchNoise(seed)
    kw = PIPE_KWARGS.get(name, {})
    err = 0.0
    for i, t in enumerate(ts):
        eps = fake_model(x, t)
        r = ref.step(torch.from_numpy(eps), ref_ts[i], ref_x, generator=gen, **kw)
        o = ours.step(eps, t, x, noise)
        err = max(err, rel_err(o.prev_sample, r.prev_sample))
        if name == "lcm":
            err = max(err, rel_err(o.pred_original_sample, r.denoised))
        elif i == len(ts) - 1:  # TCD's last prev_sample is its x_s, from our x0 estimate
            assert o.pred_original_sample.shape == SHAPE
        x, ref_x = o.prev_sample, r.prev_sample
    # the same number of draws on both sides: the streams are still in step
    assert float(torch.randn(1, generator=gen)) == float(noise.randn((1,))[0])
    return err


@pytest.mark.parametrize("name", FAST)
def test_timesteps_every_step_count(name):
    """All 1..50 step counts give diffusers' timesteps (from the 50 distillation timesteps)."""
    for steps in range(1, 51):
        ours, ref = make_scheduler(SD15, name), ref_scheduler(name, SD15)
        ours.set_timesteps(steps)
        ref.set_timesteps(steps)
        np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
        assert ours.timesteps.dtype == np.int64
    four = make_scheduler(SD15, name)
    four.set_timesteps(4)
    assert four.timesteps.tolist() == [999, 759, 499, 259]


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize(
    "steps,strength", [(1, 1.0), (2, 1.0), (4, 1.0), (8, 1.0), (4, 0.5), (8, 0.6)]
)
def test_loop_parity_sd15(name, steps, strength):
    assert loop(name, SD15, steps, strength) < TOL


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize(
    "extra",
    [
        {"prediction_type": "v_prediction"},
        {"prediction_type": "sample"},
        {"original_inference_steps": 100},
        {"timestep_scaling": 4.0},
        {"clip_sample": True, "clip_sample_range": 0.8},
        {"thresholding": True, "sample_max_value": 1.5},
        {
            "beta_schedule": "linear",
            "beta_start": 0.0001,
            "beta_end": 0.02,
            "set_alpha_to_one": True,
        },
    ],
    ids=lambda e: "-".join(f"{k}={v}" for k, v in e.items()),
)
def test_option_parity(name, extra):
    for steps, strength in ((3, 1.0), (6, 0.7)):
        assert loop(name, {**SD15, **extra}, steps, strength, seed=4) < TOL


def test_tcd_gamma_is_diffusers_default():
    assert TCD.eta == inspect.signature(TCDScheduler.step).parameters["eta"].default == 0.3


@pytest.mark.parametrize("name", FAST)
def test_no_noise_after_the_last_step(name):
    """One-step sampling draws nothing (diffusers draws only between steps)."""
    s = make_scheduler(SD15, name)
    s.set_timesteps(1)
    x = np.ones(SHAPE, np.float32)
    out = s.step(fake_model(x, 999), 999, x, noise=None)  # no noise source needed
    assert np.isfinite(out.prev_sample).all()


@pytest.mark.parametrize("name", FAST)
def test_more_steps_than_distilled_is_a_clear_error(name):
    s = make_scheduler(SD15, name)
    with pytest.raises(ValueError, match="at most 50 steps"):
        s.set_timesteps(51)
    with pytest.raises(ValueError):
        ref_scheduler(name, SD15).set_timesteps(51)  # diffusers refuses too


# ------------------------------------------------------------------ the batched step path

BATCH_CONFIGS = {
    "sd15": SD15,
    "prk": {**SD15, "skip_prk_steps": False},
    "order3": {**SD15, "solver_order": 3},
}
PLANS = [(12, 1.0), (12, 1.0), (20, 0.75), (7, 1.0), (12, 1.0)]  # (steps, strength) per row


def _start(name, config, plan, k):
    s = make_scheduler(config, name)
    ts = strength_timesteps(s, *plan)
    x = np.random.default_rng(k).standard_normal(SHAPE).astype(np.float32)
    return s, ts, x * np.float32(s.init_noise_sigma), NumpyNoise(k)


def _alone(name, config, plan, k) -> np.ndarray:
    s, ts, x, noise = _start(name, config, plan, k)
    for t in ts:
        scaled = type(s).scale_model_input_batch([s], x, [t])
        x = s.step(fake_model(scaled, t), t, x, noise).prev_sample
    return x


def _together(name, config) -> tuple[list[np.ndarray], int]:
    """Every row advanced in ``batch_groups`` groups each round (rows at other positions, some
    finishing early); returns the final samples and how many groups held several rows."""
    rows = [_start(name, config, plan, k) for k, plan in enumerate(PLANS)]
    xs = [r[2] for r in rows]
    pos = [0] * len(rows)
    shared = 0
    while any(p < len(r[1]) for p, r in zip(pos, rows, strict=True)):
        live = [k for k in range(len(rows)) if pos[k] < len(rows[k][1])]
        scheds = [rows[k][0] for k in live]
        ts = [rows[k][1][pos[k]] for k in live]
        for _, idx in batch_groups(scheds, ts):
            ks = [live[i] for i in idx]
            group, tg = [rows[k][0] for k in ks], [ts[i] for i in idx]
            x = np.concatenate([xs[k] for k in ks])
            scaled = type(group[0]).scale_model_input_batch(group, x, tg)
            eps = np.concatenate([fake_model(scaled[j : j + 1], t) for j, t in enumerate(tg)])
            out = type(group[0]).step_batch(group, eps, tg, x, [rows[k][3] for k in ks])
            for j, k in enumerate(ks):
                xs[k] = out.prev_sample[j : j + 1].copy()
                pos[k] += 1
            shared += len(ks) > 1
    return xs, shared


@pytest.mark.parametrize(
    "name,cfg",
    [(n, "sd15") for n in scheduler_names()]
    + [("pndm", "prk"), ("dpmpp_2m", "order3"), ("dpmpp_2m_karras", "order3")],
)
def test_step_batch_equals_each_row_alone(name, cfg):
    """Rows stepped together in one array operation give the same bits as each row alone."""
    together, shared = _together(name, BATCH_CONFIGS[cfg])
    assert shared > 0  # rows really were stepped together
    for k, plan in enumerate(PLANS):
        np.testing.assert_array_equal(together[k], _alone(name, BATCH_CONFIGS[cfg], plan, k))


def test_batch_groups_split_by_branch_and_use_slices():
    """Rows of one class whose multistep state takes different branches form separate groups;
    a contiguous group is a slice (views), a scattered one an index array."""
    scheds = [make_scheduler(SD15, n) for n in ("pndm", "pndm", "euler", "pndm")]
    for s in scheds:
        s.set_timesteps(10)
    x = np.zeros(SHAPE, np.float32)
    t0 = scheds[0].timesteps[0]
    scheds[1].step(x, t0, x)  # one step ahead: PNDM's next update is another formula
    ts = [s.timesteps[1 if i == 1 else 0] for i, s in enumerate(scheds)]
    groups = batch_groups(scheds, ts)
    assert [idx for _, idx in groups] == [[0, 3], [1], [2]]
    assert isinstance(groups[0][0], np.ndarray) and groups[1][0] == slice(1, 2)
    with pytest.raises(ValueError, match="batch_key"):
        type(scheds[0]).step_batch([scheds[0], scheds[1]], np.zeros((2, 4, 8, 8), np.float32),
                                   [ts[0], ts[1]], np.zeros((2, 4, 8, 8), np.float32), [None, None])  # fmt: skip
