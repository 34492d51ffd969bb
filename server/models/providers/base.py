"""The provider interface: ``ExecutionProvider``, the ``Session`` protocol, ``ProviderUnavailable``
and the helpers the providers share (the lazily imported onnxruntime, the model folder).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from server.models.manifest import ComponentSpec


class ProviderUnavailable(RuntimeError):
    """The requested execution provider is not available in this installation."""


class Session(Protocol):
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]: ...

    def to_device(self, array: np.ndarray) -> Any: ...


def _ort():
    import onnxruntime as ort

    return ort


def ort_providers() -> list[str]:
    """Execution providers compiled into the installed onnxruntime."""
    return list(_ort().get_available_providers())


def _model_folder(path: Path, spec: ComponentSpec | None) -> Path:
    """The model folder holding ``path`` (spec.file is relative to it, e.g. "unet/model.onnx")."""
    path = Path(path)
    if spec is not None:
        parts = Path(spec.file).parts
        if len(parts) >= 1 and path.parts[-len(parts) :] == parts:
            return path.parents[len(parts) - 1]
    return path.parent.parent


def component_name(path: Path, spec: ComponentSpec | None) -> str:
    """The component a file belongs to: the first folder of ``spec.file`` ("unet/model.onnx"
    -> "unet"), else the file's folder name."""
    if spec is not None and len(Path(spec.file).parts) > 1:
        return Path(spec.file).parts[0]
    return Path(path).parent.name


#: precision names as /v1/models shows them (OpenVINO says "f32" / "f16")
PRECISION_NAMES = {"f32": "fp32", "f16": "fp16"}


def precision_name(precision: str | None) -> str | None:
    """``precision`` as /v1/models names it: fp32, bf16, fp16 (None stays None)."""
    return PRECISION_NAMES.get(precision, precision) if precision else precision


class ExecutionProvider(ABC):
    """Loads ONNX components into sessions. Subclasses: one per provider.

    ``describe()["components"]``: per loaded component, the runtime and the precision it
    computes in (``record``), what ``/v1/models`` shows whatever the provider.
    """

    name: str = ""
    #: what to install when unavailable
    install_hint: str = ""
    #: where the sessions compute: "cpu" or "gpu" (model instances are measured on CPUs only)
    device_class: str = "cpu"

    @classmethod
    @abstractmethod
    def available(cls) -> bool: ...

    @abstractmethod
    def load(self, path: Path, spec: ComponentSpec | None = None) -> Session: ...

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "components": self.loaded}

    @property
    def loaded(self) -> dict[str, dict[str, Any]]:
        """component -> {"runtime", "precision"} of each ``load`` so far (``record``)."""
        return self.__dict__.setdefault("_loaded", {})

    def record(self, path: Path, spec: ComponentSpec | None, runtime: str, precision) -> None:
        """Note what ``load`` gave the component of ``path``: its runtime ("onnxruntime",
        "onnxruntime-cuda", "onnxruntime-tensorrt", "openvino") and precision."""
        self.loaded[component_name(path, spec)] = {
            "runtime": runtime,
            "precision": precision_name(precision),
        }

    def check(self) -> None:
        if not self.available():
            raise ProviderUnavailable(
                f"execution provider {self.name!r} is not available in this installation "
                f"(onnxruntime providers: {', '.join(ort_providers())}); {self.install_hint}"
            )
