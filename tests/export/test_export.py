"""The exporter on the tiny pipeline: manifest, ORT-vs-PyTorch agreement on fresh inputs,
fp16 layout, idempotent re-export and loud verification failures.

Shares the session fixtures in conftest.py (one fp32 and one fp16 export, from the test-model
cache: built once per source version).
"""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import onnx
import pytest

from server.models.manifest import Manifest

COMPONENTS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
CONTRACT = {  # docs/CONVENTIONS.md: (input names, output names)
    "text_encoder": (["input_ids"], ["last_hidden_state"]),
    "unet": (["sample", "timestep", "encoder_hidden_states"], ["out_sample"]),
    "vae_encoder": (["sample"], ["latent_mean", "latent_std"]),
    "vae_decoder": (["latent_sample"], ["sample"]),
}
ONNX_DTYPE = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64"}


@pytest.fixture(scope="module")
def tiny_pipe(tiny_pipeline_dir):
    import torch
    from diffusers import StableDiffusionInpaintPipeline

    torch.set_num_threads(1)
    return StableDiffusionInpaintPipeline.from_pretrained(tiny_pipeline_dir)


@pytest.fixture(scope="module")
def models(tiny_model_fp32, tiny_model_fp16):
    return {"fp32": tiny_model_fp32, "fp16": tiny_model_fp16}


def _cli(argv, capsys):
    from export.__main__ import main

    t0 = time.perf_counter()
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err, time.perf_counter() - t0


def _args(folder, precision):
    return ["--tiny", "--precision", precision, "--target", "cpu", "--out", str(folder)]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_manifest(models, precision):
    folder = models[precision]
    m = Manifest.read(folder)
    assert (m.precision, m.target, m.pipeline) == (precision, "cpu", "sd-inpaint")
    assert (m.native_resolution, m.vae_scale_factor, m.latent_channels) == (64, 8, 4)
    assert m.latent_scaling_factor == pytest.approx(0.18215)
    assert (m.text_hidden_size, m.text_max_length, m.unet_in_channels) == (32, 77, 9)
    assert m.scheduler["_class_name"] == "PNDMScheduler"
    assert m.scheduler["skip_prk_steps"] is True and m.scheduler["steps_offset"] == 1
    assert (folder / "scheduler" / "scheduler_config.json").is_file()
    assert set(m.tokenizer) == {"tokenizer_json", "vocab", "merges", "config"}
    assert all((folder / rel).is_file() for rel in m.tokenizer.values())
    assert {"torch", "diffusers", "transformers", "onnxruntime"} <= set(m.versions)
    assert m.export_args["precision"] == precision and m.export_args["verify"] is True
    assert sorted(m.components) == sorted(COMPONENTS)
    raw = json.loads((folder / "manifest.json").read_text())["components"]
    assert not any("requires_provider" in c for c in raw.values())  # retired: never written
    for name, comp in m.components.items():
        assert comp.precision == precision
        assert [s.name for s in comp.inputs] == CONTRACT[name][0]
        assert [s.name for s in comp.outputs] == CONTRACT[name][1]
        assert comp.inputs[0].shape[0] == "batch"
        assert set(comp.sha256) == {comp.file}  # tiny: no external data
        assert set(comp.profiles) == set(CONTRACT[name][0])
        for prof in comp.profiles.values():
            assert prof["min"][0] == 1 and prof["max"][0] == 8
    unet = m.components["unet"]
    assert unet.inputs[1].shape == ["batch"] and unet.inputs[1].dtype == "float32"
    assert unet.profiles["sample"]["opt"] == [2, 9, 8, 8]  # native 64 px -> latent 8
    assert sorted(v.component for v in m.verification) == sorted(COMPONENTS)
    assert all(v.passed and v.max_abs_diff <= v.tolerance for v in m.verification)


def test_tokenizer_is_real_clip_vocab(tiny_model_fp32):
    from tokenizers import Tokenizer

    from export.tiny import KNOWN_IDS

    tok = Tokenizer.from_file(str(tiny_model_fp32 / "tokenizer" / "tokenizer.json"))
    for text, ids in KNOWN_IDS.items():
        assert tok.encode(text).ids == ids
    vocab = json.loads((tiny_model_fp32 / "tokenizer" / "vocab.json").read_text())
    assert len(vocab) == 49408 and vocab["<|endoftext|>"] == 49407


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_graph_io_matches_manifest(models, precision):
    m = Manifest.read(models[precision])
    for comp in m.components.values():
        graph = onnx.load(str(models[precision] / comp.file)).graph
        for values, specs in ((graph.input, comp.inputs), (graph.output, comp.outputs)):
            assert [v.name for v in values] == [s.name for s in specs]
            for v, s in zip(values, specs, strict=True):
                assert ONNX_DTYPE[v.type.tensor_type.elem_type] == s.dtype  # fp32 I/O in fp16
                dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
                assert dims == s.shape


def test_fp16_weights(tiny_model_fp16):
    for comp in COMPONENTS:
        inits = onnx.load(str(tiny_model_fp16 / comp / "model.onnx")).graph.initializer
        n16 = sum(int(np.prod(t.dims)) for t in inits if t.data_type == onnx.TensorProto.FLOAT16)
        n32 = sum(int(np.prod(t.dims)) for t in inits if t.data_type == onnx.TensorProto.FLOAT)
        assert n16 > 0.9 * (n16 + n32), (comp, n16, n32)


def test_dims_come_from_the_pipeline(tiny_pipe):
    from export.components import Dims

    d = Dims.from_pipeline(tiny_pipe)
    # the tiny preset is CLIP-shaped: these are read from its configs, not assumed
    assert (d.text_len, d.hidden, d.vocab_size) == (77, 32, 49408)
    assert (d.bos_id, d.eos_id, d.pad_id) == (49406, 49407, 49407)
    assert (d.latent_channels, d.unet_in_channels, d.scale, d.sample_size) == (4, 9, 8, 8)
    assert d.native == 64 and d.num_train_timesteps == 1000


def _fake_pipe(**changes):
    """A stand-in with just the configs Dims.from_pipeline reads (small-vocab text encoder)."""
    from types import SimpleNamespace as NS

    parts = {
        "tokenizer": dict(model_max_length=32, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        "text": dict(hidden_size=48, vocab_size=300, max_position_embeddings=32),
        "unet": dict(in_channels=9, out_channels=4, sample_size=16, cross_attention_dim=48),
        "vae": dict(latent_channels=4),
    }
    for key, value in changes.items():
        part, field = key.split("__")
        parts[part][field] = value
    return NS(
        tokenizer=NS(**parts["tokenizer"]),
        text_encoder=NS(config=NS(**parts["text"])),
        unet=NS(config=NS(**parts["unet"])),
        vae=NS(config=NS(**parts["vae"])),
        vae_scale_factor=4,
        scheduler=NS(config=NS(num_train_timesteps=1000)),
    )


@pytest.mark.parametrize(
    "changes,needle",
    [
        ({"tokenizer__model_max_length": int(1e30)}, "no model_max_length"),
        ({"tokenizer__model_max_length": 77}, "max_position_embeddings 32"),
        ({"tokenizer__eos_token_id": 49407}, "eos id 49407 is outside"),
        ({"tokenizer__pad_token_id": None}, "no pad_token"),
        ({"unet__in_channels": 4}, "inpainting model"),
        ({"unet__cross_attention_dim": 768}, "cross_attention_dim 768"),
        ({"text__use_attention_mask": True}, "use_attention_mask"),
    ],
)
def test_dims_reject_pipelines_the_contract_cannot_hold(changes, needle):
    from export.components import Dims

    assert Dims.from_pipeline(_fake_pipe()).text_len == 32  # the baseline is fine
    with pytest.raises(ValueError, match=needle):
        Dims.from_pipeline(_fake_pipe(**changes))


@pytest.mark.parametrize("bos", [1, None])
def test_sample_token_ids_follow_the_tokenizer(bos):
    import torch

    from export.components import Dims, sample_inputs

    d = Dims.from_pipeline(_fake_pipe(tokenizer__bos_token_id=bos))
    ids = sample_inputs("text_encoder", d, batch=6, height=64, width=64, seed=0)["input_ids"]
    assert ids.dtype == torch.int64 and ids.shape == (6, 32)
    assert int(ids.min()) >= 0 and int(ids.max()) < d.vocab_size
    first = 0 if bos is None else 1
    assert bos is None or (ids[:, 0] == bos).all()
    assert ids[0, -1] == d.eos_id  # row 0 fills every position, like a truncated prompt
    for row in ids.tolist():
        end = row.index(d.eos_id, first)  # eos, then only padding
        assert row[end + 1 :] == [d.pad_id] * (31 - end)


# batch 3 at a non-square 64x96 px; batch 1 at 72x88 px = latent 9x11, odd sides, so the UNet's
# up path must upsample to the skip sizes (not a plain 2x)
CASES = [(3, 64, 96), (1, 72, 88)]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("component", COMPONENTS)
def test_matches_pytorch_on_fresh_inputs(models, tiny_pipe, precision, component):
    from export.components import Dims, sample_inputs
    from export.verify import compare, session, tolerance_for

    m = Manifest.read(models[precision])
    sess = session(models[precision] / m.components[component].file, threads=1)
    dims = Dims.from_pipeline(tiny_pipe)
    for seed, (batch, h, w) in enumerate(CASES, start=100):
        if component == "unet":
            t = sample_inputs("unet", dims, batch, h, w, seed)["timestep"]
            assert len(set(t.tolist())) == batch  # one distinct timestep per row
        max_diff, mean_diff, peak, shapes = compare(
            component, sess, tiny_pipe, dims, batch, h, w, seed
        )
        assert max_diff <= tolerance_for(precision, peak), (component, shapes, max_diff, peak)
        assert mean_diff < max_diff or max_diff == 0
        assert peak > 0.1  # non-trivial outputs


def test_reexport_same_args_is_up_to_date(tiny_model_fp32, capsys):
    manifest_before = (tiny_model_fp32 / "manifest.json").read_text()
    rc, out, _, seconds = _cli(_args(tiny_model_fp32, "fp32"), capsys)
    assert rc == 0 and "up to date" in out
    assert seconds < 5, seconds
    assert (tiny_model_fp32 / "manifest.json").read_text() == manifest_before


def test_tolerance_zero_fails_loudly(tiny_model_fp32, tmp_path, capsys):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_model_fp32, folder)
    before = (folder / "manifest.json").read_text()
    rc, _, err, _ = _cli(_args(folder, "fp32") + ["--tolerance", "0"], capsys)
    assert rc == 1
    assert "verification FAILED" in err and "tolerance" in err
    assert (folder / "manifest.json").read_text() == before  # a failed check changes nothing


def test_different_args_need_force(tiny_model_fp32, tmp_path, capsys):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_model_fp32, folder)
    rc, _, err, _ = _cli(_args(folder, "fp16"), capsys)
    assert rc == 1 and "--force" in err and "precision" in err


def test_no_verify_is_recorded_without_reexport(tiny_model_fp32, tmp_path, capsys):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_model_fp32, folder)
    rc, _, _, seconds = _cli(_args(folder, "fp32") + ["--no-verify"], capsys)
    m = Manifest.read(folder)
    assert rc == 0 and m.export_args["verify"] is False and m.verification == []
    assert any("--no-verify" in n for n in m.notes)
    assert Manifest.read(tiny_model_fp32).components == m.components  # same graphs, same hashes
