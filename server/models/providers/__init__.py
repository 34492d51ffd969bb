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
  silently falls back to the CPU EP on bad options. Compiled graphs are cached on disk
  (``ov_cache``: ``<model folder>/ov_cache``); optionally one static graph per input shape.
- ``AutoProvider`` ("auto" without CUDA): per component the fastest runtime and precision the
  CPU computes natively (``plan.cpu_plan`` over ``cpu_features``), kept only when its output on
  a fixed sample is within the component's tolerance of fp32 (``accuracy``).

``select_provider(name)`` raises ``ProviderUnavailable`` (a RuntimeError, not a client error)
saying what to install when the runtime lacks the provider.

Layout: ``base`` (the ``ExecutionProvider`` interface, ``Session``, ``ProviderUnavailable``),
``onnxruntime`` (ORT sessions; CPU, CUDA, TensorRT), ``openvino`` (provider and session),
``openvino_graph`` (the time-embedding fp32 marks), ``ov_cache`` (compiled graphs on disk),
``plan`` (what auto tries per component, tolerances), ``accuracy`` (the sample and the error
measure), ``auto`` (``AutoProvider``), this module (``select_provider``).
"""

from __future__ import annotations

from .auto import AutoProvider, available_runtimes
from .base import ExecutionProvider, ProviderUnavailable, Session
from .fused_attention import check_mode as check_amx_attention
from .onnxruntime import (
    CPUProvider,
    CUDAProvider,
    OrtDeviceSession,
    OrtSession,
    TensorRTProvider,
    trt_shape_string,
)
from .openvino import OpenVINOProvider, OVSession, check_static_shapes, effective_precision
from .openvino_graph import (
    mark_precise_in_ir,
    time_embedding_nodes,
    write_ir_time_embedding_fp32,
)

__all__ = [
    "PROVIDER_NAMES",
    "AutoProvider",
    "CPUProvider",
    "CUDAProvider",
    "ExecutionProvider",
    "OpenVINOProvider",
    "OrtDeviceSession",
    "OrtSession",
    "OVSession",
    "ProviderUnavailable",
    "Session",
    "TensorRTProvider",
    "available_runtimes",
    "check_amx_attention",
    "effective_precision",
    "check_static_shapes",
    "mark_precise_in_ir",
    "select_provider",
    "time_embedding_nodes",
    "trt_shape_string",
    "write_ir_time_embedding_fp32",
]

PROVIDER_NAMES = ("auto", "cpu", "cuda", "tensorrt", "openvino")


def select_provider(
    name: str = "auto",
    *,
    threads: int | None = None,
    device_id: int = 0,
    openvino_precision: str | None = None,
    streams: int = 1,
    static_shapes: int | None = None,
    amx_attention: str = "auto",
) -> ExecutionProvider:
    """The provider for ``name`` ("auto" | "cpu" | "cuda" | "tensorrt" | "openvino").

    "openvino:f32" / "openvino:bf16" / "openvino:f16" also set OpenVINO's precision hint
    (plain "openvino": ``openvino_precision``, else f32). Nothing is read from the environment.

    auto = CUDA when onnxruntime has CUDAExecutionProvider (never TensorRT: its engine builds
    take minutes, so it is opt-in), else ``AutoProvider``: per component the fastest precision
    this CPU computes natively that holds against fp32. Raises ``ProviderUnavailable`` saying
    what to install, ``ValueError`` for an unknown name. ``streams``: concurrent calls the
    sessions take (one per model instance, ``threads`` each); ONNX Runtime's sessions take
    them as they are, OpenVINO compiles a stream per call. ``static_shapes``: OpenVINO (also
    under auto) compiles a graph per input-shape set and keeps that many per component; 0 =
    one dynamic graph; None = auto measures per component, the others take 0 (ONNX Runtime
    and CUDA ignore it). ``amx_attention``: the AMX attention
    kernel in OpenVINO's bf16 graphs (also under auto), ``fused_attention.MODES``.
    """
    name = (name or "auto").lower()
    if name.startswith("openvino:"):  # "openvino:bf16" selects the precision hint
        name, openvino_precision = "openvino", name.split(":", 1)[1]
    if name not in PROVIDER_NAMES:
        raise ValueError(f"unknown provider {name!r}; choose one of {', '.join(PROVIDER_NAMES)}")
    if name == "auto" and CUDAProvider.available():
        name = "cuda"
    if name == "auto":
        provider: ExecutionProvider = AutoProvider(
            threads, streams=streams, static_shapes=static_shapes, amx_attention=amx_attention
        )
    elif name == "cpu":
        provider = CPUProvider(threads)
    elif name == "cuda":
        provider = CUDAProvider(device_id, threads)
    elif name == "tensorrt":
        provider = TensorRTProvider(device_id, threads=threads)
    else:
        precision = openvino_precision or "f32"
        provider = OpenVINOProvider(
            precision,
            threads,
            streams=streams,
            static_shapes=static_shapes or 0,
            amx_attention=amx_attention,
        )
    provider.check()
    return provider
