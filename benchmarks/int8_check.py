"""int8 on our exported UNet: is it faster than bf16, and at what error? (an experiment: the
server does not run int8; see docs/fast-paths.md, "Why no int8").

Runs in the optimum-intel venv, which has NNCF (`python -m benchmarks --preset cpu-512
--prepare-only` builds it)::

    benchmarks/.cache/optimum-venv/bin/python benchmarks/int8_check.py \
        benchmarks/.cache/models/sd15-random-lcm-taesd-fp32-cpu/unet/model.onnx --latent 64

Variants, each compiled by OpenVINO for the CPU with 2 threads: ``f32``; ``bf16`` (the hint
alone: this script does not pin the time embedding as the server does, so its bf16 error is the
unpinned one); ``hybrid`` (optimum-intel's recipe for diffusion models: MatMul weights int8
weight-only, every other op's activations and weights int8, rest bf16); ``full`` (NNCF's
transformer preset on every op, SmoothQuant included). Calibration: 10 random inputs (latents
N(0, 1), a random binary mask channel, text states N(0, 1), timesteps 999..1); the test inputs
are three others at batch 1 and two at batch 2. Reported per batch: the best of the timed calls
after a warm-up and the max relative error (max |out - f32| / max |f32|) over the test inputs.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import nncf
import numpy as np
import openvino as ov

CONFIG = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": "2"}


def _inputs(rng, batch: int, t: float, latent: int, hidden: int) -> dict[str, np.ndarray]:
    x = rng.standard_normal((batch, 9, latent, latent)).astype(np.float32)
    x[:, 4] = rng.random((batch, latent, latent)) > 0.5  # the mask channel
    return {
        "sample": x,
        "timestep": np.full((batch,), t, np.float32),
        "encoder_hidden_states": rng.standard_normal((batch, 77, hidden)).astype(np.float32),
    }


def _weighted_matmuls(model) -> list[str]:
    """MatMuls with a constant operand (through Convert/Reshape): int8 weight-only in hybrid."""
    out = []
    for op in model.get_ops():
        if op.get_type_name() != "MatMul":
            continue
        for port in (0, 1):
            node = op.input_value(port).get_node()
            while node.get_type_name() in ("Convert", "FakeQuantize", "Reshape") and node.inputs():
                node = node.input_value(0).get_node()
            if node.get_type_name() == "Constant":
                out.append(op.get_friendly_name())
                break
    return out


def _build(core, onnx: str, kind: str, calib: list[dict]) -> ov.Model:
    model = core.read_model(onnx)
    if kind in ("f32", "bf16"):
        return model
    # NNCF's settings for both int8 variants (optimum-intel's defaults for diffusion models)
    common = {
        "preset": nncf.QuantizationPreset.MIXED,
        "subset_size": len(calib),
        "model_type": nncf.ModelType.TRANSFORMER,
    }
    data = nncf.Dataset(calib)
    if kind == "hybrid":
        model = nncf.compress_weights(
            model,
            mode=nncf.CompressWeightsMode.INT8_ASYM,
            ignored_scope=nncf.IgnoredScope(types=["Convolution"]),
        )
        adv = nncf.AdvancedQuantizationParameters()
        adv.smooth_quant_alphas.matmul = -1
        ignored = nncf.IgnoredScope(names=_weighted_matmuls(model))
        return nncf.quantize(model, data, ignored_scope=ignored, advanced_parameters=adv, **common)
    if kind == "full":
        return nncf.quantize(model, data, **common)
    raise ValueError(f"unknown variant {kind!r}: f32, bf16, hybrid or full")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("onnx", help="the exported UNet (unet/model.onnx)")
    ap.add_argument("--latent", type=int, default=64, help="latent side (64 = 512 px)")
    ap.add_argument("--variants", default="f32,bf16,hybrid,full")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    a = ap.parse_args()
    core = ov.Core()
    states = next(i for i in core.read_model(a.onnx).inputs if "encoder_hidden_states" in i.names)
    hidden = states.get_partial_shape()[2].get_length()
    rng = np.random.default_rng(0)
    calib = [_inputs(rng, 1, t, a.latent, hidden) for t in (999, 879, 759, 639, 499, 379, 259, 139, 19, 1)]  # fmt: skip
    tests = {
        1: [_inputs(rng, 1, t, a.latent, hidden) for t in (999, 500, 21)],
        2: [_inputs(rng, 2, t, a.latent, hidden) for t in (999, 21)],
    }
    ref: dict[int, list[np.ndarray]] = {}
    results = {}
    for kind in a.variants.split(","):
        t0 = time.perf_counter()
        model = _build(core, a.onnx, kind, calib)
        built = time.perf_counter() - t0
        hint = "f32" if kind == "f32" else "bf16"
        compiled = core.compile_model(model, "CPU", {**CONFIG, "INFERENCE_PRECISION_HINT": hint})
        row: dict = {"quantize_s": round(built, 1)}
        for batch, feeds in tests.items():
            outs, times = [], []
            for f in feeds + [feeds[0], feeds[0]]:
                t0 = time.perf_counter()
                outs.append(np.asarray(compiled(f)[0]).copy())
                times.append(time.perf_counter() - t0)
            outs = outs[: len(feeds)]
            if kind == "f32":
                ref[batch] = outs
            # server.models.providers.accuracy.max_relative_error's measure, written out: the
            # optimum venv this runs in has no onnxruntime, which the server package imports
            errs = [
                float(np.abs(o - r).max() / np.abs(r).max())
                for o, r in zip(outs, ref.get(batch, outs), strict=True)
            ]
            row[f"batch{batch}"] = {
                "best_s": round(min(times[1:]), 3),
                "max_rel_err": round(max(errs), 4) if batch in ref else None,
            }
        results[kind] = row
        print(kind, json.dumps(row), flush=True)
        del compiled, model
        gc.collect()
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
