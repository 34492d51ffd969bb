"""The OpenVINO provider (``OpenVINOProvider``) and its session (``OVSession``)."""

from __future__ import annotations

import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from server.models.cpu_features import read_cpu_flags, reported_flags
from server.models.manifest import ComponentSpec

from . import fused_attention
from .base import ExecutionProvider, ProviderUnavailable, Session, _model_folder, component_name
from .openvino_graph import (
    PIN_VERSION,
    SPLIT_VERSION,
    _is_precise,
    split_fused_projections,
    write_ir_time_embedding_fp32,
)
from .ov_cache import BlobCache

#: OpenVINO's element type names -> the names this project uses.
_PRECISION_NAMES = {"bf16": "bf16", "f16": "f16", "f32": "f32"}

Shapes = tuple[tuple[str, tuple[int, ...]], ...]


def check_static_shapes(n: int | None) -> None:
    """``--static-shapes``: graphs kept per component, 0 = one dynamic graph, None = auto's
    choice (the other providers: 0)."""
    if n is not None and n < 0:
        raise ValueError(f"--static-shapes must be >= 0 (0 = one dynamic graph), got {n}")


def effective_precision(compiled) -> str | None:
    """The precision a compiled CPU graph computes in ("f32" | "bf16" | "f16"), or None."""
    try:
        name = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    except Exception:  # noqa: BLE001 - property missing on some devices
        return None
    return _PRECISION_NAMES.get(name, name)


class OVSession:
    """A compiled OpenVINO model with the Session interface (host memory).

    Dynamic (``compiled`` given): one graph for every shape; OpenVINO's CPU plugin builds its
    kernels per shape on the first call at that shape and keeps them.
    Static (``compile_for`` given): one graph per input-shape set, compiled (or imported from
    the disk cache) at the first call with those shapes and kept, at most ``capacity``
    (least recently used dropped). ``compiles`` counts graphs made for this session.
    Both (``compiled`` and ``compile_for``: what auto serves): the dynamic graph runs every
    shape until that shape's ``PROMOTE_AFTER``-th call, which compiles a static graph for it
    while the table has room; nothing is evicted, so a server that sees many sizes never
    recompiles, and a shape that comes back runs on its static graph.
    """

    #: calls at one shape before the shared (dynamic + static) session compiles a graph for it:
    #: a size asked for once (or the instances probe) does not take a slot
    PROMOTE_AFTER = 2
    #: shapes whose calls are counted (the oldest forgotten past it)
    SEEN_LIMIT = 256

    def __init__(
        self,
        compiled=None,
        *,
        compile_for: Callable[[Shapes], Any] | None = None,
        capacity: int = 4,
        names: tuple[list[str], list[str]] | None = None,
        streams: int = 1,
    ):
        if compiled is None and compile_for is None:
            raise ValueError("give a compiled model, compile_for, or both")
        self._compile_for = compile_for
        self._seen: OrderedDict[Shapes, int] = OrderedDict()
        self.capacity = max(1, int(capacity))
        self._static: OrderedDict[Shapes, tuple[Any, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.streams = max(1, int(streams))
        self._mine = threading.local()  # with several streams: each caller's own request
        self.compiles = 0
        if compiled is not None:
            self.compiled = compiled
            self._request = compiled.create_infer_request()
            self._dynamic = (compiled, self._request)
            self.input_names = [i.get_any_name() for i in compiled.inputs]
            self.output_names = [o.get_any_name() for o in compiled.outputs]
            self.effective_precision = effective_precision(compiled)
        else:
            self.compiled = None
            self._request = None
            self._dynamic = None
            self.input_names, self.output_names = names or ([], [])
            self.effective_precision = None

    def to_device(self, array: np.ndarray) -> Any:
        return np.ascontiguousarray(array)

    def _for_shapes(self, feeds: dict[str, np.ndarray]):
        key: Shapes = tuple(sorted((k, tuple(v.shape)) for k, v in feeds.items()))
        if key in self._static:
            self._static.move_to_end(key)
        elif self._dynamic is not None:  # shared: promote a returning shape while there is room
            seen = self._seen.pop(key, 0) + 1
            self._seen[key] = seen
            while len(self._seen) > self.SEEN_LIMIT:
                self._seen.popitem(last=False)
            if seen < self.PROMOTE_AFTER or len(self._static) >= self.capacity:
                return self._dynamic
            compiled = self._compile_for(key)
            self.compiles += 1
            self._static[key] = (compiled, compiled.create_infer_request())
        else:
            compiled = self._compile_for(key)
            self.compiles += 1
            self.effective_precision = effective_precision(compiled)
            self._static[key] = (compiled, compiled.create_infer_request())
            while len(self._static) > self.capacity:
                self._static.popitem(last=False)
        return self._static[key]

    @property
    def static_shapes(self) -> list[Shapes]:
        return list(self._static)

    def run(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        feeds = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
        if self.streams > 1:
            # graphs compiled with several streams: concurrent callers (model instances) run
            # at once, each on a request of its own (per graph, with static shapes)
            if self._compile_for is None:
                compiled, live = self.compiled, {id(self.compiled)}
            else:
                with self._lock:  # guards the static-graph table
                    compiled = self._for_shapes(feeds)[0]
                    live = {id(c) for c, _ in self._static.values()} | {id(self.compiled)}
            mine = self._mine.__dict__.setdefault("requests", {})
            for gone in [k for k in mine if k not in live]:  # graphs dropped from the table
                del mine[gone]
            held = mine.get(id(compiled))
            if held is None or held[0] is not compiled:
                held = mine[id(compiled)] = (compiled, compiled.create_infer_request())
            return self._outputs(compiled, held[1].infer(feeds))
        # One stream: concurrent callers take turns on the one request; the lock also guards
        # the static-graph table.
        with self._lock:
            if self._compile_for is not None:
                compiled, request = self._for_shapes(feeds)
            else:
                compiled, request = self.compiled, self._request
            return self._outputs(compiled, request.infer(feeds))

    def _outputs(self, compiled, result) -> dict[str, np.ndarray]:
        return {
            name: np.array(result[out], copy=True)
            for name, out in zip(self.output_names, compiled.outputs, strict=True)
        }


class OpenVINOProvider(ExecutionProvider):
    """The OpenVINO runtime on the CPU, reading our ONNX files directly.

    precision: "f32" | "bf16" | "f16" -> ``INFERENCE_PRECISION_HINT``. Reduced precision only
    takes effect where the CPU has it (AVX512_BF16/AMX for bf16, AVX512_FP16/AMX-FP16 for f16);
    otherwise OpenVINO runs f32 (or bf16 for an f16 hint). ``describe()`` and each session's
    ``effective_precision`` report the precision the plugin actually uses.

    cache: compiled graphs are kept in ``cache_dir`` (default ``<model folder>/ov_cache``), so
    a restart imports them instead of compiling; ``cache=False`` turns that off.
    streams: concurrent calls the graphs take (one per model instance, ``threads`` each); 1 =
    callers take turns.
    static_shapes: 0 = one dynamic graph per component (default); N > 0 = a static graph per
    input-shape set, compiled at the first call with that shape (not kept on disk), at most N
    per component in memory, each with its own repacked weights (SD 1.5 UNet over the first
    shape: +2.4 GB of RSS per shape in bf16, +3.6 GB in f32).
    ``with_static_graphs``: a dynamic session with static graphs beside it, for the shapes
    that come back (``OVSession``, "Both"): what auto serves, so many sizes never thrash.
    amx_attention: ``--amx-attention`` (``fused_attention.MODES``): bf16 graphs get the AMX
    attention kernel where it runs ("auto"), must get it ("on": ``check`` raises where it
    cannot run), or never ("off").
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
        *,
        cache: bool = True,
        cache_dir: Path | None = None,
        static_shapes: int = 0,
        streams: int = 1,
        amx_attention: str = "auto",
    ):
        if precision not in self.PRECISIONS:
            raise ValueError(
                f"OpenVINO precision must be one of {self.PRECISIONS}, got {precision!r}"
            )
        check_static_shapes(static_shapes)
        fused_attention.check_mode(amx_attention)
        self.precision = precision
        self.threads = threads
        self.device = device
        self.protect_time_embedding = protect_time_embedding
        self.cache = cache
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.static_shapes = int(static_shapes)
        self.streams = max(1, int(streams))
        self.amx_attention = amx_attention
        self.fused_attention: dict[str, int] = {}  # component_name -> attentions fused
        self._core = None
        self._caches: dict[Path, BlobCache] = {}
        self.effective_precision: str | None = None
        self._resolved: str | None = None  # resolved_precision(), once
        self.precise_nodes = 0

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
        fused_attention.require(self.amx_attention)

    @property
    def core(self):
        if self._core is None:
            import openvino as ov

            self._core = ov.Core()
        return self._core

    def config(self) -> dict[str, str]:
        cfg = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "LATENCY"}
        if self.streams > 1:  # one stream per model instance, ``threads`` each
            cfg["NUM_STREAMS"] = str(self.streams)
        if self.threads is not None:
            cfg["INFERENCE_NUM_THREADS"] = str(int(self.threads) * self.streams)
        return cfg

    def _fuses_attention(self) -> bool:
        """True when graphs get ``FusedAttention`` (bf16 here, on a CPU with AMX-BF16, the
        kernel built): it computes in bf16, so f32 and f16 graphs keep OpenVINO's."""
        return (
            self.amx_attention != "off"
            and self.precision == "bf16"
            and self.device == "CPU"
            and fused_attention.load() is not None
        )

    def resolved_precision(self) -> str | None:
        """The precision this CPU computes in under ``config()`` ("f32" on a CPU without bf16
        for a bf16 hint): read off a one-MatMul graph compiled with that config (~30 ms), since
        the plugin resolves the hint from the CPU, not from the model. What a static session
        reports before its first graph exists."""
        if self._resolved is None:
            import openvino as ov
            import openvino.opset13 as ops

            x = ops.parameter([1, 16], ov.Type.f32)
            y = ops.matmul(x, ops.constant(np.eye(16, dtype=np.float32)), False, False)
            probe = self.core.compile_model(ov.Model([y], [x]), self.device, self.config())
            self._resolved = effective_precision(probe)
        return self._resolved

    def blob_cache(self, folder: Path) -> BlobCache | None:
        """The disk cache for the model in ``folder`` (shared by its components), or None."""
        if not self.cache:
            return None
        where = self.cache_dir or Path(folder) / "ov_cache"
        return self._caches.setdefault(where, BlobCache(where))

    def _key_parts(self, path: Path, spec: ComponentSpec | None) -> dict[str, Any]:
        import openvino as ov

        if spec is not None and spec.sha256:
            files: Any = spec.sha256
        else:  # no manifest digest: the file's size and time stand for its content
            st = Path(path).stat()
            files = {Path(path).name: f"{st.st_size}-{st.st_mtime_ns}"}
        try:
            cpu = str(self.core.get_property(self.device, "FULL_DEVICE_NAME"))
        except Exception:  # noqa: BLE001
            cpu = ""
        return {
            "files": files,
            "precision": self.precision,
            # the pin's version: graphs (and auto's verdicts) made with the first one, whose
            # timestep input was still rounded to bf16, are not reused
            "time_embedding_fp32": PIN_VERSION if self._pins() else False,
            "split_projections": SPLIT_VERSION,
            "fused_attention": self._fuses_attention() and fused_attention.ATTENTION_VERSION,
            "openvino": ov.__version__,
            "device": self.device,
            "cpu": [cpu, *reported_flags(read_cpu_flags())],
        }

    def _pins(self) -> bool:
        return self.protect_time_embedding and self.precision != "f32"

    def _read(self, path: Path, spec: ComponentSpec | None = None):
        """The model with its time embedding marked fp32 (reduced precision), its fused
        projections split (``split_fused_projections``) and its long attentions on the AMX
        kernel (``fuse_attention``, bf16 on AMX CPUs), and the count of precise nodes."""
        with tempfile.TemporaryDirectory(prefix="ov_ir_") as tmp:
            src = Path(path)
            if self._pins():
                src, _ = write_ir_time_embedding_fp32(self.core, src, Path(tmp))
            # the IR's .bin is memory-mapped: on Linux it stays readable after tmp is removed
            model = self.core.read_model(str(src))
        split_fused_projections(model)
        if self._fuses_attention():
            from .openvino_attention import fuse_attention

            fused = fuse_attention(model)  # the kernel runs on the inference's own workers
            if fused:
                self.fused_attention[component_name(path, spec)] = fused
        return model, sum(1 for op in model.get_ordered_ops() if _is_precise(op))

    def _compiled(self, path, spec, shapes: Shapes | None, model_box: list):
        """Import from the disk cache or read + (reshape) + compile + store. Static graphs
        skip the disk cache: an imported graph brings its own copy of the fp32 weights, while
        graphs compiled from the one read model share it (SD 1.5 UNet, bf16, on an AMX Xeon:
        +5.8 GB of RSS per imported shape against +2.4 GB per compiled one, and the import
        took 11-14 s against a 3 s compile). Graphs with ``FusedAttention`` skip it too: a
        Python operation cannot be exported (the UNet compiles in ~2 s)."""
        cacheable = shapes is None and not self._fuses_attention()
        cache = self.blob_cache(_model_folder(path, spec)) if cacheable else None
        parts = self._key_parts(path, spec) if cache is not None else {}
        name = f"{component_name(path, spec)}-{self.precision}"
        key = BlobCache.key(parts) if cache is not None else ""
        if cache is not None:
            compiled, meta = cache.load(self.core, name, key, self.device, self.config())
            if compiled is not None:
                self.precise_nodes = int(meta.get("precise_nodes", 0))
                return compiled
        if not model_box:  # read once per load, reused for every static shape
            model_box.extend(self._read(path, spec))
        model = model_box[0]
        if shapes is not None:
            model = model.clone()
            model.reshape({n: list(s) for n, s in shapes})
        self.precise_nodes = model_box[1]
        compiled = self.core.compile_model(model, self.device, self.config())
        if cache is not None:
            cache.store(compiled, name, key, {**parts, "precise_nodes": model_box[1]})
        return compiled

    def forget(self, path: Path, spec: ComponentSpec | None = None) -> None:
        """Delete the cached dynamic graph of ``path`` (auto rejected it: its verdict is kept,
        so the blob, ~1.7 GB for the SD 1.5 UNet in bf16, would never be read again)."""
        cache = self.blob_cache(_model_folder(path, spec))
        if cache is not None:
            name = f"{component_name(path, spec)}-{self.precision}"
            cache.discard(name, BlobCache.key(self._key_parts(path, spec)))

    def load(self, path: Path, spec: ComponentSpec | None = None) -> Session:
        self.check()
        self.precise_nodes = 0
        model_box: list = []
        if self.static_shapes:
            model_box.extend(self._read(path, spec))
            model = model_box[0]
            names = (
                [i.get_any_name() for i in model.inputs],
                [o.get_any_name() for o in model.outputs],
            )
            self.precise_nodes = model_box[1]
            session = OVSession(
                compile_for=lambda shapes: self._compiled(path, spec, shapes, model_box),
                capacity=self.static_shapes,
                names=names,
                streams=self.streams,
            )
            session.effective_precision = self.resolved_precision()  # no graph compiled yet
        else:
            session = OVSession(self._compiled(path, spec, None, model_box), streams=self.streams)
            del model_box[:]  # the compiled graph holds what it needs
        self.effective_precision = session.effective_precision
        self.record(path, spec, "openvino", session.effective_precision)
        return session

    def with_static_graphs(self, dynamic: OVSession, path: Path, spec, n: int) -> OVSession:
        """``dynamic``'s graph with up to ``n`` static graphs beside it, compiled here for the
        shapes that come back (``OVSession``, "Both")."""
        box: list = []  # the model, read at the first static graph, once for all of them
        session = OVSession(
            dynamic.compiled,
            compile_for=lambda shapes: self._compiled(path, spec, shapes, box),
            capacity=n,
            streams=self.streams,
        )
        session.effective_precision = dynamic.effective_precision
        return session

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
            "streams": self.streams,
            "static_shapes": self.static_shapes,
            "fused_attention": dict(self.fused_attention),
            "cache": [c.describe() for c in self._caches.values()],
            "components": self.loaded,
        }
