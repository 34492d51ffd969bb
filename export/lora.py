"""LoRA fusing before export (``python -m export --lora SOURCE[:SCALE]``) and the fast preset.

A LoRA in diffusers / peft format (LCM-LoRA, TCD-LoRA or any style LoRA) is fused into the
pipeline's UNet, and into its text encoder when the LoRA has text-encoder weights, with
diffusers' own ``load_lora_weights`` + ``fuse_lora(lora_scale=SCALE)`` + ``unload_lora_weights``
(needs ``peft``), one LoRA at a time in the order given. The exported graphs then carry the fused
weights: serving costs nothing extra, and verification compares them with the fused PyTorch
pipeline.

SOURCE is resolved like ``--model``: a local ``.safetensors`` file; a local folder (its
``pytorch_lora_weights.safetensors``, else its only ``.safetensors`` file); or a hub id
(``owner/name``: that repository's ``pytorch_lora_weights.safetensors``, else its only
``.safetensors`` file, downloaded by ``huggingface_hub`` into its cache).

The fast preset (what the server's ``quality=low`` runs) is ``--fast-preset
SCHEDULER:STEPS[:GUIDANCE]`` (guidance default 1.0 = no classifier-free guidance), ``none``, or
automatic: the first LoRA whose *name* contains "lcm" or "tcd" (case-insensitive) gives
``lcm:4:1.0`` or ``tcd:4:1.0``. A LoRA's name is the last component of SOURCE as given: the hub
repository's name (``latent-consistency/lcm-lora-sdv1-5`` -> ``lcm-lora-sdv1-5``), the folder's
name or the file's name. ``--tiny-vae-encode`` (with ``--tiny-vae``) makes the preset encode
with the tiny autoencoder too (``FastPreset.tiny_vae_encode``).

``build_random_lora`` makes a random-weight LoRA for a local pipeline (tests; no hub).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from server.models.manifest import FastPreset, Lora

from .hashing import sha256

#: the file diffusers' ``save_lora_weights`` writes and ``load_lora_weights`` looks for first
WEIGHT_NAME = "pytorch_lora_weights.safetensors"
#: name fragment -> the recipe an automatic fast preset uses (4 steps, no CFG)
AUTO_PRESETS = {"lcm": ("lcm", 4, 1.0), "tcd": ("tcd", 4, 1.0)}
DEFAULT_FAST_GUIDANCE = 1.0


@dataclass(frozen=True)
class LoraArg:
    """One ``--lora`` argument: SOURCE (path or hub id, as given) and its fusing scale."""

    source: str
    scale: float = 1.0

    @property
    def name(self) -> str:
        """What the automatic fast preset looks at: the last component of SOURCE."""
        return Path(self.source.rstrip("/")).name


def parse_lora(text: str) -> LoraArg:
    """``PATH_OR_HUB_ID[:SCALE]`` -> LoraArg; ValueError with the expected form."""
    head, sep, tail = text.rpartition(":")
    source, scale = (head, tail) if sep and _is_float(tail) else (text, "1.0")
    if not source.strip():
        raise ValueError(f"--lora {text!r}: expected PATH_OR_HUB_ID[:SCALE], e.g. my-lora:0.8")
    return LoraArg(source, float(scale))


def parse_fast_preset(text: str) -> FastPreset:
    """``SCHEDULER:STEPS[:GUIDANCE]`` -> FastPreset; ValueError with the expected form. (The
    server checks the scheduler name against its own list when it loads the model.)"""
    parts = text.split(":")
    ok = 2 <= len(parts) <= 3 and re.fullmatch(r"[a-z0-9_]+", parts[0]) is not None
    ok = ok and parts[1].isdigit() and int(parts[1]) >= 1
    ok = ok and (len(parts) == 2 or (_is_float(parts[2]) and float(parts[2]) >= 0))
    if not ok:
        raise ValueError(
            f"--fast-preset {text!r}: expected SCHEDULER:STEPS[:GUIDANCE], e.g. lcm:4:1.0 "
            "(steps >= 1, guidance >= 0; <= 1 turns classifier-free guidance off), or none"
        )
    guidance = float(parts[2]) if len(parts) == 3 else DEFAULT_FAST_GUIDANCE
    return FastPreset(
        scheduler=parts[0], steps=int(parts[1]), guidance_scale=guidance,
        reason=f"--fast-preset {text}",
    )  # fmt: skip


def fast_preset(
    spec: str | None, loras: tuple[LoraArg, ...], tiny_vae_encode: bool = False
) -> FastPreset | None:
    """The manifest's fast preset: ``spec`` (a ``--fast-preset`` value; "none" = no preset) or,
    without one, the automatic choice from the LoRAs' names (see the module docstring).
    ``tiny_vae_encode`` (``--tiny-vae-encode``): the preset also encodes with the tiny
    autoencoder; ValueError when there is no preset for it to apply to."""
    preset = _fast_preset(spec, loras)
    if not tiny_vae_encode:
        return preset
    if preset is None:
        raise ValueError(
            "--tiny-vae-encode applies to the fast preset, and there is none: give "
            "--fast-preset SCHEDULER:STEPS[:GUIDANCE] or an LCM/TCD --lora"
        )
    return preset.model_copy(update={"tiny_vae_encode": True})


def _fast_preset(spec: str | None, loras: tuple[LoraArg, ...]) -> FastPreset | None:
    if spec is not None:
        return None if spec == "none" else parse_fast_preset(spec)
    for lora in loras:
        for fragment, (scheduler, steps, guidance) in AUTO_PRESETS.items():
            if fragment in lora.name.lower():
                return FastPreset(
                    scheduler=scheduler, steps=steps, guidance_scale=guidance,
                    reason=f"automatic: LoRA name {lora.name!r} contains {fragment!r}",
                )  # fmt: skip
    return None


def resolve(lora: LoraArg) -> Path:
    """The local weight file of ``lora.source`` (hub ids are downloaded). ValueError when it
    cannot be found or is ambiguous."""
    path = Path(lora.source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        name = _pick(path.name, sorted(f.name for f in path.glob("*.safetensors")))
        return path / name
    if path.exists() or lora.source.startswith((".", "/", "~")) or lora.source.count("/") != 1:
        raise ValueError(f"{lora.source}: no such LoRA file or folder (nor an owner/name hub id)")
    import huggingface_hub

    try:
        files = huggingface_hub.list_repo_files(lora.source)
        name = _pick(lora.source, sorted(f for f in files if f.endswith(".safetensors")))
        return Path(huggingface_hub.hf_hub_download(lora.source, name))
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, auth: all mean "not found"
        raise ValueError(
            f"{lora.source}: not a local LoRA file or folder, and the hub lookup failed ({exc})"
        ) from exc


def _pick(where: str, names: list[str]) -> str:
    """The LoRA weight file among ``names`` (the .safetensors files of a folder / repo)."""
    if WEIGHT_NAME in names:
        return WEIGHT_NAME
    if len(names) == 1:
        return names[0]
    raise ValueError(
        f"{where}: found {len(names)} .safetensors files ({', '.join(names) or 'none'}); pass the "
        f"LoRA's weight file itself (or a folder holding only it / {WEIGHT_NAME})"
    )


def fuse_loras(pipe, loras: tuple[LoraArg, ...], log=print) -> list[Lora]:
    """Fuse each LoRA into ``pipe`` (a diffusers SD pipeline, fp32) in order; return what the
    manifest records. ValueError for a missing / unusable LoRA.

    The stages of diffusers' ``load_lora_weights`` (``lora_state_dict``, ``load_lora_into_unet``,
    ``load_lora_into_text_encoder``), then ``fuse_lora`` and ``unload_lora_weights``. One
    exception: transformers >= 5 refuses text-encoder adapters with peft < 0.22 (not released
    when this was written), so when its loader raises that, the text-encoder part is loaded and
    merged with peft directly (``_fuse_text_encoder``), the same operations without the check.
    """
    records = []
    for i, lora in enumerate(loras):
        file = resolve(lora)
        log(f"fusing LoRA {lora.source} (scale {lora.scale:g}, {file.name})")
        name = f"export_lora_{i}"
        try:
            sd, alphas, meta = pipe.lora_state_dict(
                str(file.parent), weight_name=file.name, return_lora_metadata=True
            )
            if not sd or not all("lora" in k for k in sd):
                raise ValueError("its parameter names are not LoRA names ('lora' missing)")
            pipe.load_lora_into_unet(
                sd, alphas, pipe.unet, adapter_name=name, _pipeline=pipe, metadata=meta
            )
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ValueError(f"{lora.source}: not a LoRA for this pipeline ({exc})") from exc
        components = ["unet"] if any(k.startswith("unet.") for k in sd) else []
        fuse = list(components)
        if any(k.startswith("text_encoder.") for k in sd):
            components.append("text_encoder")
            try:
                pipe.load_lora_into_text_encoder(
                    sd, alphas, pipe.text_encoder, adapter_name=name, _pipeline=pipe,
                    metadata=meta,
                )  # fmt: skip
                fuse.append("text_encoder")
            except ValueError as exc:
                if "PEFT" not in str(exc):
                    raise ValueError(f"{lora.source}: text encoder: {exc}") from exc
                _fuse_text_encoder(pipe.text_encoder, sd, alphas, meta, lora.scale, name)
        if fuse:
            pipe.fuse_lora(components=fuse, lora_scale=lora.scale, adapter_names=[name])
        pipe.unload_lora_weights()  # drops the LoRA layers; the fused weights stay
        records.append(
            Lora(source=lora.source, scale=lora.scale, file=file.name, sha256=sha256(file),
                 components=components)
        )  # fmt: skip
    return records


def _fuse_text_encoder(text_encoder, sd, alphas, meta, scale: float, name: str) -> None:
    """diffusers' text-encoder loading (``_load_lora_into_text_encoder``) with peft's
    ``inject_adapter_in_model`` + ``set_peft_model_state_dict`` in place of transformers'
    ``load_adapter``, then ``fuse_lora``'s merge (scale, merge) and the layers' removal."""
    from diffusers.loaders.lora_base import _create_lora_config
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft
    from diffusers.utils.peft_utils import recurse_remove_peft_layers
    from peft import inject_adapter_in_model, set_peft_model_state_dict
    from peft.tuners.tuners_utils import BaseTunerLayer

    prefix = "text_encoder."
    te = {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)}
    te = convert_state_dict_to_peft(convert_state_dict_to_diffusers(te))
    if not hasattr(text_encoder, "text_model"):
        te = {k.removeprefix("text_model."): v for k, v in te.items()}
    rank = {}
    for module, _ in text_encoder.named_modules():
        key = f"{module}.lora_B.weight"
        if module.endswith((".q_proj", ".k_proj", ".v_proj", ".out_proj", ".fc1", ".fc2")):
            if key in te:
                rank[key] = te[key].shape[1]
    if alphas is not None:
        alphas = {k.removeprefix(prefix): v for k, v in alphas.items() if k.startswith(prefix)}
    if meta is not None:
        meta = {k.removeprefix(prefix): v for k, v in meta.items() if k.startswith(prefix)}
    config = _create_lora_config(te, alphas, meta or None, rank, is_unet=False)
    inject_adapter_in_model(config, text_encoder, name)
    result = set_peft_model_state_dict(text_encoder, te, name)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"text encoder: unexpected LoRA keys {result.unexpected_keys[:3]}")
    for module in text_encoder.modules():
        if isinstance(module, BaseTunerLayer):
            if scale != 1.0:
                module.scale_layer(scale)
            module.merge(adapter_names=[name])
    recurse_remove_peft_layers(text_encoder)


def changed(records: list[Lora]) -> list[str]:
    """Sources of the recorded LoRAs whose local file now has other content (re-export them)."""
    out = []
    for rec in records:
        path = Path(rec.source).expanduser()
        file = path / rec.file if path.is_dir() else path
        if file.is_file() and sha256(file) != rec.sha256:
            out.append(rec.source)
    return out


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def build_random_lora(
    pipeline_dir: Path, out: Path, *, seed: int = 0, rank: int = 4, text_encoder: bool = True
) -> Path:
    """Save a random LoRA for the pipeline in ``pipeline_dir`` into folder ``out`` (diffusers
    format, ``pytorch_lora_weights.safetensors``): peft adapters of rank ``rank`` on the UNet's
    attention projections (and the text encoder's, when ``text_encoder``) with non-zero random
    A and B (a freshly initialised LoRA has B = 0 and changes nothing). Deterministic from
    ``seed``. Returns ``out``."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict
    from transformers import CLIPTextModel

    gen = torch.Generator().manual_seed(seed)

    def adapt(model, targets: list[str]) -> dict:
        # peft directly (not transformers' add_adapter, which wants peft >= 0.22)
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets), model)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        # the format diffusers' training scripts save
        return convert_state_dict_to_diffusers(get_peft_model_state_dict(model))

    unet = UNet2DConditionModel.from_pretrained(pipeline_dir, subfolder="unet")
    layers = {"unet_lora_layers": adapt(unet, ["to_q", "to_k", "to_v", "to_out.0"])}
    if text_encoder:
        te = CLIPTextModel.from_pretrained(pipeline_dir, subfolder="text_encoder")
        layers["text_encoder_lora_layers"] = adapt(te, ["q_proj", "k_proj", "v_proj", "out_proj"])
    StableDiffusionInpaintPipeline.save_lora_weights(out, weight_name=WEIGHT_NAME, **layers)
    return Path(out)
