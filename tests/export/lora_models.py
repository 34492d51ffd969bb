"""Random LoRAs for the tiny pipeline and the tiny model exported with them fused, shared by
tests/export/test_lora_export.py and tests/e2e/test_fast_preset.py (from the test-model cache,
tests/artifacts.py: an export takes ~45 s on 2 busy cores, once per source version).

- ``lcm_lora``: UNet-only (like the real LCM-LoRA), in a folder named ``tiny-lcm-lora`` so the
  exporter's automatic fast preset picks ``lcm:4:1.0``.
- ``style_lora``: UNet and text-encoder weights (like most style LoRAs), folder ``tiny-style-lora``.
- ``fused_export``: ``python -m export --tiny --lora <lcm>:0.8 --lora <style>:0.5`` (verified).

``pipeline_dir`` is the ``tiny_pipeline_dir`` fixture. The folders are read-only: copy first.
"""

from __future__ import annotations

from pathlib import Path

from tests import artifacts

LCM_SCALE = 0.8
STYLE_SCALE = 0.5


def lcm_lora(pipeline_dir: Path) -> Path:
    return artifacts.lora(pipeline_dir, "tiny-lcm-lora", seed=1, text_encoder=False)


def style_lora(pipeline_dir: Path) -> Path:
    return artifacts.lora(pipeline_dir, "tiny-style-lora", seed=2)


def lora_args(pipeline_dir: Path) -> list[str]:
    lcm, style = lcm_lora(pipeline_dir), style_lora(pipeline_dir)
    return ["--lora", f"{lcm}:{LCM_SCALE}", "--lora", f"{style}:{STYLE_SCALE}"]


def fused_export(pipeline_dir: Path) -> Path:
    """The tiny preset (seed 0: the weights of ``pipeline_dir``) with both LoRAs fused."""
    return artifacts.export("--tiny", *lora_args(pipeline_dir), folder="tiny-lcm-sd-inpaint")
