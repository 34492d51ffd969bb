"""The tiny autoencoder (TAESD; diffusers' ``AutoencoderTiny``) as two extra ONNX components,
exported beside the full VAE by ``python -m export --tiny-vae PATH_OR_HUB_ID``:

- ``taesd_decoder``: latent_sample float32 (B, C, h, w) = the UNet's latents / the tiny VAE's
  ``scaling_factor`` -> sample float32 (B, 3, H, W), roughly [-1, 1] (not clamped). The server
  decodes previews with it (always, when present) and the fast preset's final images.
- ``taesd_encoder``: sample float32 (B, 3, H, W) in [-1, 1] -> latent_sample float32
  (B, C, h, w); times ``scaling_factor`` they are UNet latents. Deterministic: no distribution.

What diffusers computes, and the graphs mirror (``AutoencoderTiny`` / ``EncoderTiny`` /
``DecoderTiny``, diffusers 0.42):

- TAESD is trained on the UNet's latents as they are, so its ``scaling_factor`` is 1.0; an SD
  pipeline given ``vae=AutoencoderTiny`` decodes ``latents / vae.config.scaling_factor``. The
  server divides by the factor recorded in ``manifest.tiny_vae`` the same way.
- ``decode`` soft-clamps its input (``3 * tanh(x / 3)``) and maps its [0, 1] output to [-1, 1]
  (``x * 2 - 1``); ``encode`` maps [-1, 1] input to [0, 1] first (``(x + 1) / 2``). Both are
  inside the graphs. ``retrieve_latents`` takes ``.latents``: no noise is drawn.
- ``latent_magnitude`` / ``latent_shift`` only quantize latents to uint8 in ``forward`` (TAESD's
  storage format); ``encode`` / ``decode`` never use them, so the graphs do not either.

The tiny VAE must share the pipeline's latent space: same latent channels and the same
pixels-per-latent factor (``check_compatible``). TAESD itself fits SD 1.x / 2.x; TAESDXL and
TAEF1 (16 channels) do not fit SD 1.5 pipelines.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from server.models.manifest import Source, TinyVae

if TYPE_CHECKING:
    from .components import Dims

#: the extra components, in export order
TINY_COMPONENTS = ("taesd_decoder", "taesd_encoder")

#: Small AutoencoderTiny for tests: 4 levels (8 px per latent pixel, like the tiny SD pipeline's
#: VAE), 8 channels, one block per level (~18 k parameters). diffusers' defaults are TAESD's
#: architecture (64 channels, blocks (1, 3, 3, 3) / (3, 3, 3, 1), ~2.4 M parameters).
TINY_CONFIG = dict(
    encoder_block_out_channels=(8, 8, 8, 8),
    decoder_block_out_channels=(8, 8, 8, 8),
    num_encoder_blocks=(1, 1, 1, 1),
    num_decoder_blocks=(1, 1, 1, 1),
    latent_channels=4,
)


class TaesdDecoder(nn.Module):
    """latent_sample (B, C, h, w) -> sample (B, 3, s*h, s*w), roughly [-1, 1], not clamped.

    latent_sample = UNet latents / scaling_factor (1.0 for TAESD), as diffusers passes them."""

    def __init__(self, tiny_vae):
        super().__init__()
        self.tiny_vae = tiny_vae

    def forward(self, latent_sample):
        return self.tiny_vae.decode(latent_sample, return_dict=False)[0]


class TaesdEncoder(nn.Module):
    """sample (B, 3, H, W) in [-1, 1] -> latent_sample (B, C, H/s, W/s); UNet latents are
    latent_sample * scaling_factor (1.0 for TAESD)."""

    def __init__(self, tiny_vae):
        super().__init__()
        self.tiny_vae = tiny_vae

    def forward(self, sample):
        return self.tiny_vae.encode(sample, return_dict=False)[0]


def spatial_factors(tiny_vae) -> tuple[int, int]:
    """(encoder, decoder) image pixels per latent pixel, from the AutoencoderTiny config:
    every encoder level after the first halves the size (stride-2 conv), every decoder level
    but the last upsamples by ``upsampling_scaling_factor``."""
    cfg = tiny_vae.config
    enc = 2 ** (len(cfg.num_encoder_blocks) - 1)
    dec = int(cfg.upsampling_scaling_factor) ** (len(cfg.num_decoder_blocks) - 1)
    return enc, dec


def check_compatible(tiny_vae, dims: Dims) -> None:
    """Raise ValueError, saying what to fix, when ``tiny_vae`` cannot decode this pipeline's
    latents (other latent channels or another pixels-per-latent factor)."""
    cfg = tiny_vae.config
    if int(cfg.latent_channels) != dims.latent_channels:
        raise ValueError(
            f"the tiny VAE has {cfg.latent_channels} latent channels but the pipeline's VAE has "
            f"{dims.latent_channels}; use a tiny autoencoder trained for this model family "
            "(madebyollin/taesd for SD 1.x / 2.x)"
        )
    enc, dec = spatial_factors(tiny_vae)
    if enc != dims.scale or dec != dims.scale:
        raise ValueError(
            f"the tiny VAE maps {enc} px (encoder) / {dec} px (decoder) to one latent pixel but "
            f"the pipeline's VAE maps {dims.scale}; use a tiny autoencoder with as many levels "
            "as the pipeline's VAE"
        )
    shift = float(getattr(cfg, "shift_factor", 0.0) or 0.0)
    if shift != 0.0:
        # SD pipelines ignore shift_factor (they only divide by scaling_factor): a tiny VAE
        # that needs a shift was trained for another latent space (FLUX's).
        raise ValueError(
            f"the tiny VAE has shift_factor {shift}; SD pipelines decode without a shift, so it "
            "belongs to another model family"
        )


def load_tiny_vae(where: str, revision: str | None = None):
    """``AutoencoderTiny.from_pretrained(where)`` in fp32, eval mode. ``where``: a local folder
    (with config.json + weights) or a hub id. Raises ValueError naming the source on failure."""
    from diffusers import AutoencoderTiny

    try:
        model = AutoencoderTiny.from_pretrained(where, revision=revision, torch_dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - hub, file and config errors all mean "bad source"
        raise ValueError(
            f"could not load a diffusers AutoencoderTiny from {where!r} ({type(exc).__name__}: "
            f"{str(exc)[:300]}); pass a folder with config.json and "
            "diffusion_pytorch_model.safetensors, or a hub id such as madebyollin/taesd"
        ) from exc
    return model.eval()


def manifest_entry(where: str, tiny_vae) -> TinyVae:
    """What the manifest records about the tiny VAE: its source and scaling factor."""
    local = Path(where).expanduser()
    source = Source(model=where, path=str(local.resolve()) if local.is_dir() else None)
    return TinyVae(source=source, scaling_factor=float(tiny_vae.config.scaling_factor))


def build_random_tiny_vae(folder: Path, seed: int = 0, *, full_size: bool = False) -> Path:
    """Save a random-weight ``AutoencoderTiny`` to ``folder`` (``save_pretrained``); returns it.

    ``full_size``: TAESD's architecture (diffusers' defaults); else ``TINY_CONFIG``. The decoder's
    last convolution is rescaled (a linear map of its output, so the architecture is unchanged)
    so that N(0, 1) latents decode to images with mean ~0 and std ~0.5 in [-1, 1]: untouched
    random weights give nearly constant, mostly out-of-range images, which would make parity
    tests pass trivially after clipping.
    """
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    model = AutoencoderTiny(**({} if full_size else TINY_CONFIG)).eval()
    last = model.decoder.layers[-1]
    probe = torch.randn(2, model.config.latent_channels, 16, 16, generator=_gen(seed))
    with torch.no_grad():
        y = (model.decode(probe, return_dict=False)[0] + 1) / 2  # the last conv's output
        mean = y.mean(dim=(0, 2, 3))
        k = 0.25 / y.std(dim=(0, 2, 3)).clamp_min(1e-6)
        last.weight.mul_(k[:, None, None, None])
        last.bias.copy_((last.bias - mean) * k + 0.5)
    model.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
