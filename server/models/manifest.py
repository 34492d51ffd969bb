"""``manifest.json``: the one schema shared by the exporter (writes) and the server (reads).

Pure pydantic: importing this module pulls in no torch and no onnxruntime, so ``export/`` may
import it and ``server/`` reads it.

Layout of an exported model folder::

    models/<name>/
      manifest.json
      text_encoder/model.onnx   unet/model.onnx (+ model.onnx.data when > 2 GB)
      vae_encoder/model.onnx    vae_decoder/model.onnx
      tokenizer/vocab.json tokenizer/merges.txt (and/or tokenizer.json)
      scheduler/scheduler_config.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MANIFEST_FILE = "manifest.json"
SCHEMA_VERSION = 1

Dtype = Literal["float32", "float16", "int32", "int64"]


class TensorSpec(BaseModel):
    """One graph input or output. ``shape`` uses str names for dynamic axes ("batch", "height")."""

    model_config = ConfigDict(extra="forbid")
    name: str
    dtype: Dtype
    shape: list[int | str]


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
    #: contrib ops that need a specific execution provider (e.g. GroupNorm -> CUDA), if any.
    requires_provider: str | None = None


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


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

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
    #: "text_encoder", "unet", "vae_encoder", "vae_decoder".
    components: dict[str, ComponentSpec]
    source: Source
    versions: dict[str, str] = Field(default_factory=dict)
    verification: list[Verification] = Field(default_factory=list)
    #: human-readable caveats, e.g. "unet: fused graph unverified (no CUDA EP here)".
    notes: list[str] = Field(default_factory=list)
    #: the export arguments that produced this folder (used to make re-export idempotent).
    export_args: dict = Field(default_factory=dict)
    created: str = ""

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_FILE
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        """Raise FileNotFoundError / pydantic.ValidationError with the offending field."""
        path = Path(folder) / MANIFEST_FILE
        return cls.model_validate_json(path.read_text())
