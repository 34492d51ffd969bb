"""The model registry: the built-in model plus every exported folder under ``--models-dir``.

A folder is a model when it holds ``manifest.json``; its ``pipeline`` kind picks the class that
loads it (``LOADERS``: "sd-inpaint" -> ``SDInpaintModel``, "one-shot" -> ``OneShotModel``). A
folder that fails to load is recorded with a short reason ("manifest invalid: field io",
"component missing", "provider unavailable"...) that ``GET /v1/models`` shows; the full error
(paths, exception text) goes to the log only. The others still serve.

Instances: each exported model gets its instance count (concurrent batches, ``instances.py``)
here, set by ``--instances`` or measured at load; ``instances_of`` gives it (one for a model
registered without).

Aliases: a one-shot manifest may name other ids for its model (``aliases``, e.g. "dall-e-2" so
clients hard-wired to an OpenAI model name reach it); ``get`` resolves them. A model name always
wins over an alias, and an alias two models claim is dropped (logged).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .base import InpaintModel
from .builtin import BuiltinInpaintModel
from .instances import Instances, check_count, choose, fixed
from .manifest import MANIFEST_FILE, UnknownModelKind, read_manifest
from .providers import ProviderUnavailable, check_amx_attention, check_static_shapes

log = logging.getLogger("server.models")


class ModelNotFound(KeyError):
    pass


@dataclass
class LoadFailure:
    name: str
    path: str
    #: short and free of paths and exception text (it is shown to API clients)
    reason: str


@dataclass
class ModelRegistry:
    models: dict[str, InpaintModel] = field(default_factory=dict)
    failures: list[LoadFailure] = field(default_factory=list)
    default: str | None = None
    #: alias -> model name
    aliases: dict[str, str] = field(default_factory=dict)
    #: model name -> its instances (absent: one)
    instances: dict[str, Instances] = field(default_factory=dict)

    def instances_of(self, name: str) -> Instances:
        return self.instances.get(name) or Instances()

    def get(self, name: str | None) -> InpaintModel:
        key = name or self.default
        key = key if key in self.models else self.aliases.get(key or "", key)
        if key is None or key not in self.models:
            raise ModelNotFound(key)
        return self.models[key]

    def names(self) -> list[str]:
        return list(self.models)

    def close(self) -> None:
        for model in self.models.values():
            try:
                model.close()
            except Exception:  # noqa: BLE001 - closing must not stop closing the rest
                log.exception("closing model %s failed", model.name)


def discover(models_dir: Path) -> list[Path]:
    """Model folders (sorted by name) directly under ``models_dir`` that hold a manifest."""
    if not models_dir.is_dir():
        return []
    return sorted(p for p in models_dir.iterdir() if (p / MANIFEST_FILE).is_file())


def _load_sd(folder: Path, **kw) -> InpaintModel:
    from .sd_inpaint import SDInpaintModel  # onnxruntime loads only when needed

    return SDInpaintModel.from_folder(folder, **kw)


def _load_oneshot(folder: Path, **kw) -> InpaintModel:
    from .oneshot import OneShotModel

    return OneShotModel.from_folder(folder, **kw)


#: pipeline kind (the manifest's ``pipeline``) -> loader(folder, name=, provider=, threads=,
#: instances=, static_shapes=, amx_attention=)
LOADERS: dict[str, Callable[..., InpaintModel]] = {
    "sd-inpaint": _load_sd,
    "one-shot": _load_oneshot,
}


def failure_reason(exc: BaseException) -> str:
    """A short, path-free reason for a load failure (the full error is logged)."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        errors = exc.errors()
        loc = ".".join(str(p) for p in errors[0]["loc"]) if errors else ""
        return f"manifest invalid: field {loc}" if loc else "manifest invalid"
    if isinstance(exc, json.JSONDecodeError):
        return "manifest invalid: not JSON"
    if isinstance(exc, UnknownModelKind):
        return "manifest invalid: unknown pipeline kind"
    if isinstance(exc, ProviderUnavailable):
        return "provider unavailable"
    if isinstance(exc, (FileNotFoundError, KeyError)):
        return "component missing"
    text = f"{type(exc).__name__} {exc}".lower()
    if "no_suchfile" in text or "no such file" in text:
        return "component missing"
    if "invalid_graph" in text or "invalid_protobuf" in text or "protobuf parsing" in text:
        return "component unreadable"
    return "load failed (see the server log)"


def load_model(
    folder: Path,
    *,
    name: str,
    provider: str,
    threads: int | None,
    instances: int | None = None,
    static_shapes: int | None = None,
    amx_attention: str = "auto",
) -> tuple[InpaintModel, Instances]:
    """Load one model folder by its manifest's kind, with its instances: ``instances`` of
    them, or (None) as many as ``instances.choose`` finds worth it (it loads the model a second
    time, for that many instances, to compare). Each instance gets its share of the thread
    budget (``threads``, else the cores). ``static_shapes``: OpenVINO's per-shape graphs kept
    per component (0 = dynamic), and ``amx_attention``, as ``select_provider``.
    Raises what the loader raises."""
    manifest = read_manifest(folder)
    loader = LOADERS.get(manifest.pipeline)
    if loader is None:
        raise UnknownModelKind(manifest.pipeline)
    loader = functools.partial(loader, static_shapes=static_shapes, amx_attention=amx_attention)
    if instances is not None:
        plan = fixed(instances, threads)
        model = loader(
            folder, name=name, provider=provider, threads=plan.threads, instances=plan.count
        )
        return model, plan
    model = loader(folder, name=name, provider=provider, threads=threads, instances=1)

    def load(count: int, each: int | None) -> InpaintModel:
        return loader(folder, name=name, provider=provider, threads=each, instances=count)

    plan, model = choose(model, load, threads)
    return model, plan


def load_registry(
    models_dir: Path,
    *,
    provider: str = "auto",
    threads: int | None = None,
    default_model: str | None = None,
    instances: int | None = None,
    static_shapes: int | None = None,
    amx_attention: str = "auto",
) -> ModelRegistry:
    """Load the built-in model and every exported model; never raises for a broken folder.

    The default model is ``default_model`` if given (a model name or alias; it must exist:
    ValueError otherwise), else the first exported model that loaded, else the built-in one.
    """
    check_count(instances)
    check_static_shapes(static_shapes)  # at start, whichever provider the models get
    check_amx_attention(amx_attention)
    registry = ModelRegistry()
    builtin = BuiltinInpaintModel()
    registry.models[builtin.name] = builtin
    exported: list[str] = []
    for folder in discover(Path(models_dir)):
        name = folder.name
        try:
            model, plan = load_model(
                folder,
                name=name,
                provider=provider,
                threads=threads,
                instances=instances,
                static_shapes=static_shapes,
                amx_attention=amx_attention,
            )
        except Exception as exc:  # noqa: BLE001 - one broken folder must not stop the others
            reason = failure_reason(exc)
            log.error("model %s (%s) failed to load: %s: %s", name, folder, type(exc).__name__, exc)
            registry.failures.append(LoadFailure(name=name, path=str(folder), reason=reason))
            continue
        registry.models[name] = model
        registry.instances[name] = plan
        exported.append(name)
        log.info(
            "loaded model %s from %s: %d instance(s), %s threads each (%s)",
            name,
            folder,
            plan.count,
            plan.threads or "default",
            plan.reason,
        )
    _collect_aliases(registry)
    if default_model is not None:
        try:
            registry.default = registry.get(default_model).name
        except ModelNotFound:
            raise ValueError(
                f"--default-model {default_model!r} is not loaded; available: "
                + ", ".join(registry.models)
            ) from None
    else:
        registry.default = exported[0] if exported else builtin.name
    return registry


def _collect_aliases(registry: ModelRegistry) -> None:
    claims: dict[str, set[str]] = {}
    for name, model in registry.models.items():
        for alias in getattr(getattr(model, "manifest", None), "aliases", None) or ():
            claims.setdefault(alias, set()).add(name)
    for alias, owners in sorted(claims.items()):
        if alias in registry.models:
            log.warning("alias %r ignored: a model has that name", alias)
        elif len(owners) > 1:
            log.warning("alias %r ignored: claimed by %s", alias, ", ".join(sorted(owners)))
        else:
            registry.aliases[alias] = next(iter(owners))
