"""ONNX Runtime (CPU EP by default) vs PyTorch fp32, per component.

Pass criterion: ``max|ort - torch| <= tolerance`` with

    tolerance = rtol[precision] * max(1, max|torch output|)

Scaling by the output's peak magnitude lets one rule cover the tiny test model and the full
SD 1.5 architecture (whose random-weight VAE decoder outputs reach tens), while the floor of 1
keeps near-zero outputs from demanding impossible precision.

- fp32, rtol 1e-4: measured ~2e-6 on the tiny model (text, UNet, VAE; decoder ~8e-6 at peak ~3),
  i.e. float32 reassociation noise; a real export bug (wrong timestep, wrong upsample, wrong
  layout) is O(1) relative.
- fp16, rtol 2e-2: fp16 has an 11-bit mantissa (eps ~1e-3) and errors grow through dozens of
  layers; measured ~1.5e-3 on the tiny fp16 UNet. Half-precision noise, not a bug, lives below 2%.
``--tolerance X`` replaces rtol (``--tolerance 0`` makes any difference fail, useful in tests).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from server.models.manifest import Verification

from .components import Dims, sample_inputs, wrap

RTOL = {"fp32": 1e-4, "fp16": 2e-2}
SEED = 1234


class VerificationError(RuntimeError):
    """An exported graph disagrees with PyTorch beyond tolerance."""


def session(path: Path, provider: str = "CPUExecutionProvider", threads: int = 0):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.log_severity_level = 3  # no "initializer ... appears in graph inputs" chatter
    return ort.InferenceSession(str(path), opts, providers=[provider])


def compare(
    component: str,
    sess,
    pipe,
    dims: Dims,
    batch: int,
    height: int,
    width: int,
    seed: int = SEED,
) -> tuple[float, float, float, dict[str, list[int]]]:
    """Run both on the same random inputs: (max_abs_diff, mean_abs_diff, ref_peak, input shapes).

    ``height``/``width`` in pixels (multiples of ``dims.scale``). UNet rows get distinct timesteps.
    """
    inputs = sample_inputs(component, dims, batch, height, width, seed)
    with torch.no_grad():
        ref = wrap(component, pipe)(**inputs)
    refs = [r.numpy() for r in (ref if isinstance(ref, tuple) else (ref,))]
    outs = sess.run(None, {k: v.numpy() for k, v in inputs.items()})
    diffs = []
    for o, r in zip(outs, refs, strict=True):
        if o.shape != r.shape or o.dtype != np.float32:
            raise VerificationError(
                f"{component}: ORT output {o.dtype}{o.shape} != expected float32{r.shape}"
            )
        diffs.append(np.abs(o.astype(np.float64) - r))
    max_diff = max(float(d.max()) for d in diffs)
    mean_diff = float(np.mean([d.mean() for d in diffs]))
    peak = max(float(np.abs(r).max()) for r in refs)
    if not np.isfinite(max_diff):
        max_diff = float("inf")
    shapes = {k: list(v.shape) for k, v in inputs.items()}
    return max_diff, mean_diff, peak, shapes


def tolerance_for(precision: str, peak: float, rtol: float | None = None) -> float:
    return (RTOL[precision] if rtol is None else rtol) * max(1.0, peak)


def verify_component(
    component: str,
    path: Path,
    pipe,
    dims: Dims,
    precision: str,
    rtol: float | None = None,
    provider: str = "CPUExecutionProvider",
    graph: str = "final",
) -> Verification:
    """Batch 2 (two different timesteps for the UNet) at about half the native size, with
    latent sides that differ by one (one of them odd), so the forwarded UNet upsample sizes are
    exercised."""
    side = max(4, dims.sample_size // 2)  # latent pixels
    height, width = side * dims.scale, (side + 1) * dims.scale
    max_diff, mean_diff, peak, shapes = compare(
        component, session(path, provider), pipe, dims, batch=2, height=height, width=width
    )
    tol = tolerance_for(precision, peak, rtol)
    return Verification(
        component=component,
        max_abs_diff=max_diff,
        mean_abs_diff=mean_diff,
        tolerance=tol,
        passed=bool(max_diff <= tol),
        reference_max_abs=peak,
        rtol=RTOL[precision] if rtol is None else rtol,
        inputs=shapes,
        provider=provider,
        graph=graph,
    )
