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
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from server.models.cpu_features import read_cpu_flags, reported_flags
from server.models.manifest import ComponentSpec

from .accuracy import (
    SAMPLE_LATENT,
    SAMPLE_TIMESTEPS,
    SPEED_RUNS,
    best_seconds,
    max_relative_error,
    sample_feeds,
)
from .base import ExecutionProvider, ProviderUnavailable, Session, _model_folder, component_name
from .onnxruntime import CPUProvider
from .openvino import OpenVINOProvider
from .ov_cache import BlobCache
from .plan import MIN_SPEEDUP, Choice, cpu_plan, tolerance

log = logging.getLogger("server.models.providers")

CHECKS_FILE = "accuracy-checks.json"


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
    static_shapes: OpenVINO's per-shape graphs per component, as ``OpenVINOProvider``.
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
        static_shapes: int = 0,
    ):
        self.threads = threads
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
        self._ov: dict[str, OpenVINOProvider] = {}
        self._blob_caches: dict[Path, BlobCache] = {}  # shared by the OpenVINO providers
        self._cpu = CPUProvider(threads)

    @classmethod
    def available(cls) -> bool:
        return bool(available_runtimes())

    def check(self) -> None:
        if not self.runtimes & {"onnxruntime", "openvino"}:
            raise ProviderUnavailable(f"no CPU runtime is installed; {self.install_hint}")

    def _provider(self, choice: Choice) -> ExecutionProvider:
        if choice.runtime == "onnxruntime":
            return self._cpu
        precision = "f32" if choice.precision == "fp32" else choice.precision
        if precision not in self._ov:
            self._ov[precision] = OpenVINOProvider(
                precision,
                self.threads,
                cache=self.cache,
                cache_dir=self.cache_dir,
                streams=self.streams,
                static_shapes=self.static_shapes,
            )
            self._ov[precision]._caches = self._blob_caches
        return self._ov[precision]

    def tolerance(self, component: str) -> float:
        return self.tolerances.get(component, tolerance(component))

    # ------------------------------------------------------------ verdicts kept on disk

    def _checks_path(self, folder: Path) -> Path | None:
        if not self.cache:
            return None
        return (self.cache_dir or Path(folder) / "ov_cache") / CHECKS_FILE

    def _verdict_key(self, provider: OpenVINOProvider, path, spec, tol: float) -> str:
        parts = provider._key_parts(path, spec)
        parts.update(
            tolerance=tol,
            sample=[SAMPLE_LATENT, list(SAMPLE_TIMESTEPS)],
            speed_runs=SPEED_RUNS,  # verdicts from before the speed check are taken again
        )
        return BlobCache.key(parts)

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
                self._chosen(comp, choice, why, session, err, tol)
                self.choices[comp]["fused_attention"] = fused
                return session
            rejected.append(f"{choice.label}: {fault}")
            provider.forget(path, spec)
        session = ref.session if ref is not None else self._provider(fp32).load(path, spec)
        why = fp32.why + ("; fell back from " + "; ".join(rejected) if rejected else "")
        if rejected:
            log.warning("%s: fp32 (%s)", comp, why)
        return self._chosen(comp, fp32, why, session, None, tol)

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

    def _chosen(self, comp, choice: Choice, why, session, err, tol) -> Session:
        self.choices[comp] = {
            "runtime": choice.runtime,
            "precision": choice.precision,
            "why": why,
            "max_rel_err": err,
            "tolerance": tol,
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
