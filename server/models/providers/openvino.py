"""The OpenVINO provider (``OpenVINOProvider``) and its session (``OVSession``)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from server.models.manifest import ComponentSpec

from .base import ExecutionProvider, ProviderUnavailable, Session
from .openvino_graph import _is_precise, write_ir_time_embedding_fp32


class OVSession:
    """A compiled OpenVINO model with the Session interface (host memory)."""

    def __init__(self, compiled):
        self.compiled = compiled
        self.input_names = [i.get_any_name() for i in compiled.inputs]
        self.output_names = [o.get_any_name() for o in compiled.outputs]
        self._request = compiled.create_infer_request()

    def to_device(self, array: np.ndarray) -> Any:
        return np.ascontiguousarray(array)

    def run(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        result = self._request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
        return {
            name: np.array(result[out], copy=True)
            for name, out in zip(self.output_names, self.compiled.outputs, strict=True)
        }


class OpenVINOProvider(ExecutionProvider):
    """The OpenVINO runtime on the CPU, reading our ONNX files directly.

    precision: "f32" | "bf16" | "f16" -> ``INFERENCE_PRECISION_HINT``. Reduced precision only
    takes effect where the CPU has it (AVX512_BF16/AMX for bf16, AVX512_FP16/AMX-FP16 for f16);
    otherwise OpenVINO runs f32. ``describe()`` reports the precision the plugin actually uses.
    """

    name = "openvino"
    install_hint = "pip install '.[openvino]' (the openvino runtime)"
    PRECISIONS = ("f32", "bf16", "f16")

    def __init__(
        self,
        precision: str = "f32",
        threads: int | None = None,
        device: str = "CPU",
        protect_time_embedding: bool = True,
    ):
        if precision not in self.PRECISIONS:
            raise ValueError(
                f"OpenVINO precision must be one of {self.PRECISIONS}, got {precision!r}"
            )
        self.precision = precision
        self.threads = threads
        self.device = device
        self.protect_time_embedding = protect_time_embedding
        self._core = None
        self.effective_precision: str | None = None

    @classmethod
    def available(cls) -> bool:
        try:
            import openvino  # noqa: F401
        except ImportError:
            return False
        return True

    def check(self) -> None:
        if not self.available():
            raise ProviderUnavailable(
                f"execution provider 'openvino' needs the OpenVINO runtime; {self.install_hint}"
            )

    @property
    def core(self):
        if self._core is None:
            import openvino as ov

            self._core = ov.Core()
        return self._core

    def config(self) -> dict[str, str]:
        cfg = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "LATENCY"}
        if self.threads is not None:
            cfg["INFERENCE_NUM_THREADS"] = str(int(self.threads))
        return cfg

    def load(self, path: Path, spec: ComponentSpec | None = None) -> Session:
        self.check()
        self.precise_nodes = 0
        with tempfile.TemporaryDirectory(prefix="ov_ir_") as tmp:
            src = Path(path)
            if self.protect_time_embedding and self.precision != "f32":
                src, _ = write_ir_time_embedding_fp32(self.core, src, Path(tmp))
            model = self.core.read_model(str(src))
            self.precise_nodes = sum(1 for op in model.get_ordered_ops() if _is_precise(op))
            compiled = self.core.compile_model(model, self.device, self.config())
        try:
            self.effective_precision = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        except Exception:  # noqa: BLE001 - property missing on some devices
            self.effective_precision = None
        return OVSession(compiled)

    def describe(self) -> dict[str, Any]:
        try:
            caps = list(self.core.get_property(self.device, "OPTIMIZATION_CAPABILITIES"))
        except Exception:  # noqa: BLE001
            caps = []
        return {
            "name": self.name,
            "device": self.device,
            "precision_hint": self.precision,
            "effective_precision": self.effective_precision,
            "device_capabilities": caps,
            "threads": self.threads or "default",
        }
