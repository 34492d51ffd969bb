"""Benchmark presets: what is measured, at which sizes, and how long it may take.

- ``ci``: the tiny random model (64 px). Checks the whole harness end to end in a couple of
  minutes on 2 cores; its numbers say nothing about real models (overheads dominate).
- ``cpu``: the full SD 1.5-inpainting architecture (UNet 860 M, VAE 84 M, CLIP-L text 123 M
  parameters) with RANDOM weights, at reduced resolution and steps so that it finishes in
  < 20 minutes on 2 AVX2 cores (plus a one-time export, cached). Speed does not depend on the
  weights' values, so the timings hold for the real model at the same sizes.
- ``cpu-512``: the full architecture at 512 x 512 (the size users run), with a random LCM-style
  LoRA fused and a random full-size TAESD: the fast recipe (LCM, 4 steps, no guidance, TAESD
  decode) and the default recipe (25 steps at guidance 7.5, from 2 measured steps and one
  batch-2 UNet step), ours (``--provider auto``) against the best PyTorch paths a user could
  pick (fp32, bf16 eager + channels_last, bf16 ``torch.compile`` with freezing) and OpenVINO's
  own pipeline (optimum-intel), with the Targets table (``targets.py``); and the fast recipe
  with TAESD encoding too (``--tiny-vae-encode``) against diffusers with ``vae=AutoencoderTiny``.
- ``cpu-512-smoke``: the same code paths on the tiny model at 64 x 64 (minutes): checks the
  harness, its numbers say nothing.
- ``gpu``: the full architecture at 512 x 512, 20 and 50 steps, fp16, on ONNX Runtime's CUDA and
  TensorRT execution providers vs diffusers fp16 on CUDA, and the fast recipe. Providers missing
  from the installation are skipped with a note.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from . import recipes
from .recipes import Recipe


@dataclass(frozen=True)
class OursVariant:
    """Our pipeline on one execution provider, over one export (precision + graph target)."""

    provider: str  # "auto" | "cpu" | "cuda" | "tensorrt" | "openvino:f32" | "openvino:bf16"
    precision: str = "fp32"  # export precision
    target: str = "cpu"  # export target (graph optimizations): cpu | cuda
    #: the preset's recipes (by name) this variant runs; () = all
    recipes: tuple[str, ...] = ()
    #: also run the UNet calls of the last timed image through ONNX Runtime fp32 and report the
    #: max relative error of this variant's UNet against it (reduced precision's cost)
    check_error: bool = False
    #: OpenVINO graphs per input-shape set (``--static-shapes``), 0 = one dynamic graph, None =
    #: the server's default (auto: measured per component; the others: 0)
    static_shapes: int | None = None
    #: serve the export as ``--tiny-vae-encode`` writes it (``assets.tiny_encode_view``): runs
    #: only the recipes that encode with TAESD, and the others run only without it
    tiny_vae_encode: bool = False

    @property
    def label(self) -> str:
        extra = f" static-shapes {self.static_shapes}" if self.static_shapes else ""
        extra += " tiny-vae-encode" if self.tiny_vae_encode else ""
        if self.provider == "auto":  # precision per component: the "computes in" column
            export = "" if self.precision == "fp32" else f" {self.precision} export"
            return "ours auto" + export + extra
        return f"ours ort-{self.provider} {self.precision}{extra}"

    def runs(self, recipe: Recipe) -> bool:
        """Whether this variant measures ``recipe`` (its list, and TAESD encoding matching)."""
        named = not self.recipes or recipe.name in self.recipes
        return named and recipe.tiny_vae_encode == self.tiny_vae_encode

    @property
    def device_class(self) -> str:
        return "gpu" if self.provider in ("cuda", "tensorrt") else "cpu"


@dataclass(frozen=True)
class BaselineVariant:
    """A baseline: diffusers ``StableDiffusionInpaintPipeline`` in PyTorch (``impl``
    "diffusers"), or OpenVINO's own pipeline, optimum-intel's ``OVStableDiffusionInpaintPipeline``
    in its own venv (``impl`` "optimum")."""

    device: str = "cpu"  # cpu | cuda
    #: fp32 | bf16 (bf16 weights + channels_last) | bf16-autocast (CPU) | fp16 (CUDA);
    #: optimum: "auto" = bf16 where the CPU computes it natively, else f32
    dtype: str = "fp32"
    #: torch.compile (mode default, + inductor freezing) of the UNet and the VAE parts the
    #: recipe runs; the compile happens in warm-up and is reported apart (compile_s)
    compile: bool = False
    #: (width, height, steps) to measure instead of the preset's in-process configs (e.g. an
    #: emulated-bf16 baseline at a smaller size, to fit the time budget); () = the preset's
    configs: tuple[tuple[int, int, int], ...] = ()
    #: the preset's recipes (by name) run as whole images; () = all (unless ``configs``)
    recipes: tuple[str, ...] = ()
    #: recipes (by name) measured as one UNet call at the recipe's shape (not whole images)
    unet_step: tuple[str, ...] = ()
    impl: str = "diffusers"  # diffusers | optimum

    @property
    def label(self) -> str:
        if self.impl == "optimum":
            return f"optimum-intel openvino {self.dtype}"
        extra = " +compile(freezing)" if self.compile else ""
        dtype = "bf16 channels_last" if self.dtype == "bf16" else self.dtype
        return f"diffusers torch-{self.device} {dtype}{extra}"

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
    #: the part of the budget the HTTP phases get (they run last and take what is left); the
    #: in-process phases split the rest, in proportion to ``__main__.phase_weight``
    http_share: float = 0.5
    request_timeout_s: float = 600
    random_weights: bool = True
    expected_runtime: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: what the in-process measurements run; () = the default recipe at width x height for each
    #: of ``steps`` (the older presets)
    recipes: tuple[Recipe, ...] = ()
    #: fuse a random LCM-style LoRA into the model (``export --lora``) and build a random TAESD
    #: (``export --tiny-vae``): the fast recipe's model; the baselines get the same weights
    fast_model: bool = False
    #: HTTP requests send ``quality`` (e.g. "low": the fast preset) instead of steps + guidance
    http_quality: str | None = None
    #: check the Targets table (targets.py) on this run
    targets: tuple[str, ...] = ()

    @property
    def device_class(self) -> str:
        return "gpu" if any(v.device_class == "gpu" for v in self.ours) else "cpu"

    @property
    def all_recipes(self) -> tuple[Recipe, ...]:
        if self.recipes:
            return self.recipes
        return tuple(
            Recipe("default", self.width, self.height, s, guidance=self.guidance)
            for s in self.steps
        )

    def recipe(self, name: str) -> Recipe | None:
        return next((r for r in self.all_recipes if r.name == name), None)

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
    concurrency=(1, 4, 8, 12, 16),
    requests_per_client=4,
    load_repeats=3,
    open_loop_requests=48,
    budget_s=300,
    request_timeout_s=120,
    expected_runtime="~2-3 min on 2 cores (+ ~1 min tiny export on the first run)",
    targets=("batching",),
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

#: the fast recipe as our default export runs it (TAESD decodes) and as a --tiny-vae-encode
#: export runs it (TAESD encodes too), each against the same recipe in diffusers
FAST_PAIR = ("fast", "fast-tiny-encode")

#: the fast-path comparison, in one run on the same weights (see the module docstring)
CPU_512 = Preset(
    name="cpu-512",
    description="full SD 1.5-inpainting architecture + random LCM-style LoRA fused + random "
    "TAESD, RANDOM weights, 512x512: fast recipe (LCM 4 steps, no guidance, TAESD decode) and "
    "default recipe (PNDM, guidance 7.5: 2 steps measured, 25 extrapolated; one batch-2 UNet "
    "step); ours auto vs diffusers fp32 / bf16 eager / bf16 compiled (freezing) and "
    "optimum-intel OpenVINO; the fast recipe with TAESD encoding too (--tiny-vae-encode) vs "
    "diffusers with vae=AutoencoderTiny; HTTP quality=low at c=1; Targets table",
    model="sd15-random",
    width=512,
    height=512,
    steps=(4, 2),
    recipes=(
        recipes.fast(512, 512),
        recipes.default(512, 512, steps=2, extrapolate_to=recipes.DEFAULT_STEPS, repeats=2),
        recipes.fast_tiny_encode(512, 512),
    ),
    # auto keeps fp32 where bf16 fails its accuracy check (random weights: the VAE, 2.2-3.2%);
    # the explicit bf16 variant shows what the native precision costs and gains regardless;
    # with --static-shapes, what a deployment that serves one size gains on top
    ours=(
        OursVariant("auto", check_error=True),
        OursVariant("openvino:bf16", check_error=True),
        OursVariant("openvino:bf16", check_error=True, static_shapes=4),
        # TAESD encoding too (--tiny-vae-encode) against diffusers with vae=AutoencoderTiny
        OursVariant("openvino:bf16", static_shapes=4, tiny_vae_encode=True),
    ),
    # the compiled baseline first: two targets compare with it and its compile (minutes per
    # shape) is what a late phase's shrunken share of the budget cannot fit
    baselines=(
        BaselineVariant("cpu", "bf16", compile=True, recipes=FAST_PAIR, unet_step=("default",)),
        BaselineVariant("cpu", "bf16", recipes=FAST_PAIR, unet_step=("default",)),
        BaselineVariant("cpu", "auto", impl="optimum", recipes=("fast", "default")),
        BaselineVariant("cpu", "fp32", recipes=("fast", "default")),
    ),
    # end to end as deployed: the default (auto) and the explicit native precision; the fast
    # target takes the faster of the two
    http=(
        OursVariant("openvino:bf16"),
        OursVariant("auto"),
        OursVariant("openvino:bf16", static_shapes=4),
    ),
    http_width=512,
    http_height=512,
    http_steps=4,
    http_quality="low",
    warmup=1,
    repeats=3,
    concurrency=(1,),
    requests_per_client=3,
    load_repeats=1,
    batch_sizes=(4,),
    open_loop_requests=0,
    # 60 min, most of it in-process: on a Zen 4, ours' four phases took 17 min and the compiled
    # baseline's compiles alone take ~6 min; with 50 min, half kept for HTTP (3 servers, 5
    # requests each: minutes) and equal shares, that baseline was killed mid-compile
    budget_s=3600,
    http_share=0.2,
    request_timeout_s=900,
    fast_model=True,
    targets=("fast", "default_step"),
    expected_runtime="estimated 25-55 min of measurement on 2 cores with native bf16 (60 min "
    "budget; late phases shrink, then skip, with a note), + one-time preparation into "
    "benchmarks/.cache: random pipeline, LoRA, TAESD, fused diffusers folder, our export "
    "(~10-20 min, peak RAM ~11 GB), the optimum-intel venv (~2 min, 1.6 GB) and its export "
    "(~5-10 min); ~20 GB disk",
    notes=("run it alone on the machine: 2 cores shared with other jobs give wrong numbers",),
)

CPU_512_SMOKE = replace(
    CPU_512,
    name="cpu-512-smoke",
    description="cpu-512's code paths on the tiny random model at 64x64 (fast + default recipe, "
    "every baseline incl. torch.compile and optimum-intel, HTTP quality=low): checks the "
    "harness; the numbers say nothing about real models",
    model="tiny",
    width=64,
    height=64,
    recipes=(
        recipes.fast(64, 64),
        recipes.default(64, 64, steps=2, extrapolate_to=recipes.DEFAULT_STEPS),
        recipes.fast_tiny_encode(64, 64),
    ),
    http_width=64,
    http_height=64,
    warmup=1,
    repeats=2,
    requests_per_client=2,
    budget_s=900,
    request_timeout_s=300,
    expected_runtime="~6-10 min on 2 shared cores (torch.compile ~1 min per shape), + one-time "
    "preparation (tiny exports, the optimum-intel venv ~2 min)",
    notes=(),
)

GPU = Preset(
    name="gpu",
    description="full SD 1.5-inpainting architecture (random weights unless --pipeline), "
    "512x512, 20 and 50 steps, fp16: ORT CUDA and TensorRT EPs vs diffusers fp16 on CUDA, and "
    "the fast recipe (LCM LoRA fused, 4 steps, no guidance, TAESD decode)",
    recipes=(
        recipes.default(512, 512, steps=20),
        recipes.default(512, 512, steps=50),
        recipes.fast(512, 512),
    ),
    fast_model=True,
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

PRESETS: dict[str, Preset] = {p.name: p for p in (CI, CPU, CPU_512, CPU_512_SMOKE, GPU)}
