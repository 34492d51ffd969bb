"""DPM-Solver++ multistep (diffusers' ``DPMSolverMultistepScheduler``): ``dpmpp_2m`` and its
Karras-sigmas variant."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import (
    _COMMON_DEFAULTS,
    _ONE,
    F32,
    SchedulerConfigError,
    StepOutput,
    _columns,
    _f32,
    _karras_sigmas,
    _per_row,
    _row_slices,
    _same_branch,
    _sigma_to_t,
    _stack,
    _threshold,
)
from .sigma import _SigmaScheduler


class DPMSolverMultistep(_SigmaScheduler):
    """DPM-Solver++ multistep (algorithm_type dpmsolver++), orders 1-3, midpoint/heun."""

    diffusers_class = "DPMSolverMultistepScheduler"
    defaults = {
        **_COMMON_DEFAULTS,
        "solver_order": 2,
        "thresholding": False,
        "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0,
        "algorithm_type": "dpmsolver++",
        "solver_type": "midpoint",
        "lower_order_final": True,
        "euler_at_final": False,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "use_lu_lambdas": False,
        "use_flow_sigmas": False,
        "flow_shift": 1.0,
        "final_sigmas_type": "zero",
        "lambda_min_clipped": -float("inf"),
        "variance_type": None,
        "rescale_betas_zero_snr": False,
        "use_dynamic_shifting": False,
        "time_shift_type": "exponential",
    }

    def _check_config(self) -> None:
        super()._check_config()
        c = self.config
        if c["algorithm_type"] == "deis":
            c["algorithm_type"] = "dpmsolver++"
        if c["solver_type"] in ("logrho", "bh1", "bh2"):
            c["solver_type"] = "midpoint"
        if c["algorithm_type"] != "dpmsolver++":
            raise SchedulerConfigError(
                f"algorithm_type={c['algorithm_type']!r} is not supported; only 'dpmsolver++'"
            )
        if c["solver_type"] not in ("midpoint", "heun"):
            raise SchedulerConfigError("solver_type must be 'midpoint' or 'heun'")
        if int(c["solver_order"]) not in (1, 2, 3):
            raise SchedulerConfigError("solver_order must be 1, 2 or 3")
        for key in (
            "use_exponential_sigmas",
            "use_beta_sigmas",
            "use_lu_lambdas",
            "use_flow_sigmas",
            "use_dynamic_shifting",
        ):
            if c[key]:
                raise SchedulerConfigError(f"{key}=True is not supported")
        if c["final_sigmas_type"] not in ("zero", "sigma_min"):
            raise SchedulerConfigError("final_sigmas_type must be 'zero' or 'sigma_min'")

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self._check_steps(num_inference_steps)
        c = self.config
        big_t = int(c["num_train_timesteps"])
        ac = self.alphas_cumprod
        lambda_t = np.log(np.sqrt(ac)) - np.log(np.sqrt(_ONE - ac))
        clipped_idx = int(np.searchsorted(lambda_t[::-1], c["lambda_min_clipped"], side="left"))
        last_t = big_t - clipped_idx
        sp = c["timestep_spacing"]
        if sp == "linspace":
            ts = np.linspace(0, last_t - 1, n + 1).round()[::-1][:-1].astype(np.int64)
        elif sp == "leading":
            ratio = last_t // (n + 1)
            ts = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].astype(np.int64)
            ts = ts + int(c["steps_offset"])
        else:
            ts = np.arange(last_t, 0, -big_t / n).round().astype(np.int64) - 1
        train = self._train_sigmas()
        log_sigmas = np.log(train)
        if c["use_karras_sigmas"]:
            flipped = train[::-1]
            sig = _karras_sigmas(float(flipped[0]), float(flipped[-1]), n)
            ts = np.array([_sigma_to_t(s, log_sigmas) for s in sig])
            if c["beta_schedule"] != "squaredcos_cap_v2":
                ts = ts.round()
        else:
            sig = np.interp(ts, np.arange(0, len(train)), train)
        if c["final_sigmas_type"] == "sigma_min":
            last = np.sqrt((_ONE - ac[0]) / ac[0])
        else:
            last = 0.0
        self.sigmas = np.concatenate([sig, [last]]).astype(np.float32)
        self.timesteps = np.ascontiguousarray(np.asarray(ts).astype(np.int64))
        self.num_inference_steps = len(self.timesteps)
        self.model_outputs: list[np.ndarray | None] = [None] * int(c["solver_order"])
        self.lower_order_nums = 0
        self._step_index = None
        self._begin_index = None

    def _index_for_timestep(self, timestep: Any) -> int:
        hits = np.nonzero(self.timesteps == np.asarray(timestep).reshape(-1)[0])[0]
        if len(hits) == 0:
            return len(self.timesteps) - 1
        return int(hits[1] if len(hits) > 1 else hits[0])

    # dpmsolver++ ignores input scaling
    @classmethod
    def scale_model_input_batch(cls, schedulers, sample, timesteps) -> np.ndarray:
        return _f32(sample)

    @property
    def init_noise_sigma(self) -> float:
        return 1.0

    @staticmethod
    def _alpha_sigma(sigma: np.float32) -> tuple[np.float32, np.float32]:
        alpha_t = _ONE / np.sqrt(sigma * sigma + _ONE)
        return alpha_t, sigma * alpha_t

    def _lambda(self, i: int) -> tuple[np.float32, np.float32, np.float32]:
        a, s = self._alpha_sigma(self.sigmas[i])
        with np.errstate(divide="ignore"):
            return a, s, np.log(a) - np.log(s)

    def add_noise(self, original: np.ndarray, noise: np.ndarray, timestep: Any) -> np.ndarray:
        original, noise = _f32(original), _f32(noise)
        sigma = _per_row(self.sigmas[self._add_noise_indices(timestep)], original.ndim)
        alpha_t = _ONE / np.sqrt(sigma * sigma + _ONE)
        sigma_t = sigma * alpha_t
        return (alpha_t * original + sigma_t * noise).astype(np.float32)

    @classmethod
    def _convert(cls, schedulers, model_output: np.ndarray, sample: np.ndarray) -> np.ndarray:
        """x0 estimates of stacked rows (each at its own step index)."""
        c = schedulers[0].config
        pt = c["prediction_type"]
        pairs = [s._alpha_sigma(s.sigmas[s._step_index]) for s in schedulers]
        alpha_t, sigma_t = (_per_row(v, sample.ndim) for v in zip(*pairs, strict=True))
        if pt == "epsilon":
            if c["variance_type"] in ("learned", "learned_range"):
                model_output = model_output[:, :3]
            x0 = (sample - sigma_t * model_output) / alpha_t
        elif pt == "v_prediction":
            x0 = alpha_t * sample - sigma_t * model_output
        else:
            x0 = model_output.copy()  # kept as history: the caller may reuse model_output
        if c["thresholding"]:
            x0 = _threshold(x0, c["dynamic_thresholding_ratio"], c["sample_max_value"])
        return _f32(x0)

    def _order_now(self, timestep: Any) -> int:
        """The solver order (1, 2 or 3) this row's next step uses (its branch). Pure."""
        c = self.config
        i = self._peek_step_index(timestep)
        n = len(self.timesteps)
        order = int(c["solver_order"])
        lower_final = (i == n - 1) and (
            c["euler_at_final"]
            or (c["lower_order_final"] and n < 15)
            or c["final_sigmas_type"] == "zero"
        )
        lower_second = (i == n - 2) and c["lower_order_final"] and n < 15
        if order == 1 or self.lower_order_nums < 1 or lower_final:
            return 1
        if order == 2 or self.lower_order_nums < 2 or lower_second:
            return 2
        return 3

    def batch_key(self, timestep: Any) -> tuple:
        return (self.config_key, self._order_now(timestep))

    @classmethod
    def step_batch(cls, schedulers, model_output, timesteps, sample, noises) -> StepOutput:
        for s in schedulers:
            s._require_timesteps()
        pairs = zip(schedulers, timesteps, strict=True)
        branch = _same_branch([s._order_now(t) for s, t in pairs], "DPM-Solver++")
        for s, t in zip(schedulers, timesteps, strict=True):
            s._init_step_index(t)
        model_output, sample = _f32(model_output), _f32(sample)
        x0 = cls._convert(schedulers, model_output, sample)
        for s, row in zip(schedulers, _row_slices(x0, len(schedulers)), strict=True):
            s.model_outputs = s.model_outputs[1:] + [row]
        solver = {1: cls._first_order, 2: cls._second_order, 3: cls._third_order}[branch]
        coeffs = [solver(s) for s in schedulers]
        cv = _columns(coeffs, sample.ndim)
        m = [x0] + [_stack([s.model_outputs[-k] for s in schedulers]) for k in (2, 3)[: branch - 1]]
        if branch == 1:
            a, b = cv
            prev = a * sample - b * m[0]
        elif branch == 2:
            a, b, inv_r0, k = cv
            d0, d1 = m[0], inv_r0 * (m[0] - m[1])
            x = a * sample - b * d0
            # midpoint: k = 0.5 * alpha_t * e, subtracted; heun: k = alpha_t * (e / h + 1), added
            prev = x - k * d1 if schedulers[0].config["solver_type"] == "midpoint" else x + k * d1
        else:
            a, b, c1_0, c1_1, c_r, c_2, k1, k2 = cv
            d1_0, d1_1 = c1_0 * (m[0] - m[1]), c1_1 * (m[1] - m[2])
            d1 = d1_0 + c_r * (d1_0 - d1_1)
            d2 = c_2 * (d1_0 - d1_1)
            prev = a * sample - b * m[0] + k1 * d1 - k2 * d2
        order = int(schedulers[0].config["solver_order"])
        for s in schedulers:
            if s.lower_order_nums < order:
                s.lower_order_nums += 1
            s._step_index += 1
        return StepOutput(_f32(prev), x0)

    # Per-row float32 scalar coefficients of each solver order (diffusers' expressions).
    def _first_order(self) -> tuple:
        i = self._step_index
        alpha_t, sigma_t, lam_t = self._lambda(i + 1)
        _, sigma_s, lam_s = self._lambda(i)
        h = lam_t - lam_s
        return sigma_t / sigma_s, alpha_t * (np.exp(-h) - _ONE)

    def _second_order(self) -> tuple:
        i = self._step_index
        alpha_t, sigma_t, lam_t = self._lambda(i + 1)
        _, sigma_s0, lam_s0 = self._lambda(i)
        _, _, lam_s1 = self._lambda(i - 1)
        h, h_0 = lam_t - lam_s0, lam_s0 - lam_s1
        with np.errstate(divide="ignore", invalid="ignore"):  # h = 0 when sigma repeats
            r0 = h_0 / h
            inv_r0 = _ONE / r0
        e = np.exp(-h) - _ONE
        if self.config["solver_type"] == "midpoint":
            k = F32(0.5) * (alpha_t * e)
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                k = alpha_t * (e / h + _ONE)
        return sigma_t / sigma_s0, alpha_t * e, inv_r0, k

    def _third_order(self) -> tuple:
        i = self._step_index
        alpha_t, sigma_t, lam_t = self._lambda(i + 1)
        _, sigma_s0, lam_s0 = self._lambda(i)
        _, _, lam_s1 = self._lambda(i - 1)
        _, _, lam_s2 = self._lambda(i - 2)
        h, h_0, h_1 = lam_t - lam_s0, lam_s0 - lam_s1, lam_s1 - lam_s2
        with np.errstate(divide="ignore", invalid="ignore"):
            r0, r1 = h_0 / h, h_1 / h
            c1_0, c1_1 = _ONE / r0, _ONE / r1
            c_r = r0 / (r0 + r1)
            c_2 = _ONE / (r0 + r1)
            e = np.exp(-h) - _ONE
            k1 = alpha_t * (e / h + _ONE)
            k2 = alpha_t * ((e + h) / (h * h) - F32(0.5))
        return sigma_t / sigma_s0, alpha_t * e, c1_0, c1_1, c_r, c_2, k1, k2
