"""LaMa-style inpainting networks (Fourier convolutions) in PyTorch, and loading LaMa weights.

The architecture is LaMa's ``FFCResNetGenerator`` (Suvorov et al., "Resolution-robust Large Mask
Inpainting with Fourier Convolutions"), written here with the SAME module names, so a state dict
of the real model (big-lama: ngf 64, 3 downsamplings, 18 FFC residual blocks with 75 % global
channels, sigmoid output; ~51 M parameters) loads into it unchanged:

    model.0  ReflectionPad2d(3)          model.1  FFC_BN_ACT 7x7, 4 -> ngf (local only)
    model.2..  FFC_BN_ACT 3x3 stride 2 (the last one splits into local + global channels)
    model.k..  FFCResnetBlock x n_blocks (conv1, conv2: FFC_BN_ACT with a SpectralTransform)
    ConcatTupleLayer, 3 x (ConvTranspose2d, BatchNorm2d, ReLU), ReflectionPad2d(3), Conv2d 7x7,
    Sigmoid

The global branch's ``FourierUnit`` is the operator mix that matters for export: rfftn over
(H, W) -> real/imag as channels -> 1x1 conv + BN + ReLU -> irfftn back to (H, W). It is written
with ``view_as_real`` / ``view_as_complex`` and explicit sizes (the same arithmetic as LaMa's
``torch.stack((x.real, x.imag))`` / ``torch.complex``), because torch.export cannot take the size
of a complex tensor with symbolic dims; the dynamo ONNX exporter then emits ``DFT`` ops.

``LamaInpainter`` is what gets exported: ``forward(image, mask)`` with image float32
(B, 3, H, W) in [0, 1] RGB and mask float32 (B, 1, H, W) in {0, 1}, 1 = hole; it feeds the
generator cat(image * (1 - mask), mask) and returns mask * prediction + (1 - mask) * image in
[0, 1], as LaMa's ``DefaultInpaintingTrainingModule`` does. H and W must be multiples of 8.

Sizes: ``tiny`` (ngf 8, 2 blocks; tests), ``full`` (big-lama's configuration, random weights;
benchmarks). ``python -m export.lama_like --size full --out big-lama-random.pt`` writes a
TorchScript file shaped like IOPaint's ``big-lama.pt``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


def _dft_basis(n: torch.Tensor, m: int | torch.Tensor, size) -> tuple[torch.Tensor, torch.Tensor]:
    """cos / sin of 2 pi n k / size for n (rows) x k < m (columns), float32. The product n k is
    reduced modulo ``size`` in integers first, so large indices lose no float precision."""
    k = torch.arange(m, device=n.device)
    nk = n[:, None] * k[None, :]
    angle = torch.remainder(nk, torch.full_like(nk, size)).to(torch.float32) * (2 * math.pi / size)
    return torch.cos(angle), torch.sin(angle)


def rfft2_matmul(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.fft.rfftn(x, dim=(-2, -1), norm="ortho")`` as (real, imag), by matrix products."""
    h, w = x.shape[-2], x.shape[-1]
    cw, sw = _dft_basis(torch.arange(w, device=x.device), w // 2 + 1, w)
    re, im = x @ cw, -(x @ sw)  # along W (one-sided)
    ch, sh = _dft_basis(torch.arange(h, device=x.device), h, h)
    out_re, out_im = ch @ re + sh @ im, ch @ im - sh @ re  # along H (full)
    scale = torch.rsqrt(torch.tensor(h * w, dtype=torch.float32))
    return out_re * scale, out_im * scale


def irfft2_matmul(re: torch.Tensor, im: torch.Tensor, h, w) -> torch.Tensor:
    """``torch.fft.irfftn(re + i im, s=(h, w), dim=(-2, -1), norm="ortho")`` by matrix products
    (the imaginary parts of the DC and Nyquist columns are ignored, as pocketfft does)."""
    ch, sh = _dft_basis(torch.arange(h, device=re.device), h, h)
    zr, zi = ch @ re - sh @ im, ch @ im + sh @ re  # inverse along H
    half = re.shape[-1]
    cw, sw = _dft_basis(torch.arange(half, device=re.device), w, w)  # (half, w)
    k = torch.arange(half, device=re.device)
    weight = torch.where((k == 0) | (2 * k == w), 1.0, 2.0).to(torch.float32)[:, None]
    out = zr @ (weight * cw) - zi @ (weight * sw)
    return out * torch.rsqrt(torch.tensor(h * w, dtype=torch.float32))


class FourierUnit(nn.Module):
    """Global mixing in the frequency domain: rfft2 -> 1x1 conv on (real, imag) -> irfft2.

    ``fft``: "native" = ``torch.fft`` (the exporter writes ONNX ``DFT`` ops); "matmul" = the same
    transforms as products with cos/sin matrices built at run time from the input size (ONNX
    ``MatMul``). Same weights, same result to float rounding; see ``set_fft``.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv_layer = nn.Conv2d(in_channels * 2, out_channels * 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels * 2)
        self.relu = nn.ReLU(inplace=True)
        self.fft = "native"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        half = w // 2 + 1
        if self.fft == "matmul":
            re, im = rfft2_matmul(x)
            spec = torch.stack((re, im), dim=-1)
        else:
            spec = torch.view_as_real(torch.fft.rfftn(x, dim=(-2, -1), norm="ortho"))
        # (b, c, h, half, 2) -> channels (c0 re, c0 im, c1 re, ...) as LaMa orders them
        spec = spec.permute(0, 1, 4, 2, 3).reshape(b, -1, h, half)
        spec = self.relu(self.bn(self.conv_layer(spec)))
        spec = spec.reshape(b, -1, 2, h, half)
        if self.fft == "matmul":
            return irfft2_matmul(spec[:, :, 0], spec[:, :, 1], h, w)
        spec = spec.permute(0, 1, 3, 4, 2).contiguous()
        return torch.fft.irfftn(torch.view_as_complex(spec), s=(h, w), dim=(-2, -1), norm="ortho")


class SpectralTransform(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.downsample = nn.AvgPool2d(2, 2) if stride == 2 else nn.Identity()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, out_channels // 2, 1, bias=False),
            nn.BatchNorm2d(out_channels // 2),
            nn.ReLU(inplace=True),
        )
        self.fu = FourierUnit(out_channels // 2, out_channels // 2)
        self.conv2 = nn.Conv2d(out_channels // 2, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.downsample(x))
        return self.conv2(x + self.fu(x))


class FFC(nn.Module):
    """Fast Fourier convolution: local (l) and global (g) channel groups, four paths between
    them; the global -> global path is a ``SpectralTransform``. A missing group is the int 0."""

    def __init__(self, cin, cout, kernel, ratio_gin, ratio_gout, stride=1, padding=0):
        super().__init__()
        in_g, out_g = int(cin * ratio_gin), int(cout * ratio_gout)
        in_l, out_l = cin - in_g, cout - out_g
        self.ratio_gout = ratio_gout

        def conv(i, o):
            if i == 0 or o == 0:
                return nn.Identity()
            return nn.Conv2d(i, o, kernel, stride, padding, bias=False, padding_mode="reflect")

        self.convl2l, self.convl2g, self.convg2l = (
            conv(in_l, out_l),
            conv(in_l, out_g),
            conv(in_g, out_l),
        )
        self.convg2g = (
            nn.Identity() if in_g == 0 or out_g == 0 else SpectralTransform(in_g, out_g, stride)
        )
        self.gate = nn.Identity()  # LaMa's optional gating, off in its configurations

    def forward(self, x):
        x_l, x_g = x if isinstance(x, tuple) else (x, 0)
        out_l, out_g = 0, 0
        if self.ratio_gout != 1:
            out_l = self.convl2l(x_l) + self.convg2l(x_g)
        if self.ratio_gout != 0:
            out_g = self.convl2g(x_l) + self.convg2g(x_g)
        return out_l, out_g


class FFC_BN_ACT(nn.Module):  # noqa: N801 - LaMa's name, part of the state-dict keys
    def __init__(self, cin, cout, kernel, ratio_gin, ratio_gout, stride=1, padding=0):
        super().__init__()
        self.ffc = FFC(cin, cout, kernel, ratio_gin, ratio_gout, stride, padding)
        out_g = int(cout * ratio_gout)
        self.bn_l = nn.Identity() if ratio_gout == 1 else nn.BatchNorm2d(cout - out_g)
        self.bn_g = nn.Identity() if ratio_gout == 0 else nn.BatchNorm2d(out_g)
        self.act_l = nn.Identity() if ratio_gout == 1 else nn.ReLU(inplace=True)
        self.act_g = nn.Identity() if ratio_gout == 0 else nn.ReLU(inplace=True)

    def forward(self, x):
        x_l, x_g = self.ffc(x)
        return self.act_l(self.bn_l(x_l)), self.act_g(self.bn_g(x_g))


class FFCResnetBlock(nn.Module):
    def __init__(self, dim: int, ratio: float):
        super().__init__()
        self.conv1 = FFC_BN_ACT(dim, dim, 3, ratio, ratio, padding=1)
        self.conv2 = FFC_BN_ACT(dim, dim, 3, ratio, ratio, padding=1)

    def forward(self, x):
        x_l, x_g = x
        y_l, y_g = self.conv2(self.conv1((x_l, x_g)))
        return x_l + y_l, x_g + y_g


class ConcatTupleLayer(nn.Module):
    def forward(self, x):
        x_l, x_g = x
        return x_l if not torch.is_tensor(x_g) else torch.cat([x_l, x_g], dim=1)


@dataclass(frozen=True)
class LamaConfig:
    ngf: int = 64
    n_downsampling: int = 3
    n_blocks: int = 18
    ratio: float = 0.75  # global share of the residual blocks' channels
    input_nc: int = 4
    output_nc: int = 3


FFT_MODES = ("native", "matmul")
SIZES = {"tiny": LamaConfig(ngf=8, n_blocks=2), "full": LamaConfig()}


class FFCResNetGenerator(nn.Module):
    def __init__(self, cfg: LamaConfig):
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            FFC_BN_ACT(cfg.input_nc, cfg.ngf, 7, 0, 0),
        ]
        for i in range(cfg.n_downsampling):
            last = i == cfg.n_downsampling - 1
            cin, cout = cfg.ngf * 2**i, cfg.ngf * 2 ** (i + 1)
            layers.append(
                FFC_BN_ACT(cin, cout, 3, 0, cfg.ratio if last else 0, stride=2, padding=1)
            )
        dim = cfg.ngf * 2**cfg.n_downsampling
        layers += [FFCResnetBlock(dim, cfg.ratio) for _ in range(cfg.n_blocks)]
        layers.append(ConcatTupleLayer())
        for i in range(cfg.n_downsampling):
            c = cfg.ngf * 2 ** (cfg.n_downsampling - i)
            layers += [
                nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1),
                nn.BatchNorm2d(c // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(cfg.ngf, cfg.output_nc, 7), nn.Sigmoid()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LamaInpainter(nn.Module):
    """(image [0, 1], mask 1 = hole) -> inpainted image [0, 1]; see the module docstring."""

    def __init__(self, generator: FFCResNetGenerator):
        super().__init__()
        self.generator = generator

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        masked = image * (1 - mask)
        predicted = self.generator(torch.cat([masked, mask], dim=1))
        return mask * predicted + (1 - mask) * image


def randomize_batchnorm(module: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial running statistics, so that BatchNorm folding is exercised by the export."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) * 0.5 + 0.75)


def set_fft(model: nn.Module, fft: str) -> nn.Module:
    """Switch every ``FourierUnit`` of ``model`` to ``fft`` ("native" | "matmul")."""
    if fft not in FFT_MODES:
        raise ValueError(f"fft must be one of {FFT_MODES}, got {fft!r}")
    for m in model.modules():
        if isinstance(m, FourierUnit):
            m.fft = fft
    return model


def build(size: str = "tiny", seed: int = 0) -> LamaInpainter:
    """A random-weight LaMa-style inpainter (eval mode, fp32); deterministic from ``seed``."""
    torch.manual_seed(seed)
    model = LamaInpainter(FFCResNetGenerator(SIZES[size]))
    with torch.no_grad():
        randomize_batchnorm(model, torch.Generator().manual_seed(seed))
    return model.eval()


# ---------------------------------------------------------------------------- real weights
_ANCHOR = "model.1.ffc.convl2l.weight"  # the first conv: present in every FFCResNetGenerator


def generator_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The generator's entries of a LaMa state dict (TorchScript ``big-lama.pt``, a Lightning
    ``best.ckpt``'s ``state_dict``...), keys relative to the generator."""
    anchors = [k for k in state if k.endswith(_ANCHOR) and "discriminator" not in k]
    if not anchors:
        raise ValueError(f"no LaMa generator in this checkpoint (no key ending in {_ANCHOR!r})")
    prefix = min(anchors, key=len)[: -len(_ANCHOR)]
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def config_from_state(state: dict[str, torch.Tensor]) -> LamaConfig:
    """Read ngf, downsamplings, blocks and the global ratio from the generator's weights."""
    first = state[_ANCHOR]
    ngf, input_nc = int(first.shape[0]), int(first.shape[1])
    indices = {int(k.split(".")[1]) for k in state if k.startswith("model.")}
    down = sum(1 for i in indices if i >= 2 and f"model.{i}.ffc.convl2l.weight" in state)
    blocks = sum(1 for i in indices if f"model.{i}.conv1.ffc.convl2l.weight" in state)
    dim = ngf * 2**down
    ratio = (
        1.0 - state[f"model.{2 + down}.conv1.ffc.convl2l.weight"].shape[0] / dim if blocks else 0
    )
    out = [v for k, v in state.items() if k.endswith(".weight") and v.ndim == 4][-1]
    return LamaConfig(ngf, down, blocks, round(ratio, 4), input_nc, int(out.shape[0]))


def from_state_dict(state: dict[str, torch.Tensor]) -> LamaInpainter:
    """A ``LamaInpainter`` holding the generator weights of a LaMa checkpoint (strict load)."""
    gen_state = generator_state(state)
    model = LamaInpainter(FFCResNetGenerator(config_from_state(gen_state)))
    model.generator.load_state_dict(gen_state, strict=True)
    return model.eval()


def save_torchscript(model: nn.Module, path: Path, side: int = 64) -> Path:
    """Trace ``model`` (image, mask) and save it as TorchScript, as IOPaint ships big-lama."""
    image = torch.rand(1, 3, side, side)
    mask = (torch.rand(1, 1, side, side) > 0.7).float()
    with torch.no_grad():
        traced = torch.jit.trace(model, (image, mask), check_trace=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    traced.save(str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m export.lama_like",
        description="write a random-weight LaMa-style network as TorchScript (no download)",
    )
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    model = build(a.size, a.seed)
    n = sum(t.numel() for t in model.parameters())
    save_torchscript(model, a.out)
    print(f"wrote {a.out} ({a.size}: {n / 1e6:.1f} M parameters, random weights)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
