"""One-shot inpainting networks (LaMa, MI-GAN, AOT-GAN, MAT...): image + mask -> image in one
forward pass of one ONNX graph. No prompt, no steps, no seed.

What serving gives a row and what the graph wants differ (``oneshot_io.py`` adapts them): rows
are work-size crops (``imaging.plan_work_region``, the crop rule every model shares, with the
limits below), uint8 RGB with a float mask where 1 = edit. Each row is padded (reflect) to the
graph's fixed size or pad multiple, coded as the manifest's ``OneShotIO`` says, run, decoded and
cropped back; serving then pastes it into the full image with pixels outside the edit region
bit-exact (``service/encode.compose``).

Batching: the single-pass batcher hands ``run`` up to ``--max-batch-size`` rows. Rows with the
same padded size share one graph call when the graph has a dynamic batch axis
(``io.dynamic_batch``); otherwise each row is its own call. A fixed-size graph (e.g. LaMa at
512x512) pads every row to the same size, so any rows can share a call.

Sizes: a fixed-size graph works at most at its size (``max_work_side`` = the smaller fixed side,
so a 4096x4096 photo with a small mask costs one 512x512 pass); a dynamic one at most at
``max_work_side`` from the manifest (default 1.5 x ``native_resolution``, as the SD models).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .base import Row
from .capabilities import Capabilities, ModelLimits
from .manifest import OneShotManifest, read_manifest
from .oneshot_io import from_output, padded_size, to_feeds
from .providers import ExecutionProvider, select_provider

#: the one component of a one-shot model folder
COMPONENT = "inpainter"
#: output sizes a client may ask for (the crop rule bounds what the network sees)
MIN_SIDE, MAX_SIDE = 16, 4096


def work_limits(manifest: OneShotManifest) -> ModelLimits:
    """The crop rule's limits for this graph (see the module docstring)."""
    fixed = manifest.io.fixed_size
    if fixed is not None:
        side = min(fixed) // 8 * 8
        return ModelLimits(MIN_SIDE, MAX_SIDE, native_side=side, max_work_side=side, multiple=8)
    native = int(manifest.native_resolution)
    cap = manifest.max_work_side or int(round(native * 1.5 / 8)) * 8
    return ModelLimits(MIN_SIDE, MAX_SIDE, native_side=min(native, cap), max_work_side=cap)


class OneShotModel:
    """A one-shot ONNX inpainting graph; implements ``SinglePassModel``."""

    def __init__(
        self, folder: Path, manifest: OneShotManifest, provider: ExecutionProvider, *, name: str
    ):
        self.folder = Path(folder)
        self.manifest = manifest
        self.io = manifest.io
        self.provider = provider
        self.name = name
        spec = manifest.components.get(COMPONENT)
        if spec is None:
            raise KeyError(f"manifest lacks component {COMPONENT!r}")
        path = self.folder / spec.file
        if not path.is_file():
            raise FileNotFoundError(f"{spec.file} is missing")
        self.session = provider.load(path, spec)
        self.capabilities = Capabilities(
            limits=work_limits(manifest), reads_prompt=False, streams_previews=False
        )

    @classmethod
    def from_folder(
        cls,
        folder: Path,
        *,
        name: str,
        provider: str = "auto",
        threads: int | None = None,
        instances: int = 1,
        static_shapes: int | None = None,
        amx_attention: str = "auto",
    ) -> OneShotModel:
        manifest = read_manifest(Path(folder))
        if not isinstance(manifest, OneShotManifest):
            raise ValueError("not a one-shot model folder (manifest pipeline)")
        engine = select_provider(
            provider,
            threads=threads,
            streams=instances,
            static_shapes=static_shapes,
            amx_attention=amx_attention,
        )
        return cls(folder, manifest, engine, name=name)

    # ------------------------------------------------------------------ metadata
    def describe(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "kind": "one-shot",
            "description": (
                f"One-shot inpainting network ({m.signature} signature): fills the edit region "
                "from its surroundings in one forward pass. It ignores the prompt: it removes "
                "things, it cannot add objects or follow instructions."
            ),
            "signature": m.signature,
            "precision": m.precision,
            "provider": self.provider.describe(),
            "source": m.source.model,
            "input_size": list(m.io.fixed_size) if m.io.fixed_size else "dynamic",
            "batching": m.io.dynamic_batch,
        }

    def count_tokens(self, prompt: str) -> int:
        return 0  # the prompt is not read

    # ------------------------------------------------------------------ running
    def run(self, rows: list[Row]) -> list[np.ndarray | Exception]:
        """One uint8 HxWx3 image per row (same HxW as the row's image), or for a row whose
        output is not finite an exception that fails that row alone. Blocking."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i, row in enumerate(rows):
            self._check(row)
            groups.setdefault(padded_size(*row.image.shape[:2], self.io), []).append(i)
        out: dict[int, np.ndarray | Exception] = {}
        for size, idx in groups.items():
            calls = [idx] if self.io.dynamic_batch else [[i] for i in idx]
            for call in calls:
                for i, img in zip(call, self._call([rows[i] for i in call], size), strict=True):
                    out[i] = img
        return [out[i] for i in range(len(rows))]

    def _call(self, rows: list[Row], size: tuple[int, int]) -> list[np.ndarray | Exception]:
        feeds = to_feeds([r.image for r in rows], [r.mask for r in rows], self.io, size)
        result = self.session.run(feeds)[self.io.output]
        return from_output(result, self.io, [r.image.shape[:2] for r in rows])

    def probe(self) -> Callable[[], Any]:
        """One call of the graph on one image at its native size: what
        ``instances.choose`` times."""
        side = self.capabilities.limits.native_side
        size = padded_size(side, side, self.io)
        image = np.zeros((side, side, 3), np.uint8)
        feeds = to_feeds([image], [np.zeros((side, side), np.float32)], self.io, size)
        return lambda: self.session.run(feeds)

    @staticmethod
    def _check(row: Row) -> None:
        img = row.image
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError("image must be uint8 HxWx3 RGB")
        if row.mask.shape != img.shape[:2]:
            raise ValueError(f"mask must be HxW = {img.shape[:2]}, got {row.mask.shape}")

    def close(self) -> None:
        self.session = None
