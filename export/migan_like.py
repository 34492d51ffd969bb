"""MI-GAN-style inpainting in PyTorch: the generator and the uint8 pipeline MI-GAN ships as ONNX.

MI-GAN (Sargsyan et al., ICCV 2023, Picsart-AI-Research/MI-GAN) is a small encoder/decoder GAN
built from depthwise-separable convolutions with StyleGAN2-style FIR resampling and per-layer
noise. ``MiganGenerator`` has the module names of the official ``migan_inference.Generator``,
so the released ``migan_512_places2.pt`` (a state dict) loads into it unchanged:

    encoder.b{res} (res = R .. 8): fromrgb (first only), conv1, conv2 (stride-2 FIR downsample)
    encoder.b4;  synthesis.b4, synthesis.b{res} (8 .. R): conv1 (FIR upsample), conv2, torgb

Generator input: 4 channels cat(mask - 0.5, image * mask) with image in [-1, 1] and mask
1 = keep, 0 = hole (so the mask channel is +0.5 known / -0.5 hole); output 3 channels, roughly
[-1, 1]; fixed size R x R (the noise buffers are R x R).

``MiganPipeline`` wraps it with the pre/post-processing of MI-GAN's ONNX pipeline
(``scripts/create_onnx_pipeline.py``, first version): ``forward(image, mask)`` with image uint8
(B, 3, H, W) RGB and mask uint8 (B, 1, H, W), **255 = keep, 0 = hole** (OpenAI's convention
inverted); it resizes to R x R, runs the generator, resizes back, composites with the mask and
returns uint8 (B, 3, H, W) (truncated, as the original's ``.to(torch.uint8)``). Any H, W.
(The official pipeline's later version also crops around the hole inside the graph; the server
already crops with its own rule, so this one does not.)

Sizes: ``tiny`` (R 64, narrow channels; tests), ``full`` (R 512, the official channel widths).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class LReluAGC(nn.Module):
    """leaky ReLU (0.2) x sqrt(2), clamped to +-256: MI-GAN's ``lrelu_agc`` (no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.leaky_relu(x, 0.2) * math.sqrt(2)).clamp(-256, 256)


def _fir(gain: float) -> torch.Tensor:
    """The [1, 3, 3, 1] binomial filter, 2-D, normalized, times ``gain``."""
    f = torch.tensor([1.0, 3.0, 3.0, 1.0])
    f = torch.outer(f, f)
    return f / f.sum() * gain


class Downsample2d(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.filter = nn.Conv2d(channels, channels, 4, 2, 1, groups=channels, bias=False)
        self.filter.weight = nn.Parameter(_fir(1.0).repeat(channels, 1, 1, 1))

    def forward(self, x):
        return self.filter(x)


class Upsample2d(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.insert_zeros = nn.ConvTranspose2d(
            channels, channels, 2, 2, groups=channels, bias=False
        )
        zeros = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
        self.insert_zeros.weight = nn.Parameter(zeros.repeat(channels, 1, 1, 1))
        self.filter = nn.Conv2d(channels, channels, 4, groups=channels, bias=False)
        self.filter.weight = nn.Parameter(_fir(4.0).repeat(channels, 1, 1, 1))

    def forward(self, x):
        return self.filter(F.pad(self.insert_zeros(x), (2, 1, 2, 1)))


class SeparableConv2d(nn.Module):
    """Depthwise kxk (+ activation) -> optional FIR downsample -> 1x1 -> optional upsample ->
    optional noise -> activation."""

    def __init__(self, cin, cout, kernel=3, act=True, resolution=None, noise=False, down=1, up=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cin, kernel, padding=kernel // 2, groups=cin)
        self.conv2 = nn.Conv2d(cin, cout, 1, bias=False)
        self.downsample = Downsample2d(cin) if down > 1 else None
        self.upsample = Upsample2d(cout) if up > 1 else None
        self.use_noise = noise
        if noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.activation = LReluAGC() if act else None

    def forward(self, x):
        x = self.conv1(x)
        if self.activation is not None:
            x = self.activation(x)
        if self.downsample is not None:
            x = self.downsample(x)
        x = self.conv2(x)
        if self.upsample is not None:
            x = self.upsample(x)
        if self.use_noise:
            x = x + self.noise_const * self.noise_strength
        if self.activation is not None:
            x = self.activation(x)
        return x


class EncoderBlock(nn.Module):
    def __init__(self, cin, cout, rgb_n=None, down=2):
        super().__init__()
        self.fromrgb = nn.Conv2d(rgb_n, cin, 1) if rgb_n is not None else None
        self.conv1 = SeparableConv2d(cin, cin)
        self.conv2 = SeparableConv2d(cin, cout, down=down)
        self.activation = LReluAGC()

    def forward(self, x, img):
        if self.fromrgb is not None:
            y = self.activation(self.fromrgb(img))
            x = y if x is None else x + y
        feat = self.conv1(x)
        return self.conv2(feat), feat


def _channels(res: int, ch_base: int, ch_max: int) -> int:
    return min(ch_base // res, ch_max)


class Encoder(nn.Module):
    def __init__(self, resolution: int, ch_base: int, ch_max: int, ic_n: int = 4):
        super().__init__()
        self.encode_res = [2**i for i in range(int(math.log2(resolution)), 1, -1)]
        for idx, (ri, rj) in enumerate(zip(self.encode_res[:-1], self.encode_res[1:], strict=True)):
            ci, cj = _channels(ri, ch_base, ch_max), _channels(rj, ch_base, ch_max)
            setattr(self, f"b{ri}", EncoderBlock(ci, cj, rgb_n=ic_n if idx == 0 else None))
        c4 = _channels(4, ch_base, ch_max)
        self.b4 = EncoderBlock(c4, c4, down=1)

    def forward(self, img):
        x, feats = None, {}
        for res in self.encode_res[:-1]:
            x, feats[res] = getattr(self, f"b{res}")(x, img)
        x, feats[4] = self.b4(x, img)
        return x, feats


class SynthesisBlockFirst(nn.Module):
    def __init__(self, cout, rgb_n=3):
        super().__init__()
        self.conv1 = SeparableConv2d(cout, cout)
        self.conv2 = SeparableConv2d(cout, cout, resolution=4)
        self.torgb = nn.Conv2d(cout, rgb_n, 1)

    def forward(self, x, enc_feat):
        x = self.conv2(self.conv1(x) + enc_feat)
        return x, self.torgb(x)


class SynthesisBlock(nn.Module):
    def __init__(self, cin, cout, resolution, rgb_n=3):
        super().__init__()
        self.conv1 = SeparableConv2d(cin, cout, resolution=resolution, noise=True, up=2)
        self.conv2 = SeparableConv2d(cout, cout, resolution=resolution, noise=True)
        self.torgb = nn.Conv2d(cout, rgb_n, 1)
        self.upsample = Upsample2d(rgb_n)

    def forward(self, x, enc_feat, img):
        x = self.conv2(self.conv1(x) + enc_feat)
        return x, self.upsample(img) + self.torgb(x)


class Synthesis(nn.Module):
    def __init__(self, resolution: int, ch_base: int, ch_max: int, rgb_n: int = 3):
        super().__init__()
        self.block_res = [2**i for i in range(2, int(math.log2(resolution)) + 1)]
        self.b4 = SynthesisBlockFirst(_channels(4, ch_base, ch_max), rgb_n)
        for ri, rj in zip(self.block_res[:-1], self.block_res[1:], strict=True):
            ci, cj = _channels(ri, ch_base, ch_max), _channels(rj, ch_base, ch_max)
            setattr(self, f"b{rj}", SynthesisBlock(ci, cj, rj, rgb_n))

    def forward(self, x, feats):
        x, img = self.b4(x, feats[4])
        for res in self.block_res[1:]:
            x, img = getattr(self, f"b{res}")(x, feats[res], img)
        return img


class MiganGenerator(nn.Module):
    """(B, 4, R, R) [mask - 0.5, image * mask] -> (B, 3, R, R) roughly [-1, 1]."""

    def __init__(self, resolution: int = 512, ch_base: int = 32768, ch_max: int = 512):
        super().__init__()
        if 2 ** int(math.log2(resolution)) != resolution:
            raise ValueError(f"resolution must be a power of two, got {resolution}")
        self.resolution = resolution
        self.synthesis = Synthesis(resolution, ch_base, ch_max)
        self.encoder = Encoder(resolution, ch_base, ch_max)

    def forward(self, x):
        x, feats = self.encoder(x)
        return self.synthesis(x, feats)


class MiganPipeline(nn.Module):
    """uint8 image + uint8 mask (255 = keep) -> uint8 image; see the module docstring."""

    def __init__(self, generator: MiganGenerator):
        super().__init__()
        self.generator = generator

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        r = self.generator.resolution
        size = image.shape[-2:]
        img = F.interpolate(image.float(), size=(r, r), mode="bilinear", align_corners=False)
        keep = F.interpolate(mask.float(), size=(r, r), mode="nearest") / 255
        img = img * (2 / 255) - 1
        out = self.generator(torch.cat([keep - 0.5, img * keep], dim=1))
        out = ((out * 0.5 + 0.5) * 255).clamp(0, 255)
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        full_keep = mask.float() / 255
        composed = image.float() * full_keep + out * (1 - full_keep)
        return composed.clamp(0, 255).to(torch.uint8)


SIZES = {"tiny": dict(resolution=64, ch_base=1024, ch_max=32), "full": dict(resolution=512)}


def build(size: str = "tiny", seed: int = 0) -> MiganPipeline:
    """A random-weight MI-GAN-style pipeline (eval mode); deterministic from ``seed``. The
    noise strengths (zero-initialised in training) are set so that the noise path matters."""
    torch.manual_seed(seed)
    gen = MiganGenerator(**SIZES[size])
    with torch.no_grad():
        for m in gen.modules():
            if isinstance(m, SeparableConv2d) and m.use_noise:
                m.noise_strength.fill_(0.1)
    return MiganPipeline(gen).eval()


def from_state_dict(state: dict[str, torch.Tensor]) -> MiganPipeline:
    """The pipeline around a MI-GAN generator state dict (e.g. ``migan_512_places2.pt``); the
    resolution and channel widths are read from the weights. Strict load."""
    anchor = "synthesis.b4.conv1.conv1.weight"  # present in every MI-GAN generator
    found = [k for k in state if k.endswith(anchor)]
    if not found:
        raise ValueError(f"no MI-GAN generator in this checkpoint (no key ending in {anchor!r})")
    prefix = min(found, key=len)[: -len(anchor)]  # "", "generator.", "model."...
    state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    blocks = [int(k.split(".")[1][1:]) for k in state if k.startswith("synthesis.b")]
    resolution = max(blocks)
    c_first = int(state["synthesis.b4.conv1.conv1.weight"].shape[0])  # min(ch_base // 4, ch_max)
    c_last = int(state[f"synthesis.b{resolution}.conv2.conv1.weight"].shape[0])
    gen = MiganGenerator(resolution, ch_base=c_last * resolution, ch_max=c_first)
    gen.load_state_dict(state, strict=True)
    return MiganPipeline(gen).eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m export.migan_like",
        description="write a random-weight MI-GAN-style generator state dict (no download)",
    )
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    model = build(a.size, a.seed)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.generator.state_dict(), a.out)
    n = sum(t.numel() for t in model.parameters())
    print(f"wrote {a.out} ({a.size}: {n / 1e6:.2f} M parameters, random weights)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
