"""``manifest.json`` compatibility (server/models/manifest.py): folders exported by an earlier
release still load. Pure pydantic: no model, no torch."""

from __future__ import annotations

import json

import pydantic
import pytest

from server.models.manifest import MANIFEST_FILE, read_manifest

TENSOR = {"name": "image", "dtype": "float32", "shape": ["batch", 3, "height", "width"]}


def _write(folder, component: dict) -> None:
    """A one-shot manifest (the smallest kind) whose one component is ``component``."""
    manifest = {
        "name": "old-export",
        "pipeline": "one-shot",
        "signature": "lama",
        "io": {"image": "image", "output": "output"},
        "precision": "fp32",
        "components": {"inpainter": component},
        "source": {"model": "somewhere/lama"},
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


def _component(**extra) -> dict:
    return {
        "file": "inpainter/model.onnx",
        "inputs": [TENSOR],
        "outputs": [{**TENSOR, "name": "output"}],
        "precision": "fp32",
        **extra,
    }


@pytest.mark.parametrize("value", [None, "CUDAExecutionProvider"])
def test_a_component_written_with_requires_provider_still_loads(tmp_path, value):
    """Exporters before the key was retired wrote ``requires_provider`` into every component
    (null, or the provider a CUDA-fused graph needs): read and dropped, never written back."""
    _write(tmp_path, _component(requires_provider=value))
    manifest = read_manifest(tmp_path)
    spec = manifest.components["inpainter"]
    assert spec.file == "inpainter/model.onnx" and spec.optimization == "none"
    manifest.write(tmp_path)
    written = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert "requires_provider" not in written["components"]["inpainter"]
    assert read_manifest(tmp_path) == manifest


def test_an_unknown_component_key_is_still_refused(tmp_path):
    """Only retired keys are forgiven: a misspelt one names itself in the error."""
    _write(tmp_path, _component(requires_providers="CUDAExecutionProvider"))
    with pytest.raises(pydantic.ValidationError, match="requires_providers"):
        read_manifest(tmp_path)
