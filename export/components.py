"""The four ONNX components (+ the tiny autoencoder's two, ``export/taesd.py``): I/O specs (the
contract in docs/CONVENTIONS.md), PyTorch wrappers that give each graph exactly that signature,
and random sample inputs.

All tensors are NCHW. Images are float32 in [-1, 1]; latents are float32
(batch, latent_channels, h, w) with h = H / vae_scale_factor. ``timestep`` is float32 (batch,):
one value per row, so a batcher can run rows that sit at different denoising steps in one UNet
call. Every size and token id comes from the exported pipeline's own configs via ``Dims``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from server.models.manifest import TensorSpec

from .taesd import TaesdDecoder, TaesdEncoder

COMPONENTS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
#: transformers' ``model_max_length`` when a tokenizer config sets none (int(1e30)); anything
#: this large means "unset", not a length.
UNSET_LENGTH = 10**18


@dataclass(frozen=True)
class Dims:
    """What the exported pipeline's configs say about its graphs: every shape, id range and
    special token the exporter needs. Build it with ``Dims.from_pipeline``; nothing in export/
    assumes CLIP's or SD 1.5's values.

    Text: prompts are ``text_len`` int64 ids in [0, ``vocab_size``), laid out as
    [bos] tokens eos pad..., encoded to float32 (text_len, hidden). Latents: ``latent_channels``
    channels at 1/``scale`` of the image side; the UNet's native latent side is ``sample_size``.
    """

    text_len: int  # tokenizer.model_max_length: diffusers pads/truncates every prompt to it
    hidden: int  # text_encoder hidden_size (= the UNet's cross-attention dim)
    vocab_size: int  # text_encoder embedding rows
    bos_id: int | None  # None: the tokenizer adds no begin-of-sequence token
    eos_id: int
    pad_id: int
    latent_channels: int
    unet_in_channels: int  # 2 * latent_channels + 1 for inpainting
    scale: int  # vae_scale_factor: image pixels per latent pixel
    sample_size: int  # UNet config sample_size (latent pixels)
    num_train_timesteps: int  # scheduler: timesteps are in [0, num_train_timesteps)

    @property
    def native(self) -> int:
        """Native image side in pixels (512 for SD 1.5)."""
        return self.sample_size * self.scale

    @classmethod
    def from_pipeline(cls, pipe) -> Dims:
        """Read a StableDiffusionInpaintPipeline's tokenizer and component configs.

        Special ids come from the tokenizer (text-encoder configs often carry stale ones: SD 1.5's
        says bos 0 / eos 2). Raises ValueError, saying what to fix, when a setting is missing or
        the components disagree with each other.
        """
        tok, text = pipe.tokenizer, pipe.text_encoder.config
        unet, vae = pipe.unet.config, pipe.vae.config
        dims = cls(
            text_len=_text_len(tok, text),
            hidden=int(text.hidden_size),
            vocab_size=int(text.vocab_size),
            bos_id=tok.bos_token_id,
            eos_id=_required_id(tok, "eos_token"),
            # diffusers pads every prompt to text_len, so a pipeline that runs has a pad token
            pad_id=_required_id(tok, "pad_token"),
            latent_channels=int(vae.latent_channels),
            unet_in_channels=int(unet.in_channels),
            scale=int(pipe.vae_scale_factor),
            sample_size=int(unet.sample_size),
            num_train_timesteps=int(pipe.scheduler.config.num_train_timesteps),
        )
        dims.check(pipe)
        return dims

    def check(self, pipe) -> None:
        """Raise ValueError when the pipeline cannot be exported to the ONNX contract."""
        lat, unet = self.latent_channels, pipe.unet.config
        if self.unet_in_channels != 2 * lat + 1 or unet.out_channels != lat:
            raise ValueError(
                f"UNet has {self.unet_in_channels} input / {unet.out_channels} output channels; "
                f"an inpainting model ({2 * lat + 1} = latents {lat} + mask 1 + masked-image "
                f"latents {lat} in, {lat} out) is required"
            )
        cross = unet.cross_attention_dim
        if isinstance(cross, int) and cross != self.hidden:
            raise ValueError(
                f"text encoder hidden size {self.hidden} != UNet cross_attention_dim {cross}"
            )
        specials = {"bos": self.bos_id, "eos": self.eos_id, "pad": self.pad_id}
        for name, i in specials.items():
            if i is not None and not 0 <= i < self.vocab_size:
                raise ValueError(
                    f"tokenizer {name} id {i} is outside the text encoder's vocabulary "
                    f"(vocab_size {self.vocab_size})"
                )
        if getattr(pipe.text_encoder.config, "use_attention_mask", False):
            # diffusers then feeds the tokenizer's attention mask, which the graph contract
            # (input_ids only) cannot carry; exporting would silently change the embeddings
            raise ValueError("text encoders with use_attention_mask=True are not supported")


def _text_len(tokenizer, text_config) -> int:
    """Prompt length in tokens: the tokenizer's model_max_length, as diffusers pads to it."""
    n = tokenizer.model_max_length
    positions = getattr(text_config, "max_position_embeddings", None)
    if n is None or n >= UNSET_LENGTH:
        raise ValueError(
            "the tokenizer has no model_max_length, so diffusers cannot pad prompts; set "
            f"model_max_length in tokenizer/tokenizer_config.json (the text encoder has "
            f"{positions} positions)"
        )
    if positions is not None and n > positions:
        raise ValueError(
            f"tokenizer model_max_length {n} exceeds the text encoder's "
            f"max_position_embeddings {positions}"
        )
    return int(n)


def _required_id(tokenizer, name: str) -> int:
    i = getattr(tokenizer, f"{name}_id")
    if i is None:
        raise ValueError(f"the tokenizer defines no {name}; set it in tokenizer_config.json")
    return int(i)


def io_specs(component: str, d: Dims) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of ``component``; str axes are dynamic ("batch", "height", ...).

    "height"/"width" are pixels, "latent_height"/"latent_width" = pixels / vae_scale_factor.
    """
    f32 = "float32"
    lat = ["batch", d.latent_channels, "latent_height", "latent_width"]
    img = ["batch", 3, "height", "width"]
    embeddings = ["batch", d.text_len, d.hidden]
    if component == "text_encoder":
        return (
            [TensorSpec(name="input_ids", dtype="int64", shape=["batch", d.text_len])],
            [TensorSpec(name="last_hidden_state", dtype=f32, shape=embeddings)],
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
                TensorSpec(name="encoder_hidden_states", dtype=f32, shape=embeddings),
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
    if component == "taesd_encoder":  # deterministic: one latent, no distribution
        return (
            [TensorSpec(name="sample", dtype=f32, shape=img)],
            [TensorSpec(name="latent_sample", dtype=f32, shape=lat)],
        )
    if component in ("vae_decoder", "taesd_decoder"):
        return (
            [TensorSpec(name="latent_sample", dtype=f32, shape=lat)],
            [TensorSpec(name="sample", dtype=f32, shape=img)],
        )
    raise KeyError(component)


class TextEncoder(nn.Module):
    """input_ids int64 (B, text_len) -> last_hidden_state float32 (B, text_len, hidden)."""

    def __init__(self, text_encoder):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids):
        return self.text_encoder(input_ids, return_dict=False)[0]


class UNet(nn.Module):
    """sample (B, 2C + 1, h, w), timestep float32 (B,), encoder_hidden_states
    (B, text_len, hidden) -> out_sample (B, C, h, w), C = latent channels (4 for SD): the
    predicted noise (epsilon) or v, per the scheduler config.

    The input channels are [noisy latents (C), mask at latent size (1), masked-image latents (C)],
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
    """sample (B, 3, H, W) in [-1, 1] -> latent_mean, latent_std (B, C, H/s, W/s), unscaled
    (C latent channels, s = vae_scale_factor).

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
    """latent_sample (B, C, h, w), already divided by the scaling factor -> sample
    (B, 3, s*h, s*w), roughly [-1, 1] (not clamped); s = vae_scale_factor."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample):
        return self.vae.decode(latent_sample, return_dict=False)[0]


def wrap(component: str, pipe) -> nn.Module:
    """The eval-mode wrapper for ``component`` of a StableDiffusionInpaintPipeline (the taesd_*
    components wrap ``pipe.tiny_vae``, set by the exporter when ``--tiny-vae`` is given)."""
    module = {
        "text_encoder": lambda: TextEncoder(pipe.text_encoder),
        "unet": lambda: UNet(pipe.unet),
        "vae_encoder": lambda: VaeEncoder(pipe.vae),
        "vae_decoder": lambda: VaeDecoder(pipe.vae),
        "taesd_encoder": lambda: TaesdEncoder(pipe.tiny_vae),
        "taesd_decoder": lambda: TaesdDecoder(pipe.tiny_vae),
    }[component]()
    return module.eval()


def sample_inputs(
    component: str, d: Dims, batch: int, height: int, width: int, seed: int
) -> dict[str, torch.Tensor]:
    """Random inputs by graph input name. ``height``/``width`` in pixels (multiples of d.scale).

    Ranges mimic real use: token ids as ``sample_token_ids``, timesteps spread over
    [0, num_train_timesteps) (distinct per row), images uniform in [-1, 1], latents ~ N(0, 1)
    (decoder: real inputs are N(0, 1) / scaling_factor, but N(0, 1) keeps random-weight outputs
    moderate; the tiny decoder's real inputs are the UNet's N(0, 1)-like latents as they are).
    """
    g = torch.Generator().manual_seed(seed)
    h, w = height // d.scale, width // d.scale
    if component == "text_encoder":
        return {"input_ids": sample_token_ids(d, batch, g)}
    if component == "unet":
        top = 0.98 * d.num_train_timesteps  # + up to 9 below stays under num_train_timesteps
        t = torch.linspace(1, top, batch) + torch.randint(0, 10, (batch,), generator=g)
        return {
            "sample": torch.randn(batch, d.unet_in_channels, h, w, generator=g),
            "timestep": t.float(),
            "encoder_hidden_states": torch.randn(batch, d.text_len, d.hidden, generator=g),
        }
    if component in ("vae_encoder", "taesd_encoder"):
        return {"sample": torch.rand(batch, 3, height, width, generator=g) * 2 - 1}
    if component in ("vae_decoder", "taesd_decoder"):
        return {"latent_sample": torch.randn(batch, d.latent_channels, h, w, generator=g)}
    raise KeyError(component)


def sample_token_ids(d: Dims, batch: int, g: torch.Generator) -> torch.Tensor:
    """int64 (batch, d.text_len) laid out as the tokenizer pads prompts: [bos], random ordinary
    ids (in [0, d.vocab_size), never a special id), eos, then pad up to text_len. Row 0 fills
    every position (a truncated prompt, eos last); the other rows end at random lengths, so
    padding is exercised too."""
    specials = sorted({i for i in (d.bos_id, d.eos_id, d.pad_id) if i is not None})
    ids = torch.randint(0, d.vocab_size - len(specials), (batch, d.text_len), generator=g)
    for special in specials:  # ascending: maps [0, vocab - k) onto the non-special ids
        ids += (ids >= special).long()
    first = 0
    if d.bos_id is not None:
        ids[:, 0] = d.bos_id
        first = 1
    ends = torch.randint(first, d.text_len, (batch,), generator=g)
    ends[0] = d.text_len - 1
    for row, end in enumerate(ends.tolist()):
        ids[row, end] = d.eos_id
        ids[row, end + 1 :] = d.pad_id
    return ids
