"""Random LoRAs for the tiny pipeline and the tiny model exported with them fused, shared by
tests/export/test_lora_export.py and tests/e2e/test_fast_preset.py (built once per test process:
an export takes ~45 s on 2 busy cores).

- ``lcm_lora``: UNet-only (like the real LCM-LoRA), in a folder named ``tiny-lcm-lora`` so the
  exporter's automatic fast preset picks ``lcm:4:1.0``.
- ``style_lora``: UNet and text-encoder weights (like most style LoRAs), folder ``tiny-style-lora``.
- ``fused_export``: ``python -m export --tiny --lora <lcm>:0.8 --lora <style>:0.5`` (verified).
"""

from __future__ import annotations

from pathlib import Path

LCM_SCALE = 0.8
STYLE_SCALE = 0.5
_MEMO: dict[str, Path] = {}


def _once(key: str, build) -> Path:
    if key not in _MEMO:
        _MEMO[key] = build()
    return _MEMO[key]


def lcm_lora(tmp_path_factory, pipeline_dir: Path) -> Path:
    from export.lora import build_random_lora

    return _once("lcm", lambda: build_random_lora(
        pipeline_dir, tmp_path_factory.mktemp("loras") / "tiny-lcm-lora", seed=1,
        text_encoder=False,
    ))  # fmt: skip


def style_lora(tmp_path_factory, pipeline_dir: Path) -> Path:
    from export.lora import build_random_lora

    return _once("style", lambda: build_random_lora(
        pipeline_dir, tmp_path_factory.mktemp("loras") / "tiny-style-lora", seed=2,
    ))  # fmt: skip


def lora_args(tmp_path_factory, pipeline_dir: Path) -> list[str]:
    lcm = lcm_lora(tmp_path_factory, pipeline_dir)
    style = style_lora(tmp_path_factory, pipeline_dir)
    return ["--lora", f"{lcm}:{LCM_SCALE}", "--lora", f"{style}:{STYLE_SCALE}"]


def fused_export(tmp_path_factory, pipeline_dir: Path) -> Path:
    """The tiny preset (seed 0: the weights of ``pipeline_dir``) with both LoRAs fused."""
    from export.__main__ import main

    def build() -> Path:
        out = tmp_path_factory.mktemp("tiny-lora") / "tiny-lcm-sd-inpaint"
        rc = main(["--tiny", *lora_args(tmp_path_factory, pipeline_dir), "--out", str(out)])
        assert rc == 0, f"fused LoRA export failed (exit {rc}); see the captured output"
        return out

    return _once("export", build)
