"""The four ONNX components: I/O specs (the contract in docs/CONVENTIONS.md), PyTorch wrappers
that give each graph exactly that signature, and random sample inputs.

All tensors are NCHW. Images are float32 in [-1, 1]; latents are float32 (batch, 4, h, w) with
h = H / vae_scale_factor. ``timestep`` is float32 (batch,): one value per row, so a batcher can
run rows that sit at different denoising steps in one UNet call.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from server.models.manifest import TensorSpec

COMPONENTS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
TEXT_LEN = 77


@dataclass(frozen=True)
class Dims:
    """Sizes that fix every component's shapes: text hidden size and latent channels."""

    hidden: int
    latent_channels: int = 4
    unet_in_channels: int = 9
    scale: int = 8  # vae_scale_factor


def io_specs(component: str, d: Dims) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of ``component``; str axes are dynamic ("batch", "height", ...).

    "height"/"width" are pixels, "latent_height"/"latent_width" = pixels / vae_scale_factor.
    """
    f32 = "float32"
    lat = ["batch", d.latent_channels, "latent_height", "latent_width"]
    img = ["batch", 3, "height", "width"]
    if component == "text_encoder":
        return (
            [TensorSpec(name="input_ids", dtype="int64", shape=["batch", TEXT_LEN])],
            [TensorSpec(name="last_hidden_state", dtype=f32, shape=["batch", TEXT_LEN, d.hidden])],
        )
    if component == "unet":
        return (
            [
                TensorSpec(
                    name="sample",
                    dtype=f32,
                    shape=["batch", d.unet_in_channels, "latent_height", "latent_width"],
                ),
                TensorSpec(name="timestep", dtype=f32, shape=["batch"]),
                TensorSpec(
                    name="encoder_hidden_states", dtype=f32, shape=["batch", TEXT_LEN, d.hidden]
                ),
            ],
            [TensorSpec(name="out_sample", dtype=f32, shape=lat)],
        )
    if component == "vae_encoder":
        return (
            [TensorSpec(name="sample", dtype=f32, shape=img)],
            [
                TensorSpec(name="latent_mean", dtype=f32, shape=lat),
                TensorSpec(name="latent_std", dtype=f32, shape=lat),
            ],
        )
    if component == "vae_decoder":
        return (
            [TensorSpec(name="latent_sample", dtype=f32, shape=lat)],
            [TensorSpec(name="sample", dtype=f32, shape=img)],
        )
    raise KeyError(component)


class TextEncoder(nn.Module):
    """input_ids int64 (B, 77) -> last_hidden_state float32 (B, 77, hidden)."""

    def __init__(self, text_encoder):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids):
        return self.text_encoder(input_ids, return_dict=False)[0]


class UNet(nn.Module):
    """sample (B, 9, h, w), timestep float32 (B,), encoder_hidden_states (B, 77, hidden)
    -> out_sample (B, 4, h, w): the predicted noise (epsilon) or v, per the scheduler config.

    The 9 input channels are [noisy latents (4), mask at latent size (1), masked-image latents (4)],
    as StableDiffusionInpaintPipeline concatenates them.
    """

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]


@contextlib.contextmanager
def forward_upsample_sizes(unet):
    """While tracing, make every UNet up-block upsample to its skip connection's exact size.

    diffusers only forwards ``upsample_size`` when the latent side is not a multiple of
    2**num_upsamplers (64 px for SD). A graph traced at such a multiple would use a fixed 2x
    upsample and fail at the skip concat for, e.g., 520 px. Forcing the sizes (the same values
    diffusers computes in that case) keeps one graph valid for every multiple of 8 px, and
    identical to 2x upsampling when the side is a multiple of 64.
    """
    sizes: list = []  # spatial size of each down block's input, in order

    def record(_module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        sizes.append(hidden.shape[-2:])

    def reset(_module, _args, _kwargs):
        sizes.clear()

    n = len(unet.down_blocks)

    def force(i):
        def hook(_module, args, kwargs):
            if i < n - 1:  # the final up block has no upsampler
                kwargs["upsample_size"] = sizes[n - 2 - i]
            return args, kwargs

        return hook

    handles = [unet.register_forward_pre_hook(reset, with_kwargs=True)]
    handles += [b.register_forward_pre_hook(record, with_kwargs=True) for b in unet.down_blocks]
    handles += [
        b.register_forward_pre_hook(force(i), with_kwargs=True)
        for i, b in enumerate(unet.up_blocks)
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class VaeEncoder(nn.Module):
    """sample (B, 3, H, W) in [-1, 1] -> latent_mean, latent_std (B, 4, H/8, W/8), unscaled.

    std = exp(0.5 * clamp(logvar, -30, 20)), as diffusers' DiagonalGaussianDistribution. Callers
    sample ``mean + std * noise`` (or take the mean) and multiply by ``latent_scaling_factor``.
    """

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, sample):
        dist = self.vae.encode(sample, return_dict=False)[0]
        return dist.mean, dist.std


class VaeDecoder(nn.Module):
    """latent_sample (B, 4, h, w), already divided by the scaling factor -> sample (B, 3, 8h, 8w),
    roughly [-1, 1] (not clamped)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample):
        return self.vae.decode(latent_sample, return_dict=False)[0]


def wrap(component: str, pipe) -> nn.Module:
    """The eval-mode wrapper for ``component`` of a StableDiffusionInpaintPipeline."""
    module = {
        "text_encoder": lambda: TextEncoder(pipe.text_encoder),
        "unet": lambda: UNet(pipe.unet),
        "vae_encoder": lambda: VaeEncoder(pipe.vae),
        "vae_decoder": lambda: VaeDecoder(pipe.vae),
    }[component]()
    return module.eval()


def sample_inputs(
    component: str, d: Dims, batch: int, height: int, width: int, seed: int
) -> dict[str, torch.Tensor]:
    """Random inputs by graph input name. ``height``/``width`` in pixels (multiples of 8).

    Ranges mimic real use: token ids include BOS/EOS, timesteps spread over [0, 999] (distinct
    per row), images uniform in [-1, 1], latents ~ N(0, 1) (decoder: already unscaled by /0.18215,
    so N(0, 1) / 0.18215 would be realistic, but N(0, 1) keeps random-weight outputs moderate).
    """
    g = torch.Generator().manual_seed(seed)
    h, w = height // d.scale, width // d.scale
    if component == "text_encoder":
        ids = torch.randint(0, 49406, (batch, TEXT_LEN), generator=g)
        ids[:, 0] = 49406
        ids[:, -1] = 49407
        return {"input_ids": ids}
    if component == "unet":
        t = torch.linspace(1, 981, batch) + torch.randint(0, 10, (batch,), generator=g)
        return {
            "sample": torch.randn(batch, d.unet_in_channels, h, w, generator=g),
            "timestep": t.float(),
            "encoder_hidden_states": torch.randn(batch, TEXT_LEN, d.hidden, generator=g),
        }
    if component == "vae_encoder":
        return {"sample": torch.rand(batch, 3, height, width, generator=g) * 2 - 1}
    if component == "vae_decoder":
        return {"latent_sample": torch.randn(batch, d.latent_channels, h, w, generator=g)}
    raise KeyError(component)
