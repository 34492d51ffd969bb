"""The model registry: the built-in model plus every exported folder under ``--models-dir``.

A folder is a model when it holds ``manifest.json``. A folder that fails to load is recorded
(name + reason) and logged; the others still serve.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from .base import InpaintModel
from .builtin import BuiltinInpaintModel
from .manifest import MANIFEST_FILE

log = logging.getLogger("server.models")


class ModelNotFound(KeyError):
    pass


@dataclass
class LoadFailure:
    name: str
    path: str
    reason: str


@dataclass
class ModelRegistry:
    models: dict[str, InpaintModel] = field(default_factory=dict)
    failures: list[LoadFailure] = field(default_factory=list)
    default: str | None = None

    def get(self, name: str | None) -> InpaintModel:
        key = name or self.default
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


def load_registry(
    models_dir: Path,
    *,
    provider: str = "auto",
    threads: int | None = None,
    default_model: str | None = None,
) -> ModelRegistry:
    """Load the built-in model and every exported model; never raises for a broken folder.

    The default model is ``default_model`` if given (it must exist: ValueError otherwise), else
    the first exported model that loaded, else the built-in one.
    """
    registry = ModelRegistry()
    builtin = BuiltinInpaintModel()
    registry.models[builtin.name] = builtin
    exported: list[str] = []
    for folder in discover(Path(models_dir)):
        name = folder.name
        try:
            from .sd_inpaint import SDInpaintModel  # onnxruntime loads only when needed

            model = SDInpaintModel.from_folder(
                folder, name=name, provider=provider, threads=threads
            )
        except Exception as exc:  # noqa: BLE001 - one broken folder must not stop the others
            reason = f"{type(exc).__name__}: {exc}"
            log.error("model %s (%s) failed to load: %s", name, folder, reason)
            registry.failures.append(LoadFailure(name=name, path=str(folder), reason=reason))
            continue
        registry.models[name] = model
        exported.append(name)
        log.info("loaded model %s from %s", name, folder)
    if default_model is not None:
        if default_model not in registry.models:
            raise ValueError(
                f"--default-model {default_model!r} is not loaded; available: "
                + ", ".join(registry.models)
            )
        registry.default = default_model
    else:
        registry.default = exported[0] if exported else builtin.name
    return registry
