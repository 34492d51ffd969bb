"""Execution providers: how an exported ONNX component is loaded and run.

One small class per provider behind one interface::

    provider = select_provider("auto", threads=4)
    session = provider.load(folder / "unet/model.onnx", manifest.components["unet"])
    outputs = session.run({"sample": x, "timestep": t, "encoder_hidden_states": e})

- ``session.run(feeds)``: feeds by graph input name, numpy arrays (float32/int64, the
  manifest's I/O dtypes) or handles from ``session.to_device``; returns numpy arrays by output
  name. Blocking.
- ``session.to_device(array)``: a copy that stays where the provider computes (a CUDA OrtValue for
  CUDA/TensorRT; the array itself elsewhere). The SD pipeline uses it for text embeddings, which
  are bound once per set of rows and reused every step. Latents stay on the host: the numpy
  schedulers step them there (about 64 KB per row and step at 512 px: 4x64x64 float32 each way).

Providers:
- ``CPUProvider``: ONNX Runtime CPU EP; ``threads`` = intra-op threads (None: ORT's default).
- ``CUDAProvider``: ONNX Runtime CUDA EP with IO binding (``pip install '.[gpu]'``).
- ``TensorRTProvider``: ONNX Runtime TensorRT EP, fp16, engines cached under
  ``<model folder>/trt_cache``, shape profiles from the manifest (``pip install '.[tensorrt]'``).
- ``OpenVINOProvider``: the OpenVINO runtime reading the ONNX file itself (``pip install
  '.[openvino]'``); precision hint f32/bf16/f16. Under bf16/f16 the sinusoidal time-embedding
  subgraph of the UNet is pinned to fp32 (see ``time_embedding_nodes``). We do not use ORT's OpenVINO EP: it
  silently falls back to the CPU EP on bad options.

``select_provider(name)`` raises ``ProviderUnavailable`` (a RuntimeError, not a client error)
saying what to install when the runtime lacks the provider.
"""

from __future__ import annotations

import html
import os
import re
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from server.models.manifest import ComponentSpec

PROVIDER_NAMES = ("auto", "cpu", "cuda", "tensorrt", "openvino")


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


# ----------------------------------------------------------------------------- ONNX Runtime


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


class ExecutionProvider(ABC):
    """Loads ONNX components into sessions. Subclasses: one per provider."""

    name: str = ""
    #: what to install when unavailable
    install_hint: str = ""

    @classmethod
    @abstractmethod
    def available(cls) -> bool: ...

    @abstractmethod
    def load(self, path: Path, spec: ComponentSpec | None = None) -> Session: ...

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}

    def check(self) -> None:
        if not self.available():
            raise ProviderUnavailable(
                f"execution provider {self.name!r} is not available in this installation "
                f"(onnxruntime providers: {', '.join(ort_providers())}); {self.install_hint}"
            )


class CPUProvider(ExecutionProvider):
    """ONNX Runtime's CPU execution provider."""

    name = "cpu"
    install_hint = "pip install onnxruntime"

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
            return "CPUExecutionProvider" in ort_providers()
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
        return self._wrap(sess)

    def _wrap(self, sess) -> Session:
        return OrtSession(sess)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "threads": self.threads or "default"}


class CUDAProvider(CPUProvider):
    """ONNX Runtime's CUDA EP (CPU EP as fallback for unsupported nodes), with IO binding."""

    name = "cuda"
    install_hint = (
        "pip install '.[gpu]' (onnxruntime-gpu, in place of onnxruntime) and a CUDA 12 runtime"
    )

    def __init__(self, device_id: int = 0, threads: int | None = None):
        super().__init__(threads)
        self.device_id = device_id

    @classmethod
    def available(cls) -> bool:
        try:
            return "CUDAExecutionProvider" in ort_providers()
        except ImportError:
            return False

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
        return {"name": self.name, "device_id": self.device_id, "io_binding": True}


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

    def __init__(self, device_id: int = 0, fp16: bool = True, threads: int | None = None):
        super().__init__(device_id, threads)
        self.fp16 = fp16

    @classmethod
    def available(cls) -> bool:
        try:
            return "TensorrtExecutionProvider" in ort_providers()
        except ImportError:
            return False

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

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "device_id": self.device_id, "fp16": self.fp16}


# ----------------------------------------------------------------------------- OpenVINO

#: ops of the sinusoidal timestep embedding (t * freqs -> sin/cos) and what feeds them.
_TIME_EMBED_OPS = {
    "Convert", "Multiply", "Sin", "Cos", "Exp", "Concat", "Unsqueeze", "Reshape", "Broadcast",
    "Gather", "Slice", "StridedSlice", "Squeeze", "Range", "Divide", "Power", "Add", "Subtract",
    "Constant", "Tile", "Split", "VariadicSplit",
}  # fmt: skip


def time_embedding_nodes(model, input_name: str = "timestep") -> set[str]:
    """Friendly names of the UNet's sinusoidal time-embedding subgraph (to keep in fp32).

    Reduced precision would compute ``timestep * frequencies`` (values up to ~1000) in bf16/f16
    and then sin/cos of it: a relative error of 2^-8 on 999 is ~4 rad of phase, which corrupts
    the embedding. We walk forward from the ``timestep`` input through elementwise/shape ops up
    to and including the Sin/Cos nodes (plus the Concat joining them and the constants feeding
    those nodes); integer shape paths (ShapeOf) and the time MLP (MatMul) are left alone.
    """
    params = [p for p in model.get_parameters() if input_name in p.get_output_tensor(0).get_names()]
    if not params:
        return set()
    marked: set[str] = set()
    frontier = [params[0]]
    seen: set[str] = set()
    while frontier:
        node = frontier.pop()
        if node.get_friendly_name() in seen:
            continue
        seen.add(node.get_friendly_name())
        kind = node.get_type_name()
        if node is not params[0] and kind not in _TIME_EMBED_OPS:
            continue  # e.g. MatMul of the time MLP: left to the plugin's precision
        if kind == "ShapeOf":
            continue  # integer shape arithmetic (batch size): no float precision involved
        marked.add(node.get_friendly_name())
        for inp in node.inputs():  # the frequency table and scale constants
            src = inp.get_source_output().get_node()
            if src.get_type_name() in ("Constant", "Convert"):
                marked.add(src.get_friendly_name())
        if kind in ("Sin", "Cos"):
            for out in node.outputs():  # the Concat of sin/cos, and nothing further
                for target in out.get_target_inputs():
                    nxt = target.get_node()
                    if nxt.get_type_name() == "Concat":
                        marked.add(nxt.get_friendly_name())
            continue
        for out in node.outputs():
            for target in out.get_target_inputs():
                frontier.append(target.get_node())
    return marked


_PRECISE = '<rt_info><attribute name="precise" version="0" /></rt_info>'


def mark_precise_in_ir(xml: str, names: set[str]) -> str:
    """Add OpenVINO's ``precise`` runtime attribute (ov::disable_fp16_compression) to the IR
    layers named ``names``.

    Why through the IR text: the Python API has no way to set the attribute with its C++ type
    (an rt_info string under the same key is ignored by the precision passes, measured), while
    the IR reader turns ``<attribute name="precise" version="0"/>`` into the real attribute,
    which OpenVINO's fp16 compression and the CPU plugin's inference-precision enforcement
    (``keepOrigPrecision``) honour.
    """

    def patch(match: re.Match) -> str:
        layer = match.group(0)
        name = re.search(r'name="([^"]*)"', layer)
        if name is None or html.unescape(name.group(1)) not in names or "<rt_info>" in layer:
            return layer
        return re.sub(r"(\n\s*)(<input>|<output>)", rf"\1{_PRECISE}\1\2", layer, count=1)

    return re.sub(r"<layer [^>]*>.*?</layer>", patch, xml, flags=re.S)


def write_ir_time_embedding_fp32(core, path: Path, folder: Path) -> tuple[Path, int]:
    """Convert ``path`` (ONNX) to an IR in ``folder`` whose time-embedding nodes are marked
    precise. Returns (xml path, number of nodes marked); (path, 0) if there is no ``timestep``
    input (not a UNet). The IR's .bin is the size of the weights."""
    import openvino as ov

    model = core.read_model(str(path))
    names = time_embedding_nodes(model)
    if not names:
        return Path(path), 0
    xml_path = Path(folder) / "model.xml"
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    xml_path.write_text(mark_precise_in_ir(xml_path.read_text("utf-8"), names), "utf-8")
    return xml_path, len(names)


def _is_precise(op) -> bool:
    return any(k.startswith(("precise", "DisablePrecisionConversion")) for k in op.get_rt_info())


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


# ----------------------------------------------------------------------------- selection


def select_provider(
    name: str = "auto",
    *,
    threads: int | None = None,
    device_id: int = 0,
    openvino_precision: str | None = None,
) -> ExecutionProvider:
    """The provider for ``name`` ("auto" | "cpu" | "cuda" | "tensorrt" | "openvino").

    "openvino:f32" / "openvino:bf16" / "openvino:f16" also set OpenVINO's precision hint
    (else ``openvino_precision``, else $INPAINT_OPENVINO_PRECISION, else f32).

    auto = CUDA when onnxruntime has CUDAExecutionProvider, else CPU (never TensorRT: its
    engine builds take minutes, so it is opt-in). Raises ``ProviderUnavailable`` saying what to
    install, ``ValueError`` for an unknown name.
    """
    name = (name or "auto").lower()
    if name.startswith("openvino:"):  # "openvino:bf16" selects the precision hint
        name, openvino_precision = "openvino", name.split(":", 1)[1]
    if name not in PROVIDER_NAMES:
        raise ValueError(f"unknown provider {name!r}; choose one of {', '.join(PROVIDER_NAMES)}")
    if name == "auto":
        name = "cuda" if CUDAProvider.available() else "cpu"
    if name == "cpu":
        provider: ExecutionProvider = CPUProvider(threads)
    elif name == "cuda":
        provider = CUDAProvider(device_id, threads)
    elif name == "tensorrt":
        provider = TensorRTProvider(device_id, threads=threads)
    else:
        precision = openvino_precision or os.environ.get("INPAINT_OPENVINO_PRECISION", "f32")
        provider = OpenVINOProvider(precision, threads)
    provider.check()
    return provider
