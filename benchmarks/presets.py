"""Benchmark presets: what is measured, at which sizes, and how long it may take.

- ``ci``: the tiny random model (64 px). Checks the whole harness end to end in a couple of
  minutes on 2 cores; its numbers say nothing about real models (overheads dominate).
- ``cpu``: the full SD 1.5-inpainting architecture (UNet 860 M, VAE 84 M, CLIP-L text 123 M
  parameters) with RANDOM weights, at reduced resolution and steps so that it finishes in
  < 20 minutes on 2 AVX2 cores (plus a one-time export, cached). Speed does not depend on the
  weights' values, so the timings hold for the real model at the same sizes.
- ``gpu``: the full architecture at 512 x 512, 20 and 50 steps, fp16, on ONNX Runtime's CUDA and
  TensorRT execution providers vs diffusers fp16 on CUDA. Providers missing from the
  installation are skipped with a note.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class OursVariant:
    """Our pipeline on one execution provider, over one export (precision + graph target)."""

    provider: str  # "cpu" | "cuda" | "tensorrt" | "openvino:f32" | "openvino:bf16"
    precision: str = "fp32"  # export precision
    target: str = "cpu"  # export target (graph optimizations): cpu | cuda

    @property
    def label(self) -> str:
        return f"ours ort-{self.provider} {self.precision}"

    @property
    def device_class(self) -> str:
        return "gpu" if self.provider in ("cuda", "tensorrt") else "cpu"


@dataclass(frozen=True)
class BaselineVariant:
    """diffusers ``StableDiffusionInpaintPipeline`` in PyTorch."""

    device: str = "cpu"  # cpu | cuda
    dtype: str = "fp32"  # fp32 | bf16-autocast (CPU) | fp16 (CUDA)
    compile: bool = False  # torch.compile the UNet (opt-in: ~75 s compile, excluded as warm-up)
    #: (width, height, steps) to measure instead of the preset's in-process configs (e.g. an
    #: emulated-bf16 baseline at a smaller size, to fit the time budget); () = the preset's
    configs: tuple[tuple[int, int, int], ...] = ()

    @property
    def label(self) -> str:
        return f"diffusers torch-{self.device} {self.dtype}" + (" +compile" if self.compile else "")

    @property
    def device_class(self) -> str:
        return "gpu" if self.device == "cuda" else "cpu"


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    model: str  # "tiny" | "sd15-random" (export.tiny presets)
    width: int
    height: int
    steps: tuple[int, ...]  # in-process and baseline comparisons, one measurement per value
    ours: tuple[OursVariant, ...]
    baselines: tuple[BaselineVariant, ...]
    #: HTTP load tests: served variants, image size and steps (smaller on CPU: 29 requests per mode)
    http: tuple[OursVariant, ...]
    http_width: int
    http_height: int
    http_steps: int
    guidance: float = 7.5  # > 1: classifier-free guidance, UNet batch 2 per image (as users run)
    prompt: str = "a wooden bench in a park, photograph"
    seed: int = 1234
    warmup: int = 1  # untimed runs per configuration
    repeats: int = 5  # timed runs per configuration (min/median/max and percentiles over them)
    concurrency: tuple[int, ...] = (1, 4, 8, 16)
    requests_per_client: int = 2  # closed loop: total requests per level = concurrency x this
    load_repeats: int = 2  # closed-loop sweep repetitions (throughput min/median/max)
    batch_sizes: tuple[int, ...] = (4, 1)  # --max-batch-size: batching on (server default), off
    open_loop_requests: int = 24  # Poisson arrivals
    open_loop_load: float = 0.7  # arrival rate = this x the best closed-loop throughput
    budget_s: float = 600  # measurement time (exports excluded); later phases shrink or skip
    request_timeout_s: float = 600
    random_weights: bool = True
    expected_runtime: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def device_class(self) -> str:
        return "gpu" if any(v.device_class == "gpu" for v in self.ours) else "cpu"

    def with_overrides(self, **kw) -> Preset:
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


CI = Preset(
    name="ci",
    description="tiny random model (64 px, 10 steps): exercises the harness; numbers are "
    "overhead-dominated and say nothing about real models",
    model="tiny",
    width=64,
    height=64,
    steps=(10,),
    ours=(OursVariant("cpu", "fp32"),),
    baselines=(BaselineVariant("cpu", "fp32"), BaselineVariant("cpu", "bf16-autocast")),
    http=(OursVariant("cpu", "fp32"),),
    http_width=64,
    http_height=64,
    http_steps=10,
    warmup=2,
    repeats=10,
    requests_per_client=4,
    load_repeats=3,
    open_loop_requests=48,
    budget_s=300,
    request_timeout_s=120,
    expected_runtime="~2 min on 2 cores (+ ~1 min tiny export on the first run)",
)

CPU = Preset(
    name="cpu",
    description="full SD 1.5-inpainting architecture, RANDOM weights: 256x256 / 2 steps "
    "in-process vs diffusers fp32, + 128x128 / 2 steps (diffusers fp32 and bf16 autocast); "
    "HTTP load at 128x128 / 2 steps",
    model="sd15-random",
    width=256,
    height=256,
    steps=(2,),
    ours=(
        OursVariant("cpu", "fp32"),
        OursVariant("openvino:f32", "fp32"),
        OursVariant("openvino:bf16", "fp32"),
    ),
    baselines=(
        BaselineVariant("cpu", "fp32", configs=((256, 256, 2), (128, 128, 2))),
        BaselineVariant("cpu", "bf16-autocast", configs=((128, 128, 2),)),
    ),
    http=(OursVariant("cpu", "fp32"),),
    http_width=128,
    http_height=128,
    http_steps=2,
    warmup=1,
    repeats=2,
    requests_per_client=1,
    load_repeats=1,
    open_loop_requests=8,
    budget_s=1140,
    request_timeout_s=1200,
    expected_runtime="estimated 15-19 min of measurement on 2 AVX2 cores (not yet run on a quiet "
    "machine; capped by a 19-minute budget: late phases shrink, then skip, with a note) + a "
    "one-time build/export of the random-weight model into benchmarks/.cache (~10-20 min, "
    "~9 GB disk)",
    notes=(
        "openvino variants run only where the openvino runtime is installed (pip install "
        "'.[openvino]'); bf16 falls back to f32 on CPUs without AVX512-BF16/AMX",
    ),
)

GPU = Preset(
    name="gpu",
    description="full SD 1.5-inpainting architecture (random weights unless --pipeline), "
    "512x512, 20 and 50 steps, fp16: ORT CUDA and TensorRT EPs vs diffusers fp16 on CUDA",
    model="sd15-random",
    width=512,
    height=512,
    steps=(20, 50),
    ours=(OursVariant("cuda", "fp16", "cuda"), OursVariant("tensorrt", "fp16", "cuda")),
    baselines=(BaselineVariant("cuda", "fp16"),),
    http=(OursVariant("cuda", "fp16", "cuda"), OursVariant("tensorrt", "fp16", "cuda")),
    http_width=512,
    http_height=512,
    http_steps=20,
    warmup=2,
    repeats=10,
    requests_per_client=2,
    load_repeats=2,
    open_loop_requests=64,
    budget_s=3600,
    request_timeout_s=600,
    expected_runtime="~20-30 min on one A100/H100-class GPU, + the one-time fp16 export and the "
    "TensorRT engine build (several minutes, cached in the model folder)",
)

PRESETS: dict[str, Preset] = {p.name: p for p in (CI, CPU, GPU)}
