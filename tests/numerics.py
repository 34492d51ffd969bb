"""Helpers shared by the numerics tests (they import torch; server tests do not need this)."""

from __future__ import annotations

import torch


class TorchNoise:
    """NoiseSource drawing exactly what ``torch.Generator().manual_seed(seed)`` gives diffusers,
    so our pipeline/schedulers and diffusers consume identical random numbers."""

    def __init__(self, seed: int):
        self.gen = torch.Generator().manual_seed(seed)

    def randn(self, shape):
        return torch.randn(tuple(shape), generator=self.gen, dtype=torch.float32).numpy()
