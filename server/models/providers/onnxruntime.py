"""ONNX Runtime sessions and its CPU, CUDA (IO binding) and TensorRT providers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from server.models.manifest import ComponentSpec

from .base import ExecutionProvider, Session, _model_folder, _ort, ort_providers


class OrtSession:
    """An ``onnxruntime.InferenceSession`` with the Session interface (host memory)."""

    def __init__(self, session):
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]

    def to_device(self, array: np.ndarray) -> Any:
        return np.ascontiguousarray(array)

    def run(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outs, strict=True))

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()


class OrtDeviceSession(OrtSession):
    """IO binding on a CUDA device: numpy inputs are copied per call; ``to_device`` handles
    (OrtValues already on the GPU) are bound without a copy; outputs come back to the host."""

    def __init__(self, session, device_id: int = 0, device: str = "cuda"):
        super().__init__(session)
        self.device_id = device_id
        self.device = device  # "cpu" only in tests: the same binding code without a GPU

    def to_device(self, array: np.ndarray) -> Any:
        ort = _ort()
        return ort.OrtValue.ortvalue_from_numpy(
            np.ascontiguousarray(array), self.device, self.device_id
        )

    def run(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        ort = _ort()
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self.output_names:
            binding.bind_output(name, self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        outs = binding.copy_outputs_to_cpu()
        return dict(zip(self.output_names, outs, strict=True))


class CPUProvider(ExecutionProvider):
    """ONNX Runtime's CPU execution provider."""

    name = "cpu"
    install_hint = "pip install onnxruntime"
    #: the ONNX Runtime execution provider this class needs (``available`` looks for it)
    ort_provider = "CPUExecutionProvider"

    def __init__(self, threads: int | None = None, spin: bool = False):
        self.spin = spin
        if threads is not None and threads < 1:
            raise ValueError(
                f"threads must be >= 1 (got {threads}); leave it unset for the default"
            )
        self.threads = threads

    @classmethod
    def available(cls) -> bool:
        try:
            return cls.ort_provider in ort_providers()
        except ImportError:
            return False

    def session_options(self):
        ort = _ort()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads is not None:
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
        so.log_severity_level = 3
        # No CPU memory arena: the arena keeps the largest call's activations for the life of
        # the process and grows with each new shape. Measured (full SD 1.5 UNet, fp32, 512x512,
        # 2 cores): 4 rows peaked at 15.7 GB and kept it, vs 8.7 GB and back to 3.5 GB without;
        # a server that had run two guided 512x512 edits sat at 21 GB. The cost: ~4% per call
        # (page faults of fresh allocations: 4.9-5.1 s vs 4.6-4.9 s for one row).
        so.enable_cpu_mem_arena = False
        if not self.spin:
            # Each component has its own intra-op pool; spinning workers of the idle sessions
            # (text encoder, VAE) would steal the cores from the UNet between calls (measured:
            # tiny pipeline 4x slower on 2 cores with spinning on).
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return so

    def provider_list(self, folder: Path | None = None, spec: ComponentSpec | None = None):
        return ["CPUExecutionProvider"]

    def load(self, path: Path, spec: ComponentSpec | None = None) -> Session:
        self.check()
        ort = _ort()
        providers = self.provider_list(_model_folder(path, spec), spec)
        sess = ort.InferenceSession(str(path), self.session_options(), providers=providers)
        self.record(path, spec, self.runtime, self.computes_in(spec))
        return self._wrap(sess)

    #: the runtime /v1/models names for this provider's components
    runtime = "onnxruntime"

    def computes_in(self, spec: ComponentSpec | None) -> str:
        """The precision a component runs in: its weights' (the export's) precision."""
        return spec.precision if spec is not None else "fp32"

    def _wrap(self, sess) -> Session:
        return OrtSession(sess)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "threads": self.threads or "default", "components": self.loaded}


class CUDAProvider(CPUProvider):
    """ONNX Runtime's CUDA EP (CPU EP as fallback for unsupported nodes), with IO binding."""

    name = "cuda"
    device_class = "gpu"
    install_hint = (
        "pip install '.[gpu]' (onnxruntime-gpu, in place of onnxruntime) and a CUDA 12 runtime"
    )
    ort_provider = "CUDAExecutionProvider"
    runtime = "onnxruntime-cuda"

    def __init__(self, device_id: int = 0, threads: int | None = None):
        super().__init__(threads)
        self.device_id = device_id

    def cuda_options(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "arena_extend_strategy": "kSameAsRequested",
            "cudnn_conv_algo_search": "HEURISTIC",
            "do_copy_in_default_stream": True,
        }

    def provider_list(self, folder: Path | None = None, spec: ComponentSpec | None = None):
        return [("CUDAExecutionProvider", self.cuda_options()), "CPUExecutionProvider"]

    def _wrap(self, sess) -> Session:
        return OrtDeviceSession(sess, self.device_id)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "device_id": self.device_id,
            "io_binding": True,
            "components": self.loaded,
        }


def trt_shape_string(profiles: dict[str, dict[str, list[int]]], which: str) -> str:
    """ORT's "name:1x9x64x64,name2:..." form of the manifest's ``which`` (min/opt/max) shapes."""
    return ",".join(
        f"{name}:{'x'.join(str(int(d)) for d in shapes[which])}"
        for name, shapes in profiles.items()
        if which in shapes
    )


class TensorRTProvider(CUDAProvider):
    """ONNX Runtime's TensorRT EP: fp16 engines cached in ``<model folder>/trt_cache``, explicit
    shape profiles from the manifest; CUDA then CPU EP for what TensorRT does not take."""

    name = "tensorrt"
    install_hint = "pip install '.[tensorrt]' (onnxruntime-gpu + tensorrt) and a CUDA 12 runtime"
    ort_provider = "TensorrtExecutionProvider"
    runtime = "onnxruntime-tensorrt"

    def __init__(self, device_id: int = 0, fp16: bool = True, threads: int | None = None):
        super().__init__(device_id, threads)
        self.fp16 = fp16

    def trt_options(self, folder: Path, spec: ComponentSpec | None) -> dict[str, Any]:
        cache = Path(folder) / "trt_cache"
        opts: dict[str, Any] = {
            "device_id": self.device_id,
            "trt_fp16_enable": self.fp16,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache),
            "trt_max_workspace_size": 4 << 30,
        }
        if spec is not None and spec.profiles:
            opts["trt_profile_min_shapes"] = trt_shape_string(spec.profiles, "min")
            opts["trt_profile_opt_shapes"] = trt_shape_string(spec.profiles, "opt")
            opts["trt_profile_max_shapes"] = trt_shape_string(spec.profiles, "max")
        return opts

    def provider_list(self, folder: Path | None = None, spec: ComponentSpec | None = None):
        folder = Path(folder) if folder is not None else Path(".")
        (folder / "trt_cache").mkdir(parents=True, exist_ok=True)
        return [
            ("TensorrtExecutionProvider", self.trt_options(folder, spec)),
            ("CUDAExecutionProvider", self.cuda_options()),
            "CPUExecutionProvider",
        ]

    def computes_in(self, spec: ComponentSpec | None) -> str:
        return "fp16" if self.fp16 else super().computes_in(spec)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "device_id": self.device_id,
            "fp16": self.fp16,
            "components": self.loaded,
        }
