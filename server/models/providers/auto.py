"""``--provider auto`` on a CPU: per component, the fastest runtime and precision this CPU
computes natively whose output holds against fp32.

For each component ``load`` walks ``plan.cpu_plan`` (reduced precisions first, fp32 last):
a reduced-precision candidate is kept when the compiled graph really computes in that precision
(OpenVINO silently runs f32 where the CPU lacks the units), its output on a fixed sample
(``accuracy.sample_feeds``) is within ``plan.tolerance(component)`` of the fp32 runtime's, and
it runs that sample at least ``plan.MIN_SPEEDUP`` times faster than fp32 (best of
``accuracy.SPEED_RUNS``): a precision with native units is not always the faster one.
Otherwise the next candidate is tried, and fp32 is the fallback, with the reasons logged and
shown in ``describe()`` (``/v1/models`` and the benchmark JSON).

The check runs once per (component files, candidate, tolerance, OpenVINO version, CPU): its
verdict (error and speed-up) is kept in ``<cache folder>/accuracy-checks.json``, so a restart
does not load the fp32 reference again.

Static graphs (``--static-shapes`` unset): for the UNet on OpenVINO, auto also times a static
graph against the dynamic one on the sample and notes the memory it took (kept in the same
file); where it pays and memory allows (``static_plan``), the UNet is served with static
graphs for the shapes that come back, beside the dynamic one. The served graphs never ran the
sample: a graph that did is compiled again (first start only; later starts read the verdicts).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from server.models.cpu_features import read_cpu_flags, reported_flags
from server.models.manifest import ComponentSpec

from . import fused_attention
from .accuracy import (
    SAMPLE_LATENT,
    SAMPLE_TIMESTEPS,
    SPEED_RUNS,
    best_seconds,
    max_relative_error,
    sample_feeds,
)
from .base import (
    ExecutionProvider,
    ProviderUnavailable,
    Session,
    _model_folder,
    component_name,
    precision_name,
)
from .onnxruntime import CPUProvider
from .openvino import OpenVINOProvider
from .ov_cache import BlobCache
from .plan import MIN_SPEEDUP, Choice, component_kind, cpu_plan, tolerance
from .static_plan import STATIC_KINDS, STATIC_PAIRS, memory_bytes, rss_bytes, static_shapes_for

log = logging.getLogger("server.models.providers")

CHECKS_FILE = "accuracy-checks.json"
#: version of the static-graph measure, part of its verdict's key
STATIC_CHECK = 3


def available_runtimes() -> frozenset[str]:
    """The CPU runtimes installed: "onnxruntime", "openvino"."""
    have = set()
    if CPUProvider.available():
        have.add("onnxruntime")
    if OpenVINOProvider.available():
        have.add("openvino")
    return frozenset(have)


class _Reference:
    """The fp32 session of a component, its outputs on the sample and (measured once, when a
    candidate first needs it) its best time there."""

    def __init__(self, session: Session, feeds: dict[str, Any]):
        self.session, self.feeds = session, feeds
        self.outputs = session.run(feeds)  # also the warm-up run for the timing
        self._seconds: float | None = None

    def seconds(self) -> float:
        if self._seconds is None:
            self._seconds = best_seconds(self.session, self.feeds)
        return self._seconds


class AutoProvider(ExecutionProvider):
    """Per-component runtime and precision on a CPU (see the module docstring).

    flags / runtimes: this machine's (``read_cpu_flags()``, ``available_runtimes()``) unless
    given (tests). tolerances: per-component overrides of ``plan.tolerance`` (tests).
    min_speedup: override of ``plan.MIN_SPEEDUP`` (tests: 0 keeps a candidate whatever its
    speed, as on the tiny model, where reduced precision is slower).
    cache / cache_dir: OpenVINO's compiled-graph cache and the verdicts, as ``OpenVINOProvider``.
    static_shapes: OpenVINO's per-shape graphs per component, as ``OpenVINOProvider``; None =
    measured per component (the module docstring).
    amx_attention: the AMX attention kernel in bf16 graphs, as ``OpenVINOProvider``.
    """

    name = "auto"
    install_hint = "pip install onnxruntime (and '.[openvino]' for bf16/f16 on CPUs with them)"

    def __init__(
        self,
        threads: int | None = None,
        *,
        streams: int = 1,
        flags: Iterable[str] | None = None,
        runtimes: Iterable[str] | None = None,
        tolerances: dict[str, float] | None = None,
        min_speedup: float = MIN_SPEEDUP,
        cache: bool = True,
        cache_dir: Path | None = None,
        static_shapes: int | None = None,
        amx_attention: str = "auto",
    ):
        fused_attention.check_mode(amx_attention)
        self.threads = threads
        self.amx_attention = amx_attention
        self.static_shapes = static_shapes
        self.streams = streams
        self.flags = frozenset(read_cpu_flags() if flags is None else flags)
        self.runtimes = frozenset(available_runtimes() if runtimes is None else runtimes)
        self.tolerances = dict(tolerances or {})
        self.min_speedup = min_speedup
        self.cache = cache
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.choices: dict[str, dict[str, Any]] = {}
        self.checks_run = 0  # reference comparisons made (0 when every verdict was cached)
        self.static_checks_run = 0  # static-graph measures made (likewise)
        self._ov: dict[str, OpenVINOProvider] = {}
        self._blob_caches: dict[Path, BlobCache] = {}  # shared by the OpenVINO providers
        self._cpu = CPUProvider(threads)

    @classmethod
    def available(cls) -> bool:
        return bool(available_runtimes())

    def check(self) -> None:
        if not self.runtimes & {"onnxruntime", "openvino"}:
            raise ProviderUnavailable(f"no CPU runtime is installed; {self.install_hint}")
        # here, not per candidate: a bf16 candidate that cannot load falls back to fp32
        fused_attention.require(self.amx_attention)

    def _provider(self, choice: Choice) -> ExecutionProvider:
        if choice.runtime == "onnxruntime":
            return self._cpu
        precision = "f32" if choice.precision == "fp32" else choice.precision
        if precision not in self._ov:
            self._ov[precision] = self._openvino(precision, self.static_shapes or 0)
        return self._ov[precision]

    def _openvino(self, precision: str, static_shapes: int) -> OpenVINOProvider:
        provider = OpenVINOProvider(
            precision,
            self.threads,
            cache=self.cache,
            cache_dir=self.cache_dir,
            streams=self.streams,
            static_shapes=static_shapes,
            amx_attention=self.amx_attention,
        )
        provider._caches = self._blob_caches
        return provider

    def tolerance(self, component: str) -> float:
        return self.tolerances.get(component, tolerance(component))

    # ------------------------------------------------------------ verdicts kept on disk

    def _checks_path(self, folder: Path) -> Path | None:
        if not self.cache:
            return None
        return (self.cache_dir or Path(folder) / "ov_cache") / CHECKS_FILE

    def _verdict_key_parts(self, provider: OpenVINOProvider, path, spec) -> dict[str, Any]:
        parts = provider._key_parts(path, spec)
        parts.update(
            sample=[SAMPLE_LATENT, list(SAMPLE_TIMESTEPS)],
            speed_runs=SPEED_RUNS,  # verdicts from before the speed check are taken again
        )
        return parts

    def _verdict_key(self, provider: OpenVINOProvider, path, spec, tol: float) -> str:
        return BlobCache.key({**self._verdict_key_parts(provider, path, spec), "tolerance": tol})

    def _read_checks(self, where: Path | None) -> dict[str, Any]:
        try:
            return json.loads(where.read_text()) if where is not None else {}
        except (OSError, ValueError):
            return {}

    def _write_check(self, where: Path | None, key: str, verdict: dict[str, Any]) -> None:
        if where is None:
            return
        try:
            where.parent.mkdir(parents=True, exist_ok=True)
            checks = {**self._read_checks(where), key: verdict}
            fd, tmp = tempfile.mkstemp(dir=where.parent, prefix=".tmp-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump(checks, f, indent=1)
            os.chmod(tmp, 0o644)
            os.replace(tmp, where)
        except OSError as exc:
            log.warning("could not record the accuracy check in %s: %s", where, exc)

    # ------------------------------------------------------------ load

    def load(self, path: Path, spec: ComponentSpec | None = None) -> Session:
        self.check()
        comp = component_name(path, spec)
        plan = cpu_plan(self.flags, self.runtimes, comp)
        if spec is None:  # no declared inputs: no sample to check with, so fp32 only
            plan = plan[-1:]
        fp32, tol = plan[-1], self.tolerance(comp)
        where = self._checks_path(_model_folder(path, spec))
        checks = self._read_checks(where)
        rejected: list[str] = []
        ref: _Reference | None = None
        for choice in plan[:-1]:
            provider = self._provider(choice)
            assert isinstance(provider, OpenVINOProvider)  # reduced precision = OpenVINO
            key = self._verdict_key(provider, path, spec, tol)
            known = checks.get(key)
            if known is not None:
                fault = self._fault(known, tol)
                if fault:
                    rejected.append(f"{choice.label}: {fault} (cached check)")
                    continue
            try:
                session = provider.load(path, spec)
            except Exception as exc:  # noqa: BLE001 - a candidate that cannot load is skipped
                rejected.append(f"{choice.label}: failed to load ({type(exc).__name__}: {exc})")
                continue
            effective = getattr(session, "effective_precision", None)
            if effective != choice.precision:
                rejected.append(f"{choice.label}: runs as {effective} here (not native)")
                provider.forget(path, spec)
                continue
            ran_sample = known is None
            if known is None:
                if ref is None:
                    ref = _Reference(self._provider(fp32).load(path, spec), sample_feeds(spec))
                known = self._check(comp, choice, session, ref, tol)
                self.checks_run += 1
                self._write_check(where, key, known)
            fault = self._fault(known, tol)
            if not fault:
                err = float(known["max_rel_err"])
                why = f"{choice.why}; max rel err {err:.2%} vs fp32 (limit {tol:.1%})"
                if known.get("speedup") is not None:
                    why += f", {known['speedup']:.2f}x fp32's speed on the sample"
                fused = provider.fused_attention.get(comp, 0)
                if fused:
                    why += f"; {fused} attention layers on the AMX kernel"
                ref = None  # the fp32 reference's memory goes before any static graph is made
                served, static = self._serve(comp, provider, path, spec, session, ran_sample, where)
                self._chosen(comp, choice, why, served, err, tol, static)
                self.choices[comp]["fused_attention"] = fused
                return served
            rejected.append(f"{choice.label}: {fault}")
            provider.forget(path, spec)
        fp32_provider = self._provider(fp32)
        if ref is not None:
            session, ran_sample = ref.session, True
        else:
            session, ran_sample = fp32_provider.load(path, spec), False
        ref = None
        static = (0, "")
        if isinstance(fp32_provider, OpenVINOProvider):
            session, static = self._serve(
                comp, fp32_provider, path, spec, session, ran_sample, where
            )
        why = fp32.why + ("; fell back from " + "; ".join(rejected) if rejected else "")
        if rejected:
            log.warning("%s: fp32 (%s)", comp, why)
        return self._chosen(comp, fp32, why, session, None, tol, static)

    # ------------------------------------------------------------ static graphs

    def _serve(self, comp, provider: OpenVINOProvider, path, spec, session, ran_sample, where):
        """(the session to serve ``comp`` with, (static graphs, why)): static graphs beside the
        dynamic one where ``static_plan`` says so, else the dynamic graph; compiled afresh when
        the one at hand ran the sample (its first shapes must be the requests')."""
        static = (0, "")
        if self.static_shapes is None and spec is not None and component_kind(comp) in STATIC_KINDS:
            n, why, measured = self._static_choice(comp, provider, path, spec, session, where)
            static, ran_sample = (n, why), ran_sample or measured
        dynamic = provider.load(path, spec) if ran_sample else session
        if static[0]:
            return provider.with_static_graphs(dynamic, path, spec, static[0]), static
        return dynamic, static

    def _static_choice(self, comp, provider, path, spec, session, where):
        """(static graphs to keep, why, whether ``session`` ran the sample for it) for ``comp``
        from its verdict, measured once: the static graph's speed-up over ``session``'s on the
        sample and the memory it took."""
        key = BlobCache.key(
            {**self._verdict_key_parts(provider, path, spec), "static_check": STATIC_CHECK}
        )
        checks = self._read_checks(where)
        known = checks.get(key)
        measured = known is None
        if known is None:
            known = self._measure_static(provider, path, spec, session)
            self.static_checks_run += 1
            self._write_check(where, key, known)
        free, total = memory_bytes()
        n = static_shapes_for(
            known["speedup"], known["bytes_per_shape"], free, total, known.get("bytes_model", 0)
        )
        gib = known["bytes_per_shape"] / 2**30
        why = (
            f"{n} static graph(s) for returning shapes: {known['speedup']:.2f}x the dynamic "
            f"graph's speed on the sample, {gib:.1f} GiB each, {free / 2**30:.1f} GiB free"
        )
        if not n:
            log.info("%s: dynamic graph only (static %s)", comp, why.split(": ", 1)[1])
        return n, why, measured

    def _measure_static(self, provider, path, spec, session) -> dict[str, float]:
        feeds = sample_feeds(spec)
        session.run(feeds)  # its kernels for the sample's shapes (a cached verdict skipped it)
        probe = self._openvino(provider.precision, 2).load(path, spec)
        before = rss_bytes()
        probe.run(feeds)  # compiles the sample's graph (and reads the model's weights)
        first = rss_bytes()
        # alternating calls, the median of the pairs' ratios: on 2 shared cores a best-of-3 of
        # each in turn gave 0.86x to 1.36x for the same graphs (the machine drifts between
        # the two series); pairs see the same machine
        ratios = [
            best_seconds(session, feeds, 1) / best_seconds(probe, feeds, 1)
            for _ in range(STATIC_PAIRS)
        ]
        probe.run(sample_feeds(spec, batch=1))  # a second shape: what one more graph costs
        grown = max(rss_bytes() - first, 1)
        return {
            "speedup": float(np.median(ratios)),
            "bytes_per_shape": float(grown),
            # what the first graph took beyond that: the model, read once for all of them
            "bytes_model": float(max(first - before - grown, 0)),
        }

    def _check(self, comp: str, choice: Choice, session: Session, ref: _Reference, tol: float):
        """The verdict on one candidate: its error on the sample and, when that holds, its
        speed-up over fp32 there (best of ``SPEED_RUNS`` each, after the error run)."""
        try:
            err = max_relative_error(session.run(ref.feeds), ref.outputs)
        except Exception as exc:  # noqa: BLE001 - a graph that cannot run is skipped
            err = float("inf")
            log.warning("%s %s failed on the sample: %s", comp, choice.label, exc)
        verdict: dict[str, Any] = {"max_rel_err": err, "speedup": None}
        if err <= tol:
            verdict["speedup"] = ref.seconds() / best_seconds(session, ref.feeds)
        verdict["reason"] = self._fault(verdict, tol)
        return verdict

    def _fault(self, verdict: dict[str, Any], tol: float) -> str:
        """Why a verdict rejects its candidate ("" when it does not)."""
        err, speedup = float(verdict["max_rel_err"]), verdict.get("speedup")
        if err > tol:
            return f"max rel err {err:.2%} vs fp32 > {tol:.1%}"
        if speedup is not None and speedup < self.min_speedup:
            return f"not faster: {speedup:.2f}x fp32's speed on the sample (needs {self.min_speedup:.2f}x)"
        return ""

    def _chosen(self, comp, choice: Choice, why, session, err, tol, static=(0, "")) -> Session:
        """Record (and log) ``comp``'s choice; ``static``: (static graphs, why) of ``_serve``."""
        if static[0]:
            why = f"{why}; {static[1]}"
        self.choices[comp] = {
            "runtime": choice.runtime,
            "precision": precision_name(choice.precision),
            "why": why,
            "max_rel_err": err,
            "tolerance": tol,
            "static_shapes": static[0],
        }
        log.info("%s: %s %s (%s)", comp, choice.runtime, choice.precision, why)
        return session

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "threads": self.threads or "default",
            "cpu_flags": reported_flags(self.flags),
            "runtimes": sorted(self.runtimes),
            "components": {k: dict(v) for k, v in self.choices.items()},
        }
        if self._blob_caches:
            out["cache"] = [c.describe() for c in self._blob_caches.values()]
        return out
