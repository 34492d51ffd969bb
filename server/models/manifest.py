"""``manifest.json``: the one schema shared by the exporter (writes) and the server (reads).

Pure pydantic: importing this module pulls in no torch and no onnxruntime, so ``export/`` may
import it and ``server/`` reads it.

Layout of an exported model folder::

    models/<name>/
      manifest.json
      text_encoder/model.onnx   unet/model.onnx (+ model.onnx.data when > 2 GB)
      vae_encoder/model.onnx    vae_decoder/model.onnx
      taesd_decoder/model.onnx  taesd_encoder/model.onnx   (only with ``--tiny-vae``)
      tokenizer/vocab.json tokenizer/merges.txt (and/or tokenizer.json)
      scheduler/scheduler_config.json

A one-shot model (LaMa, MI-GAN...; ``pipeline: "one-shot"``, ``OneShotManifest``)::

    models/<name>/
      manifest.json
      inpainter/model.onnx   (+ external data beside it)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

MANIFEST_FILE = "manifest.json"
SCHEMA_VERSION = 1

Dtype = Literal["float32", "float16", "int32", "int64", "uint8"]


class TensorSpec(BaseModel):
    """One graph input or output. ``shape`` uses str names for dynamic axes ("batch", "height")."""

    model_config = ConfigDict(extra="forbid")
    name: str
    dtype: Dtype
    shape: list[int | str]


#: component keys that earlier exporters wrote and nothing reads: accepted and dropped on read
#: (folders exported before stay loadable), never written
RETIRED_COMPONENT_KEYS = frozenset({"requires_provider"})


class ComponentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str  # relative to the model folder, e.g. "unet/model.onnx"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    #: the precision of the weights inside the graph; I/O dtypes are in inputs/outputs.
    precision: Literal["fp32", "fp16"]
    #: sha256 of the .onnx file and of each external-data file, by relative path.
    sha256: dict[str, str] = Field(default_factory=dict)
    #: TensorRT shape profiles: input name -> {"min": shape, "opt": shape, "max": shape}.
    profiles: dict[str, dict[str, list[int]]] = Field(default_factory=dict)
    #: offline graph optimization applied ("none", or the ORT fusions and their counts).
    optimization: str = "none"

    @model_validator(mode="before")
    @classmethod
    def _drop_retired_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k not in RETIRED_COMPONENT_KEYS}
        return data


class Verification(BaseModel):
    """ONNX Runtime vs PyTorch on sample inputs, for one component."""

    model_config = ConfigDict(extra="forbid")
    component: str
    max_abs_diff: float
    mean_abs_diff: float
    tolerance: float
    passed: bool
    #: max |PyTorch output|; tolerance = rtol * max(1, reference_max_abs).
    reference_max_abs: float | None = None
    rtol: float | None = None
    #: sample input shapes by input name.
    inputs: dict[str, list[int]] = Field(default_factory=dict)
    provider: str = "CPUExecutionProvider"
    #: "final" = the shipped graph; "pre-fusion" = the same precision before CUDA-only fusions.
    graph: Literal["final", "pre-fusion"] = "final"


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str  # hub id or local path as given
    revision: str | None = None
    path: str | None = None  # resolved local folder


class TinyVae(BaseModel):
    """The tiny autoencoder (TAESD, diffusers' AutoencoderTiny) exported beside the full VAE as
    the components ``taesd_decoder`` and ``taesd_encoder`` (``python -m export --tiny-vae``)."""

    model_config = ConfigDict(extra="forbid")
    source: Source
    #: AutoencoderTiny's config.scaling_factor: taesd_decoder takes UNet latents / this, as
    #: diffusers does (1.0 for TAESD, which is trained on the UNet's latents as they are).
    scaling_factor: float = 1.0


class Lora(BaseModel):
    """A LoRA fused into the exported weights (``python -m export --lora SOURCE[:SCALE]``)."""

    model_config = ConfigDict(extra="forbid")
    source: str  # local path or hub id, as given
    scale: float  # diffusers' fuse_lora(lora_scale=...)
    file: str  # name of the weight file that was fused
    sha256: str  # of that file
    #: the components whose weights it changed: "unet" and/or "text_encoder"
    components: list[str] = Field(default_factory=list)


class FastPreset(BaseModel):
    """The few-step recipe (LCM / TCD) a model recommends; the server's ``quality=low`` runs it.
    guidance_scale <= 1: no classifier-free guidance (one UNet row per image)."""

    model_config = ConfigDict(extra="forbid")
    scheduler: str  # a public scheduler name of the server ("lcm", "tcd", ...)
    steps: int = Field(ge=1)
    guidance_scale: float = Field(ge=0)
    #: the preset also encodes (the masked image, and the image when strength < 1) with the tiny
    #: autoencoder's encoder, as diffusers with vae=AutoencoderTiny does (``python -m export
    #: --tiny-vae-encode``); False: the full VAE encodes, only the final decode is tiny
    tiny_vae_encode: bool = False
    #: how it was chosen, e.g. "--fast-preset lcm:4:1.0" or "LoRA name contains 'lcm'"
    reason: str = ""


class _ManifestFile(BaseModel):
    """What every kind of ``manifest.json`` shares: unknown fields refused, written and read the
    same way (the subclasses declare the fields)."""

    model_config = ConfigDict(extra="forbid")

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_FILE
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, folder: Path) -> Self:
        """Raise FileNotFoundError / pydantic.ValidationError with the offending field."""
        path = Path(folder) / MANIFEST_FILE
        return cls.model_validate_json(path.read_text())


class Manifest(_ManifestFile):
    schema_version: int = SCHEMA_VERSION
    name: str
    pipeline: Literal["sd-inpaint"] = "sd-inpaint"
    precision: Literal["fp32", "fp16"]
    target: Literal["cpu", "cuda"]
    opset: int
    #: native resolution in pixels (512 for SD 1.5, 768 for SD 2 768-v... as the UNet config says).
    native_resolution: int
    #: pixels per latent pixel (8 for SD).
    vae_scale_factor: int = 8
    #: the VAE's scaling_factor (0.18215 for SD 1.x/2.x).
    latent_scaling_factor: float
    latent_channels: int = 4
    unet_in_channels: int = 9
    text_max_length: int = 77
    text_hidden_size: int
    #: scheduler_config.json content (includes "_class_name").
    scheduler: dict
    #: tokenizer files relative to the model folder: keys "vocab", "merges" and/or "tokenizer_json".
    tokenizer: dict[str, str]
    #: "text_encoder", "unet", "vae_encoder", "vae_decoder"; + "taesd_decoder", "taesd_encoder"
    #: when ``tiny_vae`` is set.
    components: dict[str, ComponentSpec]
    source: Source
    #: the tiny autoencoder's source and scaling factor; None = none exported.
    tiny_vae: TinyVae | None = None
    #: LoRAs fused into the UNet / text encoder before export, in fusing order.
    loras: list[Lora] = Field(default_factory=list)
    #: the few-step recipe ``quality=low`` runs; None = the server's default low tier.
    fast_preset: FastPreset | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    verification: list[Verification] = Field(default_factory=list)
    #: human-readable caveats, e.g. "unet: fused graph unverified (no CUDA EP here)".
    notes: list[str] = Field(default_factory=list)
    #: the export arguments that produced this folder (used to make re-export idempotent).
    export_args: dict = Field(default_factory=dict)
    created: str = ""


# ---------------------------------------------------------------------------- one-shot models
# A one-shot network (LaMa, MI-GAN, ...) is one ONNX graph, image + mask -> image, imported or
# exported by ``export/oneshot.py`` into ``models/<name>/inpainter/model.onnx``.


class OneShotIO(BaseModel):
    """How a one-shot graph wants its tensors and what it returns (read by ``oneshot_io.py``).

    Pixel coding: a uint8 pixel value p (0..255) is fed as ``lo + (hi - lo) * p / 255`` with
    (lo, hi) = ``image_range`` ([0, 1] for LaMa, [-1, 1] for GAN generators, [0, 255] for uint8
    pipelines); the output is read back the same way with ``output_range``. Every mask pixel is
    ``mask_hole`` (to fill) or ``mask_keep``: LaMa 1 / 0, MI-GAN's pipeline 0 / 255 (inverted).
    """

    model_config = ConfigDict(extra="forbid")
    #: input name of the image, or of the one image+mask tensor when ``mask`` is None
    image: str
    mask: str | None = None
    #: channel order of the concatenated tensor (only when ``mask`` is None)
    concat: Literal["image_first", "mask_first"] = "image_first"
    output: str
    layout: Literal["NCHW", "NHWC"] = "NCHW"  # of every input and the output
    channels: Literal["RGB", "BGR"] = "RGB"
    input_dtype: Literal["float32", "float16", "uint8"] = "float32"
    output_dtype: Literal["float32", "float16", "uint8"] = "float32"
    image_range: tuple[float, float] = (0.0, 1.0)
    output_range: tuple[float, float] = (0.0, 1.0)
    mask_hole: float = 1.0
    mask_keep: float = 0.0
    #: image pixels inside the hole are fed as 0 (in ``image_range`` units), as LaMa's
    #: ``image * (1 - mask)``; False for graphs that mask the image themselves
    zero_holes: bool = True
    #: (height, width) the graph requires; None = any size (sides padded to ``pad_multiple``)
    fixed_size: tuple[int, int] | None = None
    pad_multiple: int = Field(8, ge=1)
    #: the graph has a batch axis that batches (several rows per call); False = one row per call
    dynamic_batch: bool = True


class OneShotManifest(_ManifestFile):
    """``manifest.json`` of a one-shot model: one component, ``inpainter``."""

    schema_version: int = SCHEMA_VERSION
    name: str
    pipeline: Literal["one-shot"] = "one-shot"
    #: the I/O convention it was brought in with: "lama", "migan" or "custom"
    signature: str
    io: OneShotIO
    precision: Literal["fp32", "fp16"]
    opset: int | None = None
    #: the side (px) the network works at best: the crop rule grows small regions to it
    native_resolution: int = Field(512, ge=16)
    #: largest work side (px); None = the fixed size, else 1.5 x native
    max_work_side: int | None = Field(None, ge=16)
    components: dict[str, ComponentSpec]
    source: Source
    #: other model names a request may use for this model (e.g. "dall-e-2")
    aliases: list[str] = Field(default_factory=list)
    versions: dict[str, str] = Field(default_factory=dict)
    verification: list[Verification] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    export_args: dict = Field(default_factory=dict)
    created: str = ""


class UnknownModelKind(ValueError):
    """The manifest names a ``pipeline`` this server does not know."""


#: manifest class by ``pipeline`` kind; a manifest without the field is an SD export
MANIFEST_KINDS: dict[str, type[BaseModel]] = {"sd-inpaint": Manifest, "one-shot": OneShotManifest}


def read_manifest(folder: Path) -> Manifest | OneShotManifest:
    """The manifest of ``folder`` as the class of its ``pipeline`` kind.

    Raises FileNotFoundError, ValueError (not JSON, not an object, ``UnknownModelKind``) or
    pydantic.ValidationError (naming the offending field).
    """
    data = json.loads((Path(folder) / MANIFEST_FILE).read_text())
    if not isinstance(data, dict):
        raise ValueError("manifest.json is not a JSON object")
    kind = data.get("pipeline", "sd-inpaint")
    cls = MANIFEST_KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise UnknownModelKind(f"unknown pipeline kind {str(kind)[:40]!r}")
    return cls.model_validate(data)
